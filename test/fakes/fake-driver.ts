import { posix } from 'node:path';
import { PassThrough } from 'node:stream';
import {
  failedPrecondition,
  internal,
  invalidArgument,
  notFound,
  notSupported,
} from '../../src/core/errors.ts';
import { type GuestFile, injectedFiles } from '../../src/core/guest-files.ts';
import type { GuestSpec, Model, ProcessIdentity } from '../../src/core/types.ts';
import type { GuestDriver, GuestNicView, ImageHandle, RuntimeState } from '../../src/drivers/guest-driver.ts';

/** Directories every fake guest's image has (a busybox tree's top). */
const IMAGE_DIRS = new Set([
  '/',
  '/bin',
  '/dev',
  '/etc',
  '/proc',
  '/root',
  '/sbin',
  '/sys',
  '/tmp',
  '/usr',
  '/var',
]);
/** Programs every fake guest's image has: the inits a start may name. */
const IMAGE_PROGRAMS = new Set(['/bin/busybox', '/bin/sh', '/sbin/init']);

/**
 * In-memory guest driver for unit tests of services and controllers (never used by
 * the daemon). It runs the driver conformance suite (test/fakes/fake-driver.test.ts),
 * so what it answers is what a real driver answers; its guests run no programs.
 */
export interface FakeDriver extends GuestDriver {
  /** Guests as the fake "host" has them. */
  readonly guests: FakeGuests;
  /** Calls made, as `action:name`. */
  readonly calls: string[];
  /** Make the next call of `action` fail. */
  failNext(
    action: 'create' | 'start' | 'stop' | 'delete' | 'attach-nic' | 'detach-nic',
    message?: string,
  ): void;
  /** Simulate the guest's init dying on its own. */
  kill(name: string): void;
}

/** The fake "host": its guests by name (share it between two drivers for a restarted daemon). */
export type FakeGuests = Map<
  string,
  {
    state: RuntimeState['state'];
    process?: ProcessIdentity;
    config: Record<string, string>;
    /** Files pushed or injected into the guest, by path (the image's own are not listed). */
    files?: Map<string, GuestFile>;
    /** Directories made in the guest beyond the image's, by a push with createDirs or an injected file. */
    dirs?: Set<string>;
    /** What observeNics() answers (an error is thrown); none: no interfaces. */
    nicView?: GuestNicView | Error;
  }
>;

type FakeGuest = FakeGuests extends Map<string, infer G> ? G : never;

/** Pids go on across drivers, as a host's do: a restarted daemon's starts never reuse one. */
let nextPid = 1000;

const isDir = (g: FakeGuest, path: string) => IMAGE_DIRS.has(path) || (g.dirs?.has(path) ?? false);

/** `mkdir -p` of `dir` in the guest. */
function makeDirs(g: FakeGuest, dir: string): void {
  for (let d = dir; !isDir(g, d); d = posix.dirname(d)) {
    if (g.files?.has(d) || IMAGE_PROGRAMS.has(d))
      throw invalidArgument(`${d} is not a directory in the guest`);
    g.dirs ??= new Set();
    g.dirs.add(d);
  }
}

/** The init an image starts (its `init` property, as the real drivers read it). */
function initOf(image: ImageHandle): string[] {
  // Some unit tests start guests without an image (`undefined as never`): the default init then.
  const init = (image as ImageHandle | undefined)?.record.properties.init;
  return init === undefined ? ['/sbin/init'] : (JSON.parse(init) as string[]);
}

