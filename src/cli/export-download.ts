import type { Operation } from '../api/types.ts';
import type { TrivisorClient } from '../client/client.ts';
import { waitWithProgress } from './progress.ts';

/** Whether an operation's failure is its cancel. */
const isCancelled = (e: unknown): boolean => (e as { code?: unknown } | undefined)?.code === 'Cancelled';

/**
 * How long a followed download may receive nothing once its export has ended. The daemon then
 * holds the whole archive (or the failure) and sends it at once: a download that stays silent
 * this long is stuck, and is stopped rather than awaited for ever (issue 20).
 */
export const SILENT_AFTER_EXPORT_MS = 30_000;

/**
 * Waits for the export `op` of `guest` while its archive `backup` is downloaded to `file` as it
 * is written (issue 20 §1); the finished operation. Fails, leaving no file, when either fails:
 * with the export's own error when it failed (the download's says only that it stopped), with
 * the download's when the export was cancelled because of it or succeeded. A failed download
 * cancels the export. Once the export has ended, a download that receives nothing for
 * `silentMs` is stopped: the CLI never waits for ever on a download the daemon has ended.
 */
export async function downloadWhileExporting(
  client: Pick<TrivisorClient, 'downloadBackup' | 'waitOperation' | 'cancelOperation'>,
  op: Operation,
  options: { guest: string; backup: string; file: string; label?: string; silentMs?: number },
): Promise<Operation> {
  const { guest, backup, file } = options;
  const silentMs = options.silentMs ?? SILENT_AFTER_EXPORT_MS;
  const stop = new AbortController();
  let lastBytesAt = Date.now();
  let watchdog: NodeJS.Timeout | undefined;
  const downloading = client
    .downloadBackup(guest, backup, file, {
      follow: true,
      signal: stop.signal,
      onBytes: () => {
        lastBytesAt = Date.now();
      },
    })
    .catch(async (e: unknown) => {
      // Nothing more of it can be kept: the daemon stops writing it.
      await client.cancelOperation(op.id).catch(() => {});
      throw e;
    });
  const waiting = waitWithProgress(client, op, {
    label: options.label ?? `Backing up ${guest}`,
  }).finally(() => {
    lastBytesAt = Date.now();
    watchdog = setInterval(
      () => {
        if (Date.now() - lastBytesAt < silentMs) return;
        stop.abort(
          new Error(
            `The download of backup ${backup} stopped: nothing came for ${silentMs / 1000} s after the export ended`,
          ),
        );
      },
      Math.max(10, Math.min(1000, silentMs / 4)),
    );
  });
  try {
    const [waited, downloaded] = await Promise.allSettled([waiting, downloading]);
    // The export's own failure names the cause; the download's says only that it stopped.
    if (downloaded.status === 'rejected' && waited.status === 'fulfilled') throw downloaded.reason;
    if (waited.status === 'rejected') {
      throw downloaded.status === 'rejected' && isCancelled(waited.reason)
        ? downloaded.reason
        : waited.reason;
    }
    if (downloaded.status === 'rejected') throw downloaded.reason;
    return waited.value;
  } finally {
    clearInterval(watchdog);
  }
}
