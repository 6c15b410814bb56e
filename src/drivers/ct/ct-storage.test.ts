import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fakeRunner } from '../../../test/fakes/fake-runner.ts';
import type { GuestSpec } from '../../core/types.ts';
import { createLogger } from '../../host/logger.ts';
import { hostRunner } from '../../host/runner.ts';
import { createCtStorage } from './ct-storage.ts';

const spec = (name: string): GuestSpec => ({
  name,
  project: 'default',
  model: 'ct',
  image: 'f'.repeat(64),
  imageAlias: 'busybox',
  config: {},
  desired: 'Stopped',
  generation: 1,
  restartRequest: 0,
  stopTimeoutMs: 1000,
  stopForce: false,
  deleting: false,
  location: 'h',
  createdAt: new Date().toISOString(),
});

describe('ct storage on a directory pool', () => {
  let stateDir: string;
  const log = createLogger({ level: 'silent' });
  before(async () => {
    stateDir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-ct-storage-'));
  });
  after(async () => {
    await rm(stateDir, { recursive: true, force: true });
  });

  const makeGuest = async (name: string) => {
    const dir = path.join(stateDir, 'guests', name);
    for (const d of ['upper', 'work', 'rootfs', 'bundle'])
      await mkdir(path.join(dir, d), { recursive: true });
    return dir;
  };
  const storage = () => createCtStorage({ runner: hostRunner(), log, stateDir, idmapBase: 1_000_000 });

  test('snapshot, change, restore gives back the old files; delete removes the snapshot', async () => {
    const dir = await makeGuest('g1');
    await writeFile(path.join(dir, 'upper/a.txt'), 'one');
    await symlink('a.txt', path.join(dir, 'upper/link'));
    const s = storage();
    await s.snapshot(spec('g1'), 'snap0');
    assert.deepEqual(await s.listSnapshots(spec('g1')), ['snap0']);
    await writeFile(path.join(dir, 'upper/a.txt'), 'two');
    await writeFile(path.join(dir, 'upper/b.txt'), 'new');
    await writeFile(path.join(dir, 'work/junk'), 'x');
    await s.restoreSnapshot(spec('g1'), 'snap0');
    assert.equal(await readFile(path.join(dir, 'upper/a.txt'), 'utf8'), 'one');
    assert.equal(await readFile(path.join(dir, 'upper/link'), 'utf8'), 'one');
    assert.equal(existsSync(path.join(dir, 'upper/b.txt')), false);
    assert.deepEqual(await readdir(path.join(dir, 'work')), [], 'overlayfs needs an empty work dir');
    assert.deepEqual(
      (await readdir(dir)).filter((n) => n.startsWith('.tmp-')),
      [],
    );
    await s.deleteSnapshot(spec('g1'), 'snap0');
    assert.deepEqual(await s.listSnapshots(spec('g1')), []);
    await assert.rejects(s.restoreSnapshot(spec('g1'), 'snap0'), { code: 'NotFound' });
  });

  test('a copy is independent of its source', async () => {
    const src = await makeGuest('src');
    const dst = await makeGuest('dst');
    await writeFile(path.join(src, 'upper/a.txt'), 'source');
    await storage().copy(spec('src'), spec('dst'));
    await writeFile(path.join(dst, 'upper/a.txt'), 'copy');
    assert.equal(await readFile(path.join(src, 'upper/a.txt'), 'utf8'), 'source');
  });

  test('export and import round-trip the writable layer, into the guest or into a snapshot', async () => {
    const a = await makeGuest('ea');
    const b = await makeGuest('eb');
    await mkdir(path.join(a, 'upper/etc'));
    await writeFile(path.join(a, 'upper/etc/conf'), 'x=1', { mode: 0o640 });
    const tar = path.join(stateDir, 'ea.tar.zst');
    const s = storage();
    await s.exportTar(spec('ea'), tar);
    await s.importTar(spec('eb'), tar);
    await s.importTar(spec('eb'), tar, { snapshot: 'old' });
    assert.equal(await readFile(path.join(b, 'upper/etc/conf'), 'utf8'), 'x=1');
    assert.equal(await readFile(path.join(b, 'snapshots/old/upper/etc/conf'), 'utf8'), 'x=1');
    assert.deepEqual(await s.listSnapshots(spec('eb')), ['old']);
  });

  test('a failed copy leaves neither a half snapshot nor a changed upper', async () => {
    const dir = await makeGuest('f1');
    await writeFile(path.join(dir, 'upper/a.txt'), 'kept');
    const runner = fakeRunner((argv) =>
      argv[0] === 'cp' ? { code: 1, stderr: 'cp: No space left on device' } : undefined,
    );
    const s = createCtStorage({ runner, log, stateDir, idmapBase: 1_000_000 });
    await assert.rejects(s.snapshot(spec('f1'), 'x'), /No space left/);
    assert.deepEqual(await readdir(path.join(dir, 'snapshots')), []);
    assert.equal(await readFile(path.join(dir, 'upper/a.txt'), 'utf8'), 'kept');
    assert.deepEqual(runner.commands()[0]?.split(' ').slice(0, 4), ['cp', '-a', '--reflink=auto', '--']);
  });

  test('sweep removes .tmp- debris and puts back an upper an interrupted restore left aside', async () => {
    const dir = await makeGuest('sw');
    await mkdir(path.join(dir, 'snapshots/.tmp-half/upper'), { recursive: true });
    await rm(path.join(dir, 'upper'), { recursive: true });
    await mkdir(path.join(dir, '.tmp-upper-old'));
    await writeFile(path.join(dir, '.tmp-upper-old/a.txt'), 'before the restore');
    await mkdir(path.join(dir, '.tmp-upper'));
    await storage().sweep(spec('sw'));
    assert.equal(await readFile(path.join(dir, 'upper/a.txt'), 'utf8'), 'before the restore');
    assert.deepEqual(
      (await readdir(dir)).filter((n) => n.startsWith('.')),
      [],
    );
    assert.deepEqual(await readdir(path.join(dir, 'snapshots')), []);
  });
});
