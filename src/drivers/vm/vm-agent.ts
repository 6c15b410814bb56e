import { constants } from 'node:os';
import { connectQga, type QgaClient } from '../../host/qga-client.ts';
import { GUEST_BUSYBOX, type QgaExecSessionOptions, qgaExecSession } from '../../host/qga-exec-session.ts';
import type { ExecSession } from '../guest-driver.ts';

/**
 * Connections to the guest agents of one driver instance, one per guest.
 * QEMU serves a single client on the agent's chardev socket (a second one
 * waits unanswered until the first leaves), so every exec, ping and stop
 * request of a guest shares one connection; the QGA client runs their
 * requests one after another, and the polls of concurrent execs interleave.
 * The connection is closed when its last user is done, so that nothing holds
 * the line between uses (a restarted daemon, or another driver instance,
 * can connect at once).
 */
export interface AgentPool {
  /** Whether the agent answers a sync within `timeoutMs`. */
  ping(socketPath: string, options: { timeoutMs: number }): Promise<boolean>;
  /**
   * Sends the image's stop signal to the guest's pid 1 with the kit's busybox:
   * the same request as the ct model's, and one busybox init (which ignores
   * ACPI and has no /sbin/shutdown for guest-shutdown) acts on.
   */
  signalInit(socketPath: string, signal: string, options: { timeoutMs: number }): Promise<void>;
  /** An exec session through the agent (`busyboxPath`: what wraps cwd and user changes, the kit's busybox by default). */
  exec(socketPath: string, options: QgaExecSessionOptions): Promise<ExecSession>;
  /** Closes the connection to one guest's agent (before its sockets go away). */
  drop(socketPath: string): void;
  /** Runs `work` on the guest's shared connection (after a sync), e.g. fsfreeze around a snapshot. */
  use<T>(
    socketPath: string,
    options: { timeoutMs: number },
    work: (client: QgaClient) => Promise<T>,
  ): Promise<T>;
}

interface Shared {
  client: Promise<QgaClient>;
  users: number;
}

/** Makes the pool of one driver instance. */
export function createAgentPool(): AgentPool {
  const shared = new Map<string, Shared>();

  /** Runs `work` on the guest's shared connection, made on first use and closed when its last user is done. */
  const use = async <T>(
    socketPath: string,
    timeoutMs: number,
    work: (c: QgaClient) => Promise<T>,
  ): Promise<T> => {
    let entry = shared.get(socketPath);
    if (!entry) {
      const made: Shared = {
        users: 0,
        client: connectQga(socketPath, {
          connectTimeoutMs: timeoutMs,
          onClose: () => {
            if (shared.get(socketPath) === made) shared.delete(socketPath);
          },
        }),
      };
      made.client.catch(() => {
        if (shared.get(socketPath) === made) shared.delete(socketPath);
      });
      shared.set(socketPath, made);
      entry = made;
    }
    const e = entry;
    e.users++;
    try {
      const client = await e.client;
      // guest-sync-delimited: checks the agent is there and skips stale bytes on the line.
      await client.sync({ timeoutMs });
      return await work(client);
    } finally {
      e.users--;
      if (e.users === 0) {
        if (shared.get(socketPath) === e) shared.delete(socketPath);
        e.client.then(
          (c) => c.close(),
          () => {},
        );
      }
    }
  };

  return {
    ping(socketPath, options) {
      return use(socketPath, options.timeoutMs, async () => true).catch(() => false);
    },

    async signalInit(socketPath, signal, options) {
      const number = constants.signals[signal as NodeJS.Signals] ?? constants.signals.SIGTERM;
      // Started, not awaited: the guest may power off before the agent reports the exit.
      await use(socketPath, options.timeoutMs, (c) =>
        c.execStart([GUEST_BUSYBOX, 'kill', `-${number}`, '1']),
      );
    },

    exec(socketPath, options) {
      return new Promise<ExecSession>((resolve, reject) => {
        // The connection stays in use until the command ends.
        use(socketPath, 10_000, async (client) => {
          const session = qgaExecSession(client, options);
          resolve(session);
          await session.exit;
        }).catch(reject);
      });
    },

    use(socketPath, options, work) {
      return use(socketPath, options.timeoutMs, work);
    },

    drop(socketPath) {
      const e = shared.get(socketPath);
      shared.delete(socketPath);
      e?.client.then(
        (c) => c.close(),
        () => {},
      );
    },
  };
}
