import { open } from 'node:fs/promises';
import { childEnded, type ProcessRunner } from '../host/runner.ts';

/** Writes one chunk to the compressor, resolved once it has taken it. */
export type ChunkWriter = (chunk: Buffer) => Promise<void>;

/**
 * Compresses what `body` writes into `out` (the daemon's FIFO or a file) through `zstd -T0` on
 * every core: the archive made by the daemon itself, streamed once (decision 0085). An abort
 * kills zstd and rejects with the signal's reason; a failure of `body` kills it too; zstd's own
 * failure is an Error naming its exit and output.
 */
export async function writeThroughZstd(
  runner: ProcessRunner,
  out: string,
  signal: AbortSignal | undefined,
  body: (write: ChunkWriter) => Promise<void>,
): Promise<void> {
  signal?.throwIfAborted();
  const file = await open(out, 'w', 0o600);
  const zstd = runner.spawn(['zstd', '-T0', '-q', '-c'], { stdio: ['pipe', file.fd, 'pipe'] });
  await file.close();
  const exited = childEnded(zstd);
  const stdin = zstd.stdin;
  if (!stdin) throw new Error('zstd has no stdin');
  stdin.on('error', () => {});
  const write: ChunkWriter = (chunk) =>
    new Promise<void>((resolve, reject) => {
      stdin.write(chunk, (e) => (e ? reject(e) : resolve()));
    });
  const onAbort = () => zstd.kill('SIGKILL');
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    await body(write);
    stdin.end();
    const { code, stderr } = await exited;
    signal?.throwIfAborted();
    if (code !== 0) throw new Error(`zstd failed (exit ${code}): ${stderr.trim() || 'no output'}`);
  } catch (e) {
    zstd.kill('SIGKILL');
    await exited;
    signal?.throwIfAborted();
    throw e;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}
