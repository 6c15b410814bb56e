import { liveRestoreTimes, secondsText } from '../api/backup-schemas.ts';
import type { Operation } from '../api/types.ts';
import type { TrivisorClient } from '../client/client.ts';

/**
 * The progress line of an operation: its label, percent and text, and, once a live restore's
 * guest runs (decision 0082's `runningAfterMs`), when it did, ahead of the progress text so that
 * a narrow terminal cuts the text rather than that.
 */
export function progressLine(
  label: string,
  o: Pick<Operation, 'progress' | 'progressText' | 'metadata'>,
): string {
  const percent = o.progress === null ? '' : ` ${Math.round(o.progress)}%`;
  const { runningAfterMs } = liveRestoreTimes(o.metadata);
  const running =
    runningAfterMs === undefined ? '' : `${percent ? ',' : ''} running after ${secondsText(runningAfterMs)}`;
  const text = o.progressText ? ` (${o.progressText})` : '';
  return `${label}:${percent}${running}${text}`;
}

/**
 * Waits for an operation to end. On a terminal, stderr shows its progress on
 * one rewritten line; otherwise nothing is printed, so scripts see only results.
 */
export async function waitWithProgress(
  client: Pick<TrivisorClient, 'waitOperation'>,
  op: Operation,
  options: { label?: string; stderr?: Pick<NodeJS.WriteStream, 'isTTY' | 'columns' | 'write'> } = {},
): Promise<Operation> {
  const stderr = options.stderr ?? process.stderr;
  if (!stderr.isTTY) return client.waitOperation(op.id);
  const label = options.label ?? op.description;
  let shown = false;
  const show = (o: Operation) => {
    const line = progressLine(label, o);
    stderr.write(`\r\x1b[2K${line.slice(0, Math.max(10, (stderr.columns ?? 80) - 1))}`);
    shown = true;
  };
  try {
    return await client.waitOperation(op.id, { onProgress: show });
  } finally {
    if (shown) stderr.write('\r\x1b[2K');
  }
}
