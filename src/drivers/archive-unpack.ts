import { childEnded, type ProcessRunner } from '../host/runner.ts';

/**
 * `zstd -d -f -c ARCHIVE | TAR…` for every model's import (decision 0085): `tarArgv` is the whole
 * command of the tar that unpacks (possibly wrapped in a sandbox) and must read its archive from
 * standard input (`-f -`). tar's own `--zstd` / `--use-compress-program` used three to four times
 * the CPU for the same unpacking of a FIFO (its reading child copies the archive into the
 * compressor through a pipe in 10 KiB records). `-f` passes a plain tar through, so an
 * uncompressed export imports as well. Answers with the code and stderr of whichever failed,
 * tar's first (its ENOSPC names the cause); an abort kills both.
 */
export async function unpackZstdTar(
  runner: ProcessRunner,
  archive: string,
  tarArgv: readonly string[],
  signal?: AbortSignal,
): Promise<{ code: number; stderr: string }> {
  signal?.throwIfAborted();
  const zstd = runner.spawn(['zstd', '-d', '-f', '-c', '-q', '--', archive], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const tar = runner.spawn(tarArgv, { stdio: [zstd.stdout ?? 'ignore', 'ignore', 'pipe'] });
  // The pipe is tar's now: the daemon keeps no end of it open.
  zstd.stdout?.destroy();
  const results = Promise.all([childEnded(tar), childEnded(zstd)]);
  const kill = () => {
    tar.kill('SIGKILL');
    zstd.kill('SIGKILL');
  };
  signal?.addEventListener('abort', kill, { once: true });
  try {
    const [t, z] = await results;
    signal?.throwIfAborted();
    return t.code !== 0 ? t : z;
  } finally {
    signal?.removeEventListener('abort', kill);
  }
}
