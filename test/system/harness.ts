import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';

import { claim, describeThing, makeRunDir, removeRunDir } from '../leftovers.ts';

const REPO = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(REPO, 'bin/trivisor');
const MAIN = path.join(REPO, 'src/cli/main.ts');

/** How long a started daemon may take to write daemon.json. */
const DAEMON_READY_MS = 180_000;

/** Result of one CLI run. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** A real daemon on its own TRIVISOR_DIR, driven through the real CLI and HTTP API. */
export interface Daemon {
  stateDir: string;
  socket: string;
  process: ChildProcess;
  /** TCP URL, when the daemon listens on TCP. */
  url: string | null;
  /** `env` adds to the daemon's environment (TRIVISOR_DIR, and TRIVISOR_CONFIG_DIR: a CLI config of the run's own). */
  cli(
    args: string[],
    options?: { input?: string; timeoutMs?: number; env?: Record<string, string> },
  ): CliResult;
  /** Like cli() but fails the test with the stderr when the exit code is not 0. */
  ok(args: string[], options?: { input?: string; timeoutMs?: number; env?: Record<string, string> }): string;
  api(
    method: string,
    urlPath: string,
    body?: unknown,
    headers?: Record<string, string>,
  ): Promise<ApiResponse>;
  /** What the daemon wrote to stderr (its log) since it was last started. */
  stderr(): string;
  /** kill -9 the daemon (guests must survive). */
  kill9(): Promise<void>;
  /**
   * Starts the daemon again on the same state dir (in a UTS namespace with `hostname`, if given);
   * `env` adds to its environment for this start only (a failpoint, src/host/failpoints.ts).
   */
  restart(options?: { hostname?: string; env?: Record<string, string> }): Promise<void>;
  /**
   * Records a network namespace or host interface the test makes beside the daemon, so that
   * destroy() removes it, and a sweep does if the test is killed (claim before making it).
   */
  claim(things: { netns?: string[]; links?: string[] }): void;
  /** Stops the daemon, force-deletes what the test left, and removes every trace (test/leftovers.ts). */
  destroy(): Promise<void>;
}

export interface ApiResponse {
  status: number;
  body: {
    type?: string;
    error?: string;
    error_code?: number;
    metadata?: unknown;
    operation?: string;
  } & Record<string, unknown>;
  text: string;
}

