import { PassThrough } from 'node:stream';
import { failedPrecondition, internal, notFound, notSupported } from '../core/errors.ts';
import type { GuestFile } from '../core/guest-files.ts';
import type { GuestSpec, Model, ProcessIdentity } from '../core/types.ts';
import type { GuestDriver, GuestNicView, RuntimeState } from './guest-driver.ts';

/** In-memory guest driver for unit tests of services and controllers (never used by the daemon). */
export interface FakeDriver extends GuestDriver {
  /** Guests as the fake "host" has them. */
  readonly guests: Map<
    string,
    {
      state: RuntimeState['state'];
      process?: ProcessIdentity;
      config: Record<string, string>;
      /** Files pushed into the guest, by path. */
      files?: Map<string, GuestFile>;
      /** What observeNics() answers (an error is thrown); none: no interfaces. */
      nicView?: GuestNicView | Error;
    }
  >;
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

export function createFakeDriver(model: Model = 'ct'): FakeDriver {
  const guests: FakeDriver['guests'] = new Map();
  const calls: string[] = [];
  const failures = new Map<string, string>();
  let nextPid = 1000;
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
    async start(spec) {
      calls.push(`start:${spec.name}`);
      const g = get(spec);
      maybeFail('start');
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
        if (known && g.process && known.pid === g.process.pid && known.startTime !== g.process.startTime) {
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
      g.files ??= new Map();
      const { mode, uid, gid, data } = options;
      g.files.set(options.path, { mode, uid, gid, data: Buffer.from(data) });
    },
    async pullFile(spec, path) {
      calls.push(`pull:${spec.name}:${path}`);
      const g = get(spec);
      if (g.state !== 'running')
        throw failedPrecondition(`Guest ${spec.name} is not running: start it first`);
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
