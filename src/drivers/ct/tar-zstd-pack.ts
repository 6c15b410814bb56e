import { open } from 'node:fs/promises';
import { CommandError, childEnded, type ProcessRunner } from '../../host/runner.ts';

/** zstd on every core, its output the archive (decision 0085, ct section). */
export const ZSTD_ARGV = ['zstd', '-T0', '-q', '-c'];
/** F_SETPIPE_SZ (linux/fcntl.h), and the size asked: the default /proc/sys/fs/pipe-max-size. */
const F_SETPIPE_SZ = 1031;
const PIPE_BYTES = 1024 * 1024;
/**
 * zstd started by perl, which first gives its output, when that is a pipe (the daemon's FIFO), a
 * 1 MiB buffer instead of 64 KiB: zstd blocks less often on the daemon's reads. Measured through
 * the CLI's export of the benchmark's layer (405 MB archive, 5 pairs alternated, load 1.6-3.0):
 * 4.43-4.77 s against 4.55-4.97 s, each pair faster; the daemon's CPU 1.15-1.43 s against
 * 1.11-1.66 s (medians 1.18 and 1.41). Into a file (no pipe) the fcntl fails and zstd runs as is.
 * tar's output into zstd is Node's socketpair, which has no such size.
 */
const ZSTD_SPAWN = [
  'perl',
  '-e',
  `fcntl(STDOUT, ${F_SETPIPE_SZ}, ${PIPE_BYTES}); exec { $ARGV[0] } @ARGV or die "cannot run $ARGV[0]: $!\\n";`,
  ...ZSTD_ARGV,
];

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
    zstd = runner.spawn(ZSTD_SPAWN, { stdio: ['pipe', file.fd, 'pipe'] });
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
