import { constants } from 'node:os';
import { connectQga, type QgaClient } from '../../host/qga-client.ts';
import { GUEST_BUSYBOX, qgaExecSession } from '../../host/qga-exec-session.ts';
import type { ExecOptions, ExecSession } from '../guest-driver.ts';

/*
 * The guest agent behind QEMU's virtio-serial chardev socket. QEMU serves one
 * client at a time on it, so every use connects, resynchronises, works and
 * disconnects; nothing holds the line between calls.
 */

async function withAgent<T>(
  socketPath: string,
  timeoutMs: number,
  work: (client: QgaClient) => Promise<T>,
): Promise<T> {
  const client = await connectQga(socketPath, { connectTimeoutMs: timeoutMs, requestTimeoutMs: timeoutMs });
  try {
    await client.sync({ timeoutMs });
    return await work(client);
  } finally {
    client.close();
  }
}

/** Whether the agent answers a sync within `timeoutMs`. */
export async function agentPing(socketPath: string, options: { timeoutMs: number }): Promise<boolean> {
  return withAgent(socketPath, options.timeoutMs, async () => true).catch(() => false);
}

/**
 * Sends the image's stop signal to the guest's pid 1 with the kit's busybox:
 * the same request as the ct model's, and the one busybox init (which ignores
 * ACPI and has no /sbin/shutdown for guest-shutdown) acts on.
 */
export async function agentSignalInit(
  socketPath: string,
  signal: string,
  options: { timeoutMs: number },
): Promise<void> {
  const number = constants.signals[signal as NodeJS.Signals] ?? constants.signals.SIGTERM;
  await withAgent(socketPath, options.timeoutMs, async (client) => {
    // Started, not awaited: the guest may power off before the agent reports the exit.
    await client.execStart([GUEST_BUSYBOX, 'kill', `-${number}`, '1']);
  });
}

/** An exec session through the agent; the connection closes when the command ends. */
export async function agentExec(socketPath: string, options: ExecOptions): Promise<ExecSession> {
  const client = await connectQga(socketPath, { connectTimeoutMs: 10_000 });
  try {
    await client.sync({ timeoutMs: 10_000 });
    const session = qgaExecSession(client, options);
    session.exit.finally(() => client.close()).catch(() => {});
    return session;
  } catch (e) {
    client.close();
    throw e;
  }
}
