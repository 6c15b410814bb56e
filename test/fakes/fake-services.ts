import { randomUUID } from 'node:crypto';
import { readFile, rm, stat } from 'node:fs/promises';
import { PassThrough } from 'node:stream';
import {
  alreadyExists,
  failedPrecondition,
  invalidArgument,
  notFound,
  notSupported,
} from '../../src/core/errors.ts';
import type { GuestFile } from '../../src/core/guest-files.ts';
import { assertDnsLabel } from '../../src/core/names.ts';
import type { Guest, ImageRecord } from '../../src/core/types.ts';
import { createEventBus } from '../../src/services/event-bus.ts';
import { createOperationService } from '../../src/services/operation-service.ts';
import { createProjectService } from '../../src/services/project-service.ts';
import type { ExecRequest, ExecSession, Services } from '../../src/services/types.ts';
import { createMemoryStore } from '../../src/store/memory-store.ts';

/** What a fake exec session saw, for assertions. */
export interface FakeExecRecord {
  name: string;
  request: ExecRequest;
  resizes: Array<[number, number]>;
  signals: string[];
}

/** In-memory `Services` for the transport's and clients' tests: no I/O beyond what a test asks for. */
export interface FakeServices extends Services {
  guestMap: Map<string, Guest>;
  imageMap: Map<string, ImageRecord>;
  execs: FakeExecRecord[];
  /** Tarballs handed to `importTarball`, with their size and first bytes (read before deletion). */
  imports: Array<{ alias: string; sizeBytes: number; head: string }>;
  consoleLog: string;
  consoleLogPath: string;
  /** Consoles attached so far (each echoes what is written to it); destroyed once detached. */
  consoles: PassThrough[];
}

/**
 * A fake exec: `echo ARGS` prints, `cat` echoes stdin, `exit N` exits with N,
 * `stderr TEXT` writes to stderr, `spam BYTES` prints that many bytes, `sleep`
 * runs until signalled (exit 128+9).
 */
function fakeExec(record: FakeExecRecord): ExecSession {
  const stdin = new PassThrough();
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const [cmd, ...args] = record.request.command;
  let finish!: (code: number) => void;
  const exit = new Promise<number>((resolve) => {
    finish = (code) => {
      stdout.end();
      stderr.end();
      resolve(code);
    };
  });
  setImmediate(() => {
    switch (cmd) {
      case 'echo':
        stdout.write(`${args.join(' ')}\n`);
        finish(0);
        break;
      case 'cat':
        stdin.on('data', (chunk: Buffer) => stdout.write(chunk));
        stdin.on('end', () => finish(0));
        break;
      case 'exit':
        finish(Number(args[0] ?? 0));
        break;
      case 'stderr':
        stderr.write(args.join(' '));
        finish(1);
        break;
      case 'spam':
        stdout.write(Buffer.alloc(Number(args[0] ?? 0), 'x'));
        finish(0);
        break;
      case 'env':
        stdout.write(
          Object.entries(record.request.environment ?? {})
            .map(([k, v]) => `${k}=${v}\n`)
            .join(''),
        );
        finish(0);
        break;
      default:
        // `sleep` and anything else: run until signalled
        break;
    }
  });
  return {
    stdin,
    stdout,
    stderr: record.request.interactive ? null : stderr,
    resize(columns, rows) {
      record.resizes.push([columns, rows]);
    },
    signal(signal) {
      record.signals.push(signal);
      finish(128 + 9);
    },
    exit,
  };
}

const IMAGE: ImageRecord = {
  fingerprint: 'a1b2c3d4e5f60718293a4b5c6d7e8f9012345678901234567890abcdef012345',
  project: 'default',
  aliases: ['busybox'],
  description: 'BusyBox',
  os: 'busybox',
  release: '1.36',
  architecture: 'x86_64',
  source: 'builtin',
  sizeBytes: 2_000_000,
  createdAt: '2025-01-01T00:00:00.000Z',
  properties: {},
};

function makeGuest(name: string, image: ImageRecord, running: boolean): Guest {
  return {
    name,
    project: 'default',
    model: 'ct',
    status: running ? 'Running' : 'Stopped',
    image: image.fingerprint,
    imageAlias: image.aliases[0] ?? image.fingerprint,
    config: {},
    host: 'fakehost',
    createdAt: '2025-01-01T00:00:00.000Z',
    state: {
      pid: running ? 4242 : null,
      startedAt: running ? '2025-01-01T00:00:00.000Z' : null,
      uptimeSeconds: running ? 61 : null,
      usage: running ? { memoryBytes: 3 * 1024 * 1024, cpuSeconds: 0.25, processes: 2 } : null,
      restartCount: 0,
    },
  };
}