export function createFakeDriver(model: Model = 'ct', guests: FakeGuests = new Map()): FakeDriver {
  const calls: string[] = [];
  const failures = new Map<string, string>();
  const maybeFail = (action: string) => {
    const msg = failures.get(action);
    if (msg !== undefined) {
      failures.delete(action);
      throw internal(msg);
    }
  };
  const get = (spec: GuestSpec) => {
    const g = guests.get(spec.name);
    if (!g) throw internal(`fake: guest ${spec.name} was not created`);
    return g;
  };
  return {
    model,
    guests,
    calls,
    failNext(action, message = `fake ${action} failure`) {
      failures.set(action, message);
    },
    kill(name) {
      const g = guests.get(name);
      if (g) {
        g.state = 'stopped';
        delete g.process;
      }
    },
    async probe() {
      return { model, supported: true, version: 'fake', warnings: [], details: {} };
    },
    validate() {},
    async create(spec) {
      calls.push(`create:${spec.name}`);
      maybeFail('create');
      guests.set(spec.name, { state: 'stopped', config: { ...spec.config } });
    },
    async start(spec, image) {
      calls.push(`start:${spec.name}`);
      const g = get(spec);
      maybeFail('start');
      if (g.state === 'running' && g.process) return g.process;
      const init = initOf(image)[0] ?? '';
      if (!IMAGE_PROGRAMS.has(init) && !g.files?.has(init)) {
        throw failedPrecondition(`Guest ${spec.name} cannot start: its init ${init} does not exist`);
      }
      // Injected files are written at every start, over what the guest made of them.
      for (const f of injectedFiles(spec.config)) {
        makeDirs(g, posix.dirname(f.path));
        g.files ??= new Map();
        g.files.set(f.path, { mode: f.mode, uid: f.uid, gid: f.gid, data: Buffer.from(f.content) });
      }
      g.state = 'running';
      g.process = { pid: nextPid++, startTime: 1 };
      return g.process;
    },
    async stop(spec, options) {
      calls.push(`stop:${spec.name}:${options.force ? 'force' : options.timeoutMs}`);
      maybeFail('stop');
      const g = guests.get(spec.name);
      if (g) {
        g.state = 'stopped';
        delete g.process;
      }
    },
    async freeze(spec) {
      calls.push(`freeze:${spec.name}`);
      get(spec).state = 'frozen';
    },
    async unfreeze(spec) {
      calls.push(`unfreeze:${spec.name}`);
      get(spec).state = 'running';
    },
    async delete(spec) {
      calls.push(`delete:${spec.name}`);
      maybeFail('delete');
      guests.delete(spec.name);
    },
    async inspect(spec, known) {
      const g = guests.get(spec.name);
      if (!g) return { state: 'absent' };
      if (g.state === 'running' || g.state === 'frozen') {
        // Another init than the one asked about (an older one, or a reused pid) is not it.
        if (known && g.process && (known.pid !== g.process.pid || known.startTime !== g.process.startTime)) {
          return { state: 'stopped' };
        }
        return g.process ? { state: g.state, process: g.process } : { state: g.state };
      }
      return { state: g.state };
    },
    async usage() {
      return { memoryBytes: 1024, cpuSeconds: 0.5, processes: 1 };
    },
    async update(spec, changed) {
      calls.push(`update:${spec.name}:${changed.join(',')}`);
      get(spec).config = { ...spec.config };
      return changed.filter((k) => k === 'limits.disk');
    },
    async exec(spec, options) {
      calls.push(`exec:${spec.name}:${options.command.join(' ')}`);
      if (get(spec).state !== 'running') throw failedPrecondition(`Guest ${spec.name} is not running`);
      const stdout = new PassThrough();
      stdout.end(`${options.command.join(' ')}\n`);
      return {
        stdin: new PassThrough(),
        stdout,
        stderr: new PassThrough().end() as PassThrough,
        resize() {},
        signal() {},
        exit: Promise.resolve(0),
      };
    },
    async pushFile(spec, options) {
      calls.push(`push:${spec.name}:${options.path}`);
      const g = get(spec);
      if (g.state !== 'running')
        throw failedPrecondition(`Guest ${spec.name} is not running: start it first`);
      if (isDir(g, options.path))
        throw invalidArgument(`${options.path} is a directory in guest ${spec.name}`);
      const parent = posix.dirname(options.path);
      if (options.createDirs) makeDirs(g, parent);
      else if (!isDir(g, parent))
        throw notFound(`The directory ${parent} does not exist in guest ${spec.name}`);
      g.files ??= new Map();
      const { mode, uid, gid, data } = options;
      g.files.set(options.path, { mode, uid, gid, data: Buffer.from(data) });
    },
    async pullFile(spec, path) {
      calls.push(`pull:${spec.name}:${path}`);
      const g = get(spec);
      if (g.state !== 'running')
        throw failedPrecondition(`Guest ${spec.name} is not running: start it first`);
      if (isDir(g, path)) throw invalidArgument(`${path} is a directory in guest ${spec.name}`);
      if (IMAGE_PROGRAMS.has(path) && !g.files?.has(path))
        return { mode: 0o755, uid: 0, gid: 0, data: Buffer.alloc(0) };
      const file = g.files?.get(path);
      if (!file) throw notFound(`${path} does not exist in guest ${spec.name}`);
      return file;
    },
    consoleLogPath(spec) {
      return `/nonexistent/${spec.name}/console.log`;
    },
    async observeNics(spec, { process }) {
      calls.push(`observe-nics:${spec.name}`);
      const g = guests.get(spec.name);
      if (
        g?.state !== 'running' ||
        g.process?.pid !== process.pid ||
        g.process.startTime !== process.startTime
      ) {
        throw failedPrecondition(`Guest ${spec.name} is not running`);
      }
      if (g.nicView instanceof Error) throw g.nicView;
      return structuredClone(g.nicView ?? { interfaces: [], engineErrors: [] });
    },
    async attachNic(spec, nic) {
      calls.push(`attach-nic:${spec.name}:${nic}`);
      if (get(spec).state !== 'running') throw failedPrecondition(`Guest ${spec.name} is not running`);
      maybeFail('attach-nic');
      return 'live';
    },
    async detachNic(spec, nic) {
      calls.push(`detach-nic:${spec.name}:${nic}`);
      maybeFail('detach-nic');
      return 'live';
    },
    async attachConsole(spec) {
      calls.push(`console:${spec.name}`);
      if (model === 'ct') throw notSupported('fake ct consoles take no input');
      if (get(spec).state !== 'running') throw failedPrecondition(`Guest ${spec.name} is not running`);
      // A terminal that echoes what is typed, as a guest tty in canonical mode does.
      return new PassThrough();
    },
  };
}
