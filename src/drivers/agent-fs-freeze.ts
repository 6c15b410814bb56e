import { rm, stat, writeFile } from 'node:fs/promises';
import { unavailable } from '../core/errors.ts';
import type { QgaClient } from '../host/qga-client.ts';

/**
 * Runs `work` on a running guest's agent connection: the one its driver uses,
 * because the agent's line (QEMU's socket, UML's serial line) carries one
 * conversation at a time.
 */
/** File name of the marker present in a guest's dir while its file systems are frozen for a snapshot. */
export const FREEZE_MARKER = 'fsfreeze.pending';

export type AgentAccess = <T>(work: (agent: QgaClient) => Promise<T>) => Promise<T>;

/** How long the agent may take to freeze: it flushes every dirty page of the guest first. */
const FREEZE_TIMEOUT_MS = 60_000;
const THAW_TIMEOUT_MS = 15_000;

/**
 * Runs `work` with the guest's file systems frozen through its agent
 * (guest-fsfreeze-freeze: dirty data flushed to the disk, writers blocked),
 * and thaws them afterwards whatever happens. `marker` is written before the
 * freeze and removed after the thaw, so that a daemon killed in between
 * leaves a trace for sweep (thawIfMarked): a guest must never stay frozen.
 */
export async function withFrozenFileSystems<T>(
  agent: AgentAccess,
  options: { marker: string; guest: string },
  work: () => Promise<T>,
): Promise<T> {
  await writeFile(options.marker, `${new Date().toISOString()}\n`, { mode: 0o600 });
  try {
    await agent((c) =>
      c.command<number>('guest-fsfreeze-freeze', undefined, { timeoutMs: FREEZE_TIMEOUT_MS }),
    );
  } catch (e) {
    // The agent thaws what it froze when a freeze fails half-way; thaw anyway in case the answer was lost.
    await thaw(agent).catch(() => {});
    await rm(options.marker, { force: true });
    throw unavailable(
      `Cannot freeze the file systems of guest ${options.guest} through its agent (${e instanceof Error ? e.message : String(e)}).`,
    );
  }
  try {
    return await work();
  } finally {
    await thaw(agent);
    await rm(options.marker, { force: true });
  }
}

async function thaw(agent: AgentAccess): Promise<void> {
  // A second attempt on a fresh connection: the first may have been cut.
  try {
    await agent((c) => c.command('guest-fsfreeze-thaw', undefined, { timeoutMs: THAW_TIMEOUT_MS }));
  } catch {
    await agent((c) => c.command('guest-fsfreeze-thaw', undefined, { timeoutMs: THAW_TIMEOUT_MS }));
  }
}

/** Thaws a guest a killed daemon left frozen (its marker exists); removes the marker. */
export async function thawIfMarked(agent: AgentAccess | undefined, marker: string): Promise<void> {
  if (!(await stat(marker).catch(() => undefined))) return;
  if (agent) await thaw(agent);
  await rm(marker, { force: true });
}
