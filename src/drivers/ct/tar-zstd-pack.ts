import { open } from 'node:fs/promises';
import { CommandError, childEnded, type ProcessRunner } from '../../host/runner.ts';

/** zstd on every core, its output the archive (decision 0085, ct section). */
const ZSTD_ARGV = ['zstd', '-T0', '-q', '-c'];

/**
 * `TAR… -cf - | zstd -T0 > OUT` for a ct export (decision 0085, ct section): `tarArgv` writes its
 * archive on standard output. tar's own `--use-compress-program`, given the daemon's FIFO, ran
 * the compressor in a grandchild and copied its output into the FIFO in 10 KiB records from a
 * child of its own, one hop and many small reads more for the daemon; here zstd writes the FIFO
 * itself. `out` is opened before the commands start (a FIFO the daemon already reads, or a file).
 * tar's failure is reported first (its message names the cause); an abort kills both.
 */
export async function packZstdTar(
  runner: ProcessRunner,
  tarArgv: readonly string[],
  options: { out: string; signal?: AbortSignal | undefined },
): Promise<void> {
  const { out, signal } = options;
  signal?.throwIfAborted();
  const file = await open(out, 'w', 0o600);
  let zstd: ReturnType<ProcessRunner['spawn']>;
  let zstdEnded: ReturnType<typeof childEnded>;
  try {
    zstd = runner.spawn(ZSTD_ARGV, { stdio: ['pipe', file.fd, 'pipe'] });
    // Listened to before anything is awaited: a zstd that ends at once is not missed.
    zstdEnded = childEnded(zstd);
  } finally {
    await file.close();
  }
  const tar = runner.spawn(tarArgv, { stdio: ['ignore', zstd.stdin ?? 'ignore', 'pipe'] });
  const tarEnded = childEnded(tar);
  // The pipe is tar's now: the daemon keeps no end of it open, so zstd sees its end when tar ends.
  zstd.stdin?.destroy();
  const kill = () => {
    tar.kill('SIGKILL');
    zstd.kill('SIGKILL');
  };
  signal?.addEventListener('abort', kill, { once: true });
  try {
    const [t, z] = await Promise.all([tarEnded, zstdEnded]);
    signal?.throwIfAborted();
    if (t.code !== 0) throw new CommandError(tarArgv, { ...t, stdout: '' });
    if (z.code !== 0) throw new CommandError(ZSTD_ARGV, { ...z, stdout: '' });
  } finally {
    signal?.removeEventListener('abort', kill);
  }
}
