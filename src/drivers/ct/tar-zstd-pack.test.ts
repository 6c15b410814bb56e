import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fakeRunner } from '../../../test/fakes/fake-runner.ts';
import { hostRunner } from '../../host/runner.ts';
import { packZstdTar } from './tar-zstd-pack.ts';

describe('packZstdTar', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-tar-zstd-pack-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('writes the tar of a tree compressed with zstd, which zstd -d | tar -x gives back', async () => {
    await mkdir(path.join(dir, 'src/etc'), { recursive: true });
    await writeFile(path.join(dir, 'src/etc/conf'), 'x=1');
    const out = path.join(dir, 'a.tar.zst');
    await packZstdTar(hostRunner(), ['tar', '-C', path.join(dir, 'src'), '-cf', '-', '.'], { out });
    assert.deepEqual((await readFile(out)).subarray(0, 4), Buffer.from([0x28, 0xb5, 0x2f, 0xfd]));
    await mkdir(path.join(dir, 'back'));
    await hostRunner().run([
      'sh',
      '-c',
      `zstd -d -c -q -- "$1" | tar -C "$2" -xf -`,
      'sh',
      out,
      path.join(dir, 'back'),
    ]);
    assert.equal(await readFile(path.join(dir, 'back/etc/conf'), 'utf8'), 'x=1');
  });

  test('into a FIFO, zstd writes through a 1 MiB pipe buffer, and the reader gets the whole archive', async () => {
    await mkdir(path.join(dir, 'big'), { recursive: true });
    await writeFile(path.join(dir, 'big/random'), randomBytes(3 * 1024 * 1024));
    const fifo = path.join(dir, 'fifo');
    await hostRunner().run(['mkfifo', fifo]);
    // The reader asks the pipe's size (F_GETPIPE_SZ) once it has read it all, writer gone.
    const reader = hostRunner().run([
      'perl',
      '-e',
      'open(my $f, "<", $ARGV[0]) or die; binmode $f; local $/; my $d = <$f>; print fcntl($f, 1032, 0) + 0, " ", length($d);',
      fifo,
    ]);
    await packZstdTar(hostRunner(), ['tar', '-C', path.join(dir, 'big'), '-cf', '-', '.'], { out: fifo });
    const [size, bytes] = (await reader).stdout.split(' ').map(Number);
    assert.equal(size, 1024 * 1024);
    assert.ok((bytes ?? 0) > 3 * 1024 * 1024, `${bytes} bytes`);
  });

  test("runs tar into zstd -T0 and reports tar's failure, with its message, before zstd's", async () => {
    const runner = fakeRunner((argv) =>
      argv[0] === 'tar'
        ? { code: 2, stderr: 'tar: ./x: Cannot open: Permission denied' }
        : { code: 1, stderr: 'zstd: error 70 : Write error : Broken pipe' },
    );
    const out = path.join(dir, 'b.tar.zst');
    await assert.rejects(
      packZstdTar(runner, ['tar', '-cf', '-', '.'], { out }),
      /tar failed \(exit 2\): .*Permission denied/,
    );
    assert.deepEqual(
      runner.calls.map((c) => c.argv.slice(-4).join(' ')),
      ['zstd -T0 -q -c', 'tar -cf - .'],
    );
    const zstdFails = fakeRunner((argv) =>
      argv.includes('zstd') ? { code: 1, stderr: 'zstd: Broken pipe' } : undefined,
    );
    await assert.rejects(packZstdTar(zstdFails, ['tar', '-cf', '-', '.'], { out }), /zstd failed \(exit 1\)/);
  });

  test('an aborted signal starts nothing', async () => {
    const runner = fakeRunner();
    const signal = AbortSignal.abort();
    await assert.rejects(
      packZstdTar(runner, ['tar', '-cf', '-', '.'], { out: path.join(dir, 'c'), signal }),
      {
        name: 'AbortError',
      },
    );
    assert.deepEqual(runner.calls, []);
  });
});
