import { setTimeout as sleep } from 'node:timers/promises';
import { unavailable } from '../../core/errors.ts';
import { createQgaClient, type QgaClient } from '../../host/qga-client.ts';
import { GUEST_BUSYBOX, qgaExecSession } from '../../host/qga-exec-session.ts';
import type { ProcessRunner } from '../../host/runner.ts';
import type { ExecOptions, ExecSession } from '../guest-driver.ts';
import { openAgentLine } from './agent-line.ts';
import { parsePtsConfig } from './uml-command.ts';
import type { MconsoleClient } from './uml-mconsole.ts';

/** A live conversation with the qemu-ga of one pvm guest, over its serial line ssl1. */
export interface AgentConnection {
  readonly client: QgaClient;
  readonly ptyPath: string;
  /** Runs a command through the agent; `configEnv` is the guest's `environment.*` config. */
  exec(options: ExecOptions, configEnv: Record<string, string>): ExecSession;
  /** Sends `signal` (a name without SIG) to the guest's pid 1 and returns once the agent started `kill`. */
  signalInit(signal: string, timeoutMs: number): Promise<void>;
  onClose(listener: () => void): void;
  close(): void;
}

/**
 * Finds the host pty of the guest's ssl1 through mconsole (UML allocates it
 * when qemu-ga opens /dev/ttyS1, so a booting guest has none yet), opens it
 * and waits until the agent answers a sync, all within `timeoutMs`.
 */
export async function connectAgent(
  mconsole: MconsoleClient,
  options: { runner: ProcessRunner; timeoutMs: number; guestName?: string },
): Promise<AgentConnection> {
  const deadline = Date.now() + options.timeoutMs;
  let ptyPath: string | undefined;
  for (;;) {
    const text = await mconsole.config('ssl1');
    ptyPath = parsePtsConfig(text);
    if (ptyPath) break;
    if (Date.now() >= deadline) {
      throw unavailable(
        `The guest agent${options.guestName ? ` of ${options.guestName}` : ''} has not opened its serial line: is the guest still booting?`,
      );
    }
    await sleep(100);
  }
  const socket = await openAgentLine(ptyPath, { runner: options.runner });
  const client = createQgaClient(socket, options.guestName ? { guestName: options.guestName } : {});
  try {
    await client.waitReady({ timeoutMs: Math.max(1000, deadline - Date.now()) });
  } catch (e) {
    client.close();
    throw e;
  }
  const path = ptyPath;
  return {
    client,
    ptyPath: path,
    exec(execOptions, configEnv) {
      return qgaExecSession(client, { ...execOptions, env: { ...configEnv, ...execOptions.env } });
    },
    async signalInit(signal, timeoutMs) {
      // Only started, not awaited: init's shutdown may take the agent down before it could report.
      await client.command(
        'guest-exec',
        { path: GUEST_BUSYBOX, arg: ['kill', '-s', signal, '1'] },
        { timeoutMs },
      );
    },
    onClose(listener) {
      socket.once('close', listener);
    },
    close() {
      client.close();
    },
  };
}
