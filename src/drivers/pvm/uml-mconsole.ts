import { TrivisorError, unavailable } from '../../core/errors.ts';
import type { ProcessRunner } from '../../host/runner.ts';

/** How long one mconsole request may take: a live kernel answers in milliseconds. */
const DEFAULT_TIMEOUT_MS = 5_000;

/** One answer of a UML kernel's management console. */
export interface MconsoleReply {
  ok: boolean;
  /** The text after `OK ` / `ERR `, possibly several lines (e.g. `proc meminfo`). */
  text: string;
}

/**
 * Client of a UML kernel's management console (the `mconsole` datagram
 * socket under `uml_dir/umid/`). Node has no AF_UNIX datagram sockets, so
 * each request runs Debian's `uml_mconsole` (uml-utilities) once.
 */
export interface MconsoleClient {
  readonly socketPath: string;
  /** Sends one command; resolves with the kernel's reply (ok false for `ERR`). */
  request(command: string): Promise<MconsoleReply>;
  /** The kernel's `uname -a` line. */
  version(): Promise<string>;
  /** The host side of a channel, e.g. `config ssl1` → `pts:/dev/pts/3`. */
  config(device: string): Promise<string>;
  /** Halts the kernel at once, without asking init (like pulling the plug, but the disk is flushed by the host). */
  halt(): Promise<void>;
  /** Sends ctrl-alt-del to init (busybox init reboots on it, systemd too: it is a reboot request). */
  cad(): Promise<void>;
  /** Freezes the whole kernel: only mconsole requests are served until `go`. */
  stop(): Promise<void>;
  go(): Promise<void>;
}

/** Splits uml_mconsole's output (`OK text` or `ERR text`) into a reply; undefined when it printed neither. */
export function parseMconsoleOutput(stdout: string): MconsoleReply | undefined {
  const m = /^(OK|ERR) ?([\s\S]*)$/.exec(stdout.replace(/^\s+/, ''));
  if (!m) return undefined;
  return { ok: m[1] === 'OK', text: (m[2] ?? '').replace(/\s+$/, '') };
}

/** An mconsole client for the socket at `socketPath` (absolute: uml_mconsole takes anything else for a umid). */
export function createMconsoleClient(
  socketPath: string,
  options: { runner: ProcessRunner; timeoutMs?: number },
): MconsoleClient {
  const { runner } = options;
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!socketPath.startsWith('/'))
    throw new TypeError(`mconsole socket path must be absolute: ${socketPath}`);

  const request = async (command: string): Promise<MconsoleReply> => {
    let result: Awaited<ReturnType<ProcessRunner['run']>>;
    try {
      result = await runner.run(['uml_mconsole', socketPath, command], { allowFailure: true, timeoutMs });
    } catch (e) {
      throw unavailable(
        `Cannot run uml_mconsole (${e instanceof Error ? e.message : String(e)}): install Debian's uml-utilities package.`,
      );
    }
    const reply = parseMconsoleOutput(result.stdout);
    if (!reply) {
      // uml_mconsole prints its own complaints (no such socket, refused) to stderr.
      const detail = result.stderr.trim().split('\n').slice(-1)[0] ?? '';
      throw unavailable(
        `The UML kernel's management console at ${socketPath} does not answer ${JSON.stringify(command)}${detail ? ` (${detail})` : ''}: is the guest running?`,
      );
    }
    return reply;
  };

  const must = async (command: string): Promise<string> => {
    const reply = await request(command);
    if (!reply.ok) {
      throw new TrivisorError(
        'Internal',
        `The UML kernel refused mconsole command ${JSON.stringify(command)}: ${reply.text || 'no reason given'}.`,
      );
    }
    return reply.text;
  };

  return {
    socketPath,
    request,
    version: () => must('version'),
    config: (device) => must(`config ${device}`),
    halt: async () => {
      await must('halt');
    },
    cad: async () => {
      await must('cad');
    },
    stop: async () => {
      // A second stop answers ERR "Already stopped": that is the state we want.
      const reply = await request('stop');
      if (!reply.ok && !/already stopped/i.test(reply.text)) await must('stop');
    },
    go: async () => {
      await must('go');
    },
  };
}
