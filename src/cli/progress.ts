import type { Operation } from '../api/types.ts';
import type { TrivisorClient } from '../client/client.ts';

/**
 * Waits for an operation to end. On a terminal, stderr shows its progress on
 * one rewritten line; otherwise nothing is printed, so scripts see only results.
 */
export async function waitWithProgress(
  client: TrivisorClient,
  op: Operation,
  options: { label?: string; stderr?: NodeJS.WriteStream } = {},
): Promise<Operation> {
  const stderr = options.stderr ?? process.stderr;
  if (!stderr.isTTY) return client.waitOperation(op.id);
  const label = options.label ?? op.description;
  let shown = false;
  const show = (o: Operation) => {
    const percent = o.progress === null ? '' : ` ${Math.round(o.progress)}%`;
    const text = o.progressText ? ` (${o.progressText})` : '';
    const line = `${label}:${percent}${text}`;
    stderr.write(`\r\x1b[2K${line.slice(0, Math.max(10, (stderr.columns ?? 80) - 1))}`);
    shown = true;
  };
  try {
    return await client.waitOperation(op.id, { onProgress: show });
  } finally {
    if (shown) stderr.write('\r\x1b[2K');
  }
}
