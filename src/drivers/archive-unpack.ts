import { childEnded, type ProcessRunner } from '../host/runner.ts';

/**
 * tar options for `tarArgv` that read the pipe in 1 MiB records (`-b 2048`), refilling a record
 * until it is whole (`-B`, since a pipe hands over at most 64 KiB at a time): GNU tar otherwise
 * reads and writes 10 KiB at a time, and unpacking 1 GiB took twice the system time (about 1.3 s
 * against 0.65 s, decision 0085). The archive's own record size does not matter when reading,
 * and a short last record is accepted.
 */
export const TAR_PIPE_RECORD_ARGS: readonly string[] = ['-b', '2048', '-B'];

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
