import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, startDaemon } from './harness.ts';

// Daemons of storage tests need no network of their own.
process.env.TRIVISOR_DEFAULT_NETWORK = 'none';

/** Owner, mode and content hash of every regular file and link under /srv and /etc, sorted. */
const FINGERPRINT = [
  'sh',
  '-c',
  'cd / && find ./srv ./etc -xdev \\( -type f -o -type l \\) | sort | while read -r f; do ' +
    'if [ -L "$f" ]; then echo "$f -> $(readlink "$f")"; else echo "$(stat -c "%u:%g %a" "$f") $(sha256sum < "$f" | cut -c1-64) $f"; fi; done',
];

for (const model of ['vm', 'pvm'] as const) {
  describe(`snapshots, copies and backups of ${model} guests through the CLI`, () => {
    let src: Daemon;
    let dst: Daemon | undefined;
    let dir: string;
    const name = `${model}1`;
    before(async () => {
      src = await startDaemon();
      dir = await makeRunDir('backups');
    });
    after(async () => {
      await Promise.all([src?.destroy(), dst?.destroy()]);
      if (dir) await removeRunDir(dir);
    });

    const sh = (d: Daemon, guest: string, script: string) => d.ok(['exec', guest, '--', 'sh', '-c', script]);
    const status = (d: Daemon, guest: string) =>
      (JSON.parse(d.ok(['info', guest, '--format', 'json'])) as { status: string }).status;
    const snapshots = (d: Daemon, guest: string) =>
      (JSON.parse(d.ok(['snapshot', 'list', guest, '--format', 'json'])) as Array<{ name: string }>).map(
        (s) => s.name,
      );

    test('a snapshot of the running guest restores the old file content, and the guest runs again', () => {
      src.ok(['launch', 'busybox', name, '--model', model, '-c', 'limits.memory=128MiB']);
      sh(
        src,
        name,
        'mkdir -p /srv && printf one > /srv/data.txt && dd if=/dev/urandom of=/srv/blob bs=64k count=16 2>/dev/null',
      );
      src.ok(['snapshot', 'create', name, 'snap0']);
      sh(src, name, 'printf two > /srv/data.txt && echo later > /srv/new.txt');
      assert.deepEqual(snapshots(src, name), ['snap0']);
      src.ok(['snapshot', 'restore', name, 'snap0']);
      assert.equal(status(src, name), 'Running');
      assert.equal(sh(src, name, 'cat /srv/data.txt'), 'one');
      assert.equal(sh(src, name, 'test -e /srv/new.txt && echo yes || echo no'), 'no\n');
      sh(src, name, 'printf three > /srv/data.txt');
    });

    test('a copy is independent of its source in both directions', () => {
      src.ok(['copy', name, 'c1', '--start']);
      assert.equal(sh(src, 'c1', 'cat /srv/data.txt'), 'three');
      sh(src, 'c1', 'printf copy > /srv/data.txt');
      assert.equal(sh(src, name, 'cat /srv/data.txt'), 'three');
      sh(src, name, 'printf source > /srv/data.txt');
      assert.equal(sh(src, 'c1', 'cat /srv/data.txt'), 'copy');
      assert.deepEqual(snapshots(src, 'c1'), []);
      src.ok(['delete', '--force', 'c1']);
    });

    test('an export imported by a daemon on a fresh state dir has identical checksums and snapshots', async () => {
      const want = src.ok(['exec', name, '--', ...FINGERPRINT]);
      assert.match(want, /\.\/srv\/blob/);
      const archive = path.join(dir, `${name}.backup`);
      src.ok(['export', name, archive, '--with-snapshots']);
      dst = await startDaemon();
      dst.ok(['import', archive, name]);
      assert.deepEqual(snapshots(dst, name), ['snap0']);
      dst.ok(['start', name]);
      assert.equal(dst.ok(['exec', name, '--', ...FINGERPRINT]), want);
      dst.ok(['snapshot', 'restore', name, 'snap0']);
      assert.equal(sh(dst, name, 'cat /srv/data.txt'), 'one');
    });
  });
}

describe('incremental backups of a vm guest through the CLI', () => {
  let src: Daemon;
  let dst: Daemon;
  let dir: string;
  before(async () => {
    [src, dst] = await Promise.all([startDaemon(), startDaemon()]);
    dir = await makeRunDir('incremental');
  });
  after(async () => {
    await Promise.all([src?.destroy(), dst?.destroy()]);
    if (dir) await removeRunDir(dir);
  });
  const file = (name: string) => path.join(dir, name);
  const sh = (d: Daemon, guest: string, script: string) => d.ok(['exec', guest, '--', 'sh', '-c', script]);

  test('a full export, then incrementals; imported in order on a fresh daemon they give identical checksums', () => {
    src.ok(['launch', 'busybox', 'v1', '--model', 'vm', '-c', 'limits.memory=128MiB']);
    sh(
      src,
      'v1',
      'mkdir -p /srv && dd if=/dev/urandom of=/srv/blob bs=1M count=4 2>/dev/null && printf zero > /srv/v.txt',
    );
    assert.match(
      src.ok(['export', 'v1', file('f0'), '--incremental']),
      /^Full backup: starts chain [0-9a-f]+\n$/,
    );
    sh(
      src,
      'v1',
      'dd if=/dev/urandom of=/srv/blob bs=64k count=1 seek=3 conv=notrunc 2>/dev/null && printf one > /srv/v.txt',
    );
    assert.match(src.ok(['export', 'v1', file('i1'), '--incremental']), /^Incremental backup 1 of chain /);
    sh(src, 'v1', 'printf two > /srv/v.txt && echo new > /srv/new.txt');
    const want = src.ok(['exec', 'v1', '--', ...FINGERPRINT]);
    src.ok(['stop', 'v1']);
    assert.match(src.ok(['export', 'v1', file('i2'), '--incremental']), /^Incremental backup 2 of chain /);
    const sizes = ['f0', 'i1', 'i2'].map((n) => statSync(file(n)).size);
    assert.ok(
      (sizes[1] ?? 0) < (sizes[0] ?? 0) / 4 && (sizes[2] ?? 0) < (sizes[0] ?? 0) / 4,
      `sizes ${sizes}`,
    );

    dst.ok(['import', file('f0'), 'v1']);
    const early = dst.cli(['import', file('i2'), 'v1']);
    assert.equal(early.code, 1);
    assert.match(early.stderr, /is not at backup 1 of chain/);
    dst.ok(['import', file('i1'), 'v1']);
    dst.ok(['import', file('i2'), 'v1']);
    dst.ok(['start', 'v1']);
    assert.equal(dst.ok(['exec', 'v1', '--', ...FINGERPRINT]), want);
    const late = dst.cli(['import', file('i2'), 'v1']);
    assert.equal(late.code, 1);
  });

  test('pvm and ct guests refuse --incremental with a reason', () => {
    src.ok(['create', 'busybox', 'p1', '--model', 'pvm']);
    const r = src.cli(['export', 'p1', file('p'), '--incremental']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /Incremental backups are not supported for pvm guests/);
  });
});