/**
 * Builds in-memory services with the `busybox` image and one running guest
 * `web1`. `consoleLogPath` names a file the test may write (the fake only reads it).
 */
export function createFakeServices(options: { consoleLogPath?: string } = {}): FakeServices {
  // The real operation service and event bus: pure in-memory logic, no I/O.
  const events = createEventBus();
  const operations = createOperationService(events);
  const guestMap = new Map<string, Guest>([['web1', makeGuest('web1', IMAGE, true)]]);
  const imageMap = new Map<string, ImageRecord>([[IMAGE.fingerprint, IMAGE]]);
  const execs: FakeExecRecord[] = [];
  const imports: FakeServices['imports'] = [];

  const guestOf = (name: string): Guest => {
    const g = guestMap.get(name);
    if (!g) throw notFound(`Guest ${JSON.stringify(name)} not found: see \`trivisor list\``);
    return g;
  };
  const imageOf = (ref: string): ImageRecord => {
    for (const img of imageMap.values()) {
      if (img.aliases.includes(ref) || img.fingerprint.startsWith(ref)) return img;
    }
    throw notFound(`Image ${JSON.stringify(ref)} not found: see \`trivisor image list\``);
  };
  const withoutUsage = (g: Guest): Guest => ({ ...g, state: { ...g.state, usage: null } });

  const files = new Map<string, GuestFile>();
  const fake: FakeServices = {
    guestMap,
    imageMap,
    execs,
    imports,
    consoleLog: '',
    consoleLogPath: options.consoleLogPath ?? '/nonexistent/console.log',
    consoles: [],
    events,
    operations,
    // Real projects over a memory store; the fake guests and images know nothing of them.
    projects: createProjectService({ store: createMemoryStore() }),
    guests: {
      inProject: () => fake.guests,
      async list(opts) {
        const all = [...guestMap.values()];
        return opts?.withUsage ? structuredClone(all) : all.map(withoutUsage);
      },
      async names() {
        return [...guestMap.keys()];
      },
      async get(name, opts) {
        const g = guestOf(name);
        return opts?.withUsage ? structuredClone(g) : withoutUsage(g);
      },
      async create(request) {
        assertDnsLabel(request.name, 'guest name');
        if (guestMap.has(request.name)) throw alreadyExists(`Guest ${request.name} already exists`);
        const image = imageOf(request.image);
        return operations.start({
          description: `Creating guest ${request.name}`,
          resources: { guests: [`/1.0/guests/${request.name}`] },
          async run(ctx) {
            ctx.progress(50, 'unpacking');
            const g = makeGuest(request.name, image, request.start === true);
            g.model = request.model ?? 'ct';
            g.config = { ...(request.config ?? {}) };
            guestMap.set(request.name, g);
            events.publish({ type: 'lifecycle', action: 'guest-created', metadata: { name: request.name } });
            return undefined;
          },
        });
      },
      async changeState(name, request) {
        const g = guestOf(name);
        if (request.action === 'start' && g.status === 'Running') {
          throw failedPrecondition(`Guest ${name} is already running`);
        }
        return operations.start({
          description: `${request.action} guest ${name}`,
          resources: { guests: [`/1.0/guests/${name}`] },
          async run() {
            const status = {
              start: 'Running',
              stop: 'Stopped',
              restart: 'Running',
              freeze: 'Frozen',
              unfreeze: 'Running',
            } as const;
            g.status = status[request.action];
            return undefined;
          },
        });
      },
      async delete(name, opts) {
        const g = guestOf(name);
        if (g.status === 'Running' && !opts?.force) {
          throw failedPrecondition(`Guest ${name} is running: stop it first or use --force`);
        }
        return operations.start({
          description: `Deleting guest ${name}`,
          async run() {
            guestMap.delete(name);
            return undefined;
          },
        });
      },
      async updateConfig(name, change) {
        const g = guestOf(name);
        for (const [k, v] of Object.entries(change.set ?? {})) {
          if (!k.includes('.')) throw invalidArgument(`Unknown config key ${JSON.stringify(k)}`);
          g.config[k] = v;
        }
        for (const k of change.unset ?? []) delete g.config[k];
        const pendingRestart = Object.keys(change.set ?? {}).filter((k) => k === 'limits.disk');
        return { guest: structuredClone(g), pendingRestart };
      },
      async exec(name, request) {
        const g = guestOf(name);
        if (g.status !== 'Running') throw failedPrecondition(`Guest ${name} is not running: start it first`);
        const record: FakeExecRecord = { name, request, resizes: [], signals: [] };
        execs.push(record);
        return fakeExec(record);
      },
      async attachDisplay(name) {
        guestOf(name);
        throw notSupported(`Guest ${name} has no display here`);
      },
      async screenshot(name) {
        guestOf(name);
        throw notSupported(`Guest ${name} has no display here`);
      },
      async sendKeys(name) {
        guestOf(name);
        throw notSupported(`Guest ${name} has no display here`);
      },
      async attachConsole(name) {
        const g = guestOf(name);
        if (g.model === 'ct') throw notSupported(`ct guests' consoles take no input: follow ${name}'s log`);
        if (g.status !== 'Running') throw failedPrecondition(`Guest ${name} is not running: start it first`);
        // Echoes what is typed, as a guest's tty does.
        const stream = new PassThrough();
        fake.consoles.push(stream);
        return stream;
      },

      async consoleLogPath(name) {
        guestOf(name);
        return fake.consoleLogPath;
      },
      async pushFile(name, request) {
        const g = guestOf(name);
        if (g.status !== 'Running') throw failedPrecondition(`Guest ${name} is not running: start it first`);
        if (!request.path.startsWith('/')) throw invalidArgument(`${request.path} is not absolute`);
        const { mode = 0o644, uid = 0, gid = 0 } = request;
        files.set(`${name}:${request.path}`, { data: Buffer.from(request.data), mode, uid, gid });
        return { size: request.data.length };
      },
      async pullFile(name, path) {
        guestOf(name);
        const file = files.get(`${name}:${path}`);
        if (!file) throw notFound(`${path} does not exist in guest ${name}`);
        return file;
      },
    },
    images: {
      inProject: () => fake.images,
      async exportTree(fingerprint) {
        throw notFound(`Image ${fingerprint} is not on this host`);
      },
      async exportDisk(fingerprint) {
        throw notFound(`Image ${fingerprint} is not on this host`);
      },
      async list() {
        return [...imageMap.values()];
      },
      async get(ref) {
        return imageOf(ref);
      },
      async build(request) {
        if (!request.source.includes('/')) throw invalidArgument(`Unknown image source ${request.source}`);
        return operations.start({
          description: `Building image ${request.source}`,
          async run(ctx) {
            ctx.progress(10, 'debootstrap');
            const img: ImageRecord = {
              ...IMAGE,
              fingerprint: randomUUID().replaceAll('-', '').padEnd(64, '0'),
              aliases: [request.alias ?? request.source],
              source: 'debootstrap',
            };
            imageMap.set(img.fingerprint, img);
            return { fingerprint: img.fingerprint };
          },
        });
      },
      async importTarball(request) {
        const size = (await stat(request.tarballPath)).size;
        const head = (await readFile(request.tarballPath)).subarray(0, 64).toString('latin1');
        await rm(request.tarballPath, { force: true });
        imports.push({ alias: request.alias, sizeBytes: size, head });
        return operations.start({
          description: `Importing image ${request.alias}`,
          async run() {
            const img: ImageRecord = {
              ...IMAGE,
              fingerprint: randomUUID().replaceAll('-', '').padEnd(64, '1'),
              aliases: [request.alias],
              source: 'import',
              sizeBytes: size,
            };
            imageMap.set(img.fingerprint, img);
            return { fingerprint: img.fingerprint };
          },
        });
      },
      async delete(ref) {
        const img = imageOf(ref);
        imageMap.delete(img.fingerprint);
      },
    },
    host: {
      async info() {
        return {
          name: 'fakehost',
          version: '0.1.0',
          stateDir: '/tmp/fake',
          kernel: '6.1.0',
          cpus: 2,
          memoryBytes: 8 * 1024 ** 3,
          drivers: [{ model: 'ct', supported: true, version: 'runc 1.1.5', warnings: [], details: {} }],
          store: 'memory',
        };
      },
      async metrics() {
        return { contentType: 'text/plain; version=0.0.4', body: 'trivisor_guests 1\n' };
      },
    },
  };
  return fake;
}
