import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fakeRunner } from '../../test/fakes/fake-runner.ts';
import { qemuImg } from './qemu-img.ts';

test('info() reads size, backing file and internal snapshots oldest first', async () => {
  const runner = fakeRunner(() => ({
    stdout: JSON.stringify({
      'virtual-size': 2147483648,
      format: 'qcow2',
      'backing-filename': 'base.ext4',
      'full-backing-filename': '/var/lib/trivisor/images/x/base.ext4',
      'backing-filename-format': 'raw',
      snapshots: [
        { id: '10', name: 'later' },
        { id: '2', name: 'first' },
      ],
    }),
  }));
  const info = await qemuImg(runner).info('/g/root.qcow2', { forceShare: true });
  assert.deepEqual(info, {
    virtualSizeBytes: 2147483648,
    format: 'qcow2',
    backingFile: '/var/lib/trivisor/images/x/base.ext4',
    backingFormat: 'raw',
    snapshots: ['first', 'later'],
  });
  assert.deepEqual(runner.commands(), ['qemu-img info -U --output=json /g/root.qcow2']);
});

test('convert() reads a snapshot without the lock and writes an overlay or a flat image', async () => {
  const runner = fakeRunner();
  const img = qemuImg(runner);
  await img.convert('/g/root.qcow2', '/c/new.qcow2', {
    snapshot: 'snap0',
    forceShare: true,
    backing: { path: '/base.ext4', format: 'raw' },
  });
  await img.convert('/g/root.qcow2', '/flat.qcow2');
  assert.deepEqual(runner.commands(), [
    'qemu-img convert -U -l snapshot.name=snap0 -f qcow2 -O qcow2 -B /base.ext4 -F raw /g/root.qcow2 /c/new.qcow2',
    'qemu-img convert -f qcow2 -O qcow2 /g/root.qcow2 /flat.qcow2',
  ]);
});

test('setContent() re-bases a throw-away overlay of the content onto the disk, commits it and removes it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'qemu-img-test-'));
  try {
    const runner = fakeRunner();
    await qemuImg(runner).setContent(join(dir, 'root.qcow2'), { path: '/in/flat.qcow2', format: 'qcow2' });
    const [create, rebase, commit] = runner.calls.map((c) => c.argv);
    const diff = create?.at(-1) ?? '';
    assert.match(diff, /\/\.tmp-root\.qcow2-[0-9a-f]{8}\.diff$/);
    assert.deepEqual(create, [
      'qemu-img',
      'create',
      '-q',
      '-f',
      'qcow2',
      '-F',
      'qcow2',
      '-b',
      '/in/flat.qcow2',
      diff,
    ]);
    assert.deepEqual(rebase, [
      'qemu-img',
      'rebase',
      '-f',
      'qcow2',
      '-F',
      'qcow2',
      '-b',
      join(dir, 'root.qcow2'),
      diff,
    ]);
    assert.deepEqual(commit, ['qemu-img', 'commit', '-q', '-f', 'qcow2', diff]);
    assert.deepEqual(await readdir(dir), []);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