export async function startDaemon(
  options: {
    tcp?: boolean;
    hostname?: string;
    defaultNetwork?: boolean;
    /** HOST:PORT for TCP instead of a free port: it stays the same across restart() (the web UI's tests). */
    listen?: string;
    /**
     * Runs the daemon in this network namespace (/run/netns/NAME), entering only the network
     * namespace: `ip netns exec` would remount /sys and hide the cgroup mounts (test/cluster).
     */
    netns?: string;
    /** Added to the daemon's (and its CLI's) environment. */
    env?: Record<string, string>;
  } = {},
): Promise<Daemon> {
  // Owned by this process: if it is killed, the next test run's sweep removes what it left.
  const stateDir = await makeRunDir('sys');
  const env = {
    ...process.env,
    // Daemons side by side would all want the bridge trivisor0: only tests that ask get it.
    ...(options.defaultNetwork ? {} : { TRIVISOR_DEFAULT_NETWORK: 'none' }),
    TRIVISOR_DIR: stateDir,
    TRIVISOR_LISTEN: options.listen ?? (options.tcp ? '127.0.0.1:0' : 'none'),
    TRIVISOR_LOG_LEVEL: 'warn',
    // The CLI's remotes and tokens: the run's own, never the user's ~/.config/trivisor.
    TRIVISOR_CONFIG_DIR: path.join(stateDir, 'cli-config'),
    ...options.env,
  };
  let daemonStderr = '';
  let child = await launch(options.hostname);
  let info = readDaemonJson();

  async function launch(hostname?: string, extraEnv: Record<string, string> = {}): Promise<ChildProcess> {
    rmSync(path.join(stateDir, 'daemon.json'), { force: true });
    // With a host name: in a UTS namespace of its own, so the machine's name is untouched.
    const daemonArgv = hostname
      ? [
          'unshare',
          '--uts',
          'sh',
          '-c',
          `hostname ${hostname} && exec "$0" "$@"`,
          process.execPath,
          MAIN,
          'daemon',
        ]
      : [process.execPath, MAIN, 'daemon'];
    const argv = options.netns ? ['nsenter', `--net=/run/netns/${options.netns}`, ...daemonArgv] : daemonArgv;
    // Its log (pino, on stdout) goes to STATE/daemon.log, for a failing test to read.
    const logFd = openSync(path.join(stateDir, 'daemon.log'), 'a', 0o600);
    const c = spawn(argv[0]!, argv.slice(1), {
      env: { ...env, ...extraEnv },
      stdio: ['ignore', logFd, 'pipe'],
    });
    closeSync(logFd);
    let stderr = '';
    daemonStderr = '';
    c.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
      // The last 1 MiB: enough to tell what went wrong, bounded for long runs.
      daemonStderr = (daemonStderr + d.toString()).slice(-1024 * 1024);
    });
    // A wait, not a measure: a loaded 2-core machine (a CI run beside other tests) once took
    // longer than 60 s to start a daemon that then worked. The suite's timeout bounds a hang.
    const end = Date.now() + DAEMON_READY_MS;
    // The daemon writes daemon.json in place: wait until it is whole, not just there.
    while (!daemonJsonComplete()) {
      if (c.exitCode !== null) throw new Error(`daemon exited with ${c.exitCode}: ${stderr}`);
      if (Date.now() > end) throw new Error(`daemon not ready after ${DAEMON_READY_MS / 1000} s: ${stderr}`);
      await sleep(50);
    }
    return c;
  }

  function daemonJsonComplete(): boolean {
    try {
      JSON.parse(readFileSync(path.join(stateDir, 'daemon.json'), 'utf8'));
      return true;
    } catch {
      return false;
    }
  }

  function readDaemonJson(): { socket: string; url: string | null } {
    return JSON.parse(readFileSync(path.join(stateDir, 'daemon.json'), 'utf8'));
  }

  const cli: Daemon['cli'] = (args, o = {}) => {
    const r = spawnSync(CLI, args, {
      env: { ...env, ...o.env },
      input: o.input ?? '',
      encoding: 'utf8',
      timeout: o.timeoutMs ?? 120_000,
    });
    return { code: r.status ?? 128, stdout: r.stdout, stderr: r.stderr };
  };

  const daemon: Daemon = {
    stateDir,
    get socket() {
      return info.socket;
    },
    get process() {
      return child;
    },
    get url() {
      return info.url;
    },
    cli,
    stderr: () => daemonStderr,
    ok(args, o) {
      const r = cli(args, o);
      if (r.code !== 0)
        throw new Error(`trivisor ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
      return r.stdout;
    },
    api(method, urlPath, body, headers = {}) {
      return request({ socketPath: info.socket }, method, urlPath, body, headers);
    },
    async kill9() {
      child.kill('SIGKILL');
      await new Promise((r) =>
        child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r),
      );
    },
    async restart(o = {}) {
      child = await launch(o.hostname, o.env);
      info = readDaemonJson();
    },
    claim(things) {
      claim(stateDir, things);
    },
    async destroy() {
      if (child.exitCode === null && child.signalCode === null) {
        // Best effort: delete what the test left through the API, then stop the daemon.
        // Every project's: a guest is deleted in its own project (another project's is not found).
        const list = cli(['list', '--all-projects', '--format', 'json']);
        if (list.code === 0) {
          const byProject = new Map<string, string[]>();
          for (const g of JSON.parse(list.stdout) as Array<{ name: string; project?: string }>) {
            const project = g.project ?? 'default';
            byProject.set(project, [...(byProject.get(project) ?? []), g.name]);
          }
          for (const [project, names] of byProject) {
            cli(['--project', project, 'delete', '--force', ...names], { timeoutMs: 120_000 });
          }
        }
        child.kill('SIGTERM');
        await new Promise((r) =>
          child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r),
        );
      }
      const report = await removeRunDir(stateDir);
      if (report.left.length > 0) {
        throw new Error(
          `The test left things that could not be removed: ${report.left.map(describeThing).join('; ')}`,
        );
      }
    },
  };
  return daemon;
}

/** One request on the unix socket, or to an HTTPS URL (any certificate: pinning is the CLI's, tested through it). */
export function request(
  target: { socketPath: string } | { url: string },
  method: string,
  urlPath: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<ApiResponse> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const base =
      'socketPath' in target
        ? { socketPath: target.socketPath }
        : (() => {
            const u = new URL(target.url);
            return { host: u.hostname, port: Number(u.port) };
          })();
    const tls = 'url' in target && target.url.startsWith('https:');
    const req = (tls ? https : http).request(
      {
        ...base,
        method,
        path: urlPath,
        ...(tls && { rejectUnauthorized: false }),
        headers: {
          ...(payload !== undefined ? { 'content-type': 'application/json' } : {}),
          ...headers,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: ApiResponse['body'] = {};
          try {
            parsed = JSON.parse(text);
          } catch {
            // Non-JSON bodies (metrics, logs) are in `text`.
          }
          resolve({ status: res.statusCode ?? 0, body: parsed, text });
        });
      },
    );
    req.on('error', reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `cond` until it holds or `timeoutMs` passes (then throws with `what`). */
export async function eventually(
  what: string,
  cond: () => boolean | Promise<boolean>,
  timeoutMs = 20_000,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await cond()) return;
    await sleep(100);
  }
  throw new Error(`timed out waiting for: ${what}`);
}

/** Whether a pid is alive on the host. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Whether a process has ended: absent, or a zombie its reaper has not collected yet. */
export function gone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}
