import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fakeRunner } from '../../../test/fakes/fake-runner.ts';
import type { GuestSpec } from '../../core/types.ts';
import { createLogger } from '../../host/logger.ts';
import {
  ctLayerOf,
  DEFAULT_LAYER_IMAGE_BYTES,
  hasLayerImage,
  layerImageBytes,
  layerRootOf,
  makeLayerImage,
  mountLayerImage,
  withCtLayer,
} from './ct-layer-image.ts';
import { createCtStorage } from './ct-storage.ts';

const spec = (config: Record<string, string> = {}): GuestSpec => ({
  name: 'g',
  project: 'default',
  model: 'ct',
  image: 'f'.repeat(64),
  imageAlias: 'busybox',
  config,
  desired: 'Stopped',
  generation: 1,
  restartRequest: 0,
  stopTimeoutMs: 1000,
  stopForce: false,
  deleting: false,
  location: 'h',
  createdAt: '2026-01-01T00:00:00Z',
});

describe('ct layer images (decision 0094)', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ct-layer-image-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test("a guest directory without layer.img keeps upper/ in itself; with one, in the image mounted in the state dir's ct-layers/", async () => {
    const state = path.join(dir, 'state');
    await mkdir(path.join(state, 'guests', 'g'), { recursive: true });
    const layer = ctLayerOf(state, 'g');
    assert.deepEqual(layer, {
      dir: path.join(state, 'guests/g'),
      image: path.join(state, 'guests/g/layer.img'),
      mount: path.join(state, 'ct-layers/g'),
    });
    assert.equal(hasLayerImage(layer.dir), false);
    assert.equal(layerRootOf(layer), layer.dir);
    await writeFile(layer.image, '');
    assert.equal(layerRootOf(layer), path.join(state, 'ct-layers/g'));
  });

  test('the image is sized by limits.disk, 8 GiB without it; a size below 64 MiB is refused in one line', () => {
    assert.equal(layerImageBytes(spec()), DEFAULT_LAYER_IMAGE_BYTES);
    assert.equal(layerImageBytes(spec({ 'limits.disk': '256MiB' })), 256 * 1024 ** 2);
    assert.throws(() => layerImageBytes(spec({ 'limits.disk': '1MiB' })), /at least 64MiB/);
  });

  test('makeLayerImage makes a sparse file of the size and runs mkfs.ext4 on it with lazy init', async () => {
    const runner = fakeRunner();
    const image = path.join(dir, 'new.img');
    await makeLayerImage(runner, image, { sizeBytes: 128 * 1024 ** 2 });
    const st = await stat(image);
    assert.equal(st.size, 128 * 1024 ** 2);
    assert.ok(st.blocks * 512 < 1024 * 1024, 'sparse');
    const [mkfs] = runner.commands();
    assert.match(mkfs ?? '', /^mkfs\.ext4 .*lazy_itable_init=1,lazy_journal_init=1.* \S+new\.img$/);
  });

  test('a failed mkfs leaves no image behind', async () => {
    const runner = fakeRunner((argv) => (argv[0] === 'mkfs.ext4' ? { code: 1, stderr: 'no' } : undefined));
    const image = path.join(dir, 'failed.img');
    await assert.rejects(makeLayerImage(runner, image, { sizeBytes: 64 * 1024 ** 2 }));
    await assert.rejects(stat(image));
  });

  test('mount attaches a direct-I/O loop device, mounts it and detaches it at once (autoclear)', async () => {
    const runner = fakeRunner((argv) => {
      if (argv[0] === 'losetup' && argv.includes('--find')) return { stdout: '/dev/loop7\n' };
      return undefined;
    });
    const target = path.join(dir, 'mnt-ok');
    await mountLayerImage(runner, path.join(dir, 'x.img'), target);
    const cmds = runner.commands();
    assert.equal(cmds[1], `losetup --find --show --direct-io=on -- ${path.join(dir, 'x.img')}`);
    assert.equal(cmds[2], `mount -t ext4 -o rw /dev/loop7 ${target}`);
    assert.equal(cmds[3], 'losetup --detach /dev/loop7');
  });

  test('mount falls back to buffered I/O where the file system takes no O_DIRECT', async () => {
    const runner = fakeRunner((argv) => {
      if (argv[0] === 'losetup' && argv.includes('--direct-io=on')) return { code: 1 };
      if (argv[0] === 'losetup' && argv.includes('--find')) return { stdout: '/dev/loop8\n' };
      return undefined;
    });
    await mountLayerImage(runner, path.join(dir, 'y.img'), path.join(dir, 'mnt-buffered'));
    assert.ok(runner.commands().includes(`losetup --find --show -- ${path.join(dir, 'y.img')}`));
  });

  test('mount refuses an image a loop device backs already on this member, and attaches nothing', async () => {
    const runner = fakeRunner((argv) =>
      argv[0] === 'losetup' && argv.includes('--associated') ? { stdout: '/dev/loop3\n' } : undefined,
    );
    await assert.rejects(
      mountLayerImage(runner, path.join(dir, 'z.img'), path.join(dir, 'mnt-busy')),
      /in use on this member already \(\/dev\/loop3\)/,
    );
    assert.ok(!runner.commands().some((c) => c.includes('--find') || c.startsWith('mount')));
  });

  test('a failed mount detaches the loop device and says what to check', async () => {
    const runner = fakeRunner((argv) => {
      if (argv[0] === 'losetup' && argv.includes('--find')) return { stdout: '/dev/loop9\n' };
      if (argv[0] === 'mount') return { code: 32, stderr: 'mount: wrong fs type\n' };
      return undefined;
    });
    await assert.rejects(
      mountLayerImage(runner, path.join(dir, 'w.img'), path.join(dir, 'mnt-bad')),
      /Cannot mount the layer image .*wrong fs type.*e2fsck -f/,
    );
    assert.equal(runner.commands().at(-1), 'losetup --detach /dev/loop9');
  });

  test('withCtLayer runs the work alone for a guest without an image', async () => {
    const runner = fakeRunner();
    const g = path.join(dir, 'no-image');
    await mkdir(path.join(g, 'guests', 'g'), { recursive: true });
    assert.equal(await withCtLayer(runner, ctLayerOf(g, 'g'), async () => 42), 42);
    assert.deepEqual(runner.commands(), []);
  });

  test('a stopped guest with a layer image is snapshotted as a copy of the image and restored by putting the copy back', async () => {
    const state = path.join(dir, 'snap-state');
    const g = path.join(state, 'guests', 'sg');
    await mkdir(g, { recursive: true });
    await writeFile(path.join(g, 'layer.img'), 'now');
    // cp as cp does it, so that the snapshot and the restore have files to rename.
    const runner = fakeRunner((argv) =>
      argv[0] === 'cp' ? { effect: () => copyFile(argv.at(-2) ?? '', argv.at(-1) ?? '') } : undefined,
    );
    const storage = createCtStorage({
      runner,
      log: createLogger({ level: 'silent' }),
      stateDir: state,
      idmapBase: 1_000_000,
    });
    const sg = { ...spec(), name: 'sg' };
    await storage.snapshot(sg, 's0');
    const snap = path.join(g, 'snapshots/s0/layer.img');
    assert.deepEqual(runner.commands(), [
      `cp --sparse=always --reflink=auto -- ${path.join(g, 'layer.img')} ${path.join(g, 'snapshots/.tmp-s0/layer.img')}`,
    ]);
    assert.equal(await readFile(snap, 'utf8'), 'now');
    assert.deepEqual(await storage.listSnapshots(sg), ['s0']);
    await writeFile(path.join(g, 'layer.img'), 'later');
    await storage.restoreSnapshot(sg, 's0');
    assert.equal(await readFile(path.join(g, 'layer.img'), 'utf8'), 'now');
    assert.ok(!existsSync(path.join(g, '.tmp-layer.img')));
    // Stopped: nothing was mounted, frozen or unmounted.
    assert.ok(!runner.commands().some((c) => /^(mount|umount|fsfreeze|losetup)/.test(c)));
  });
});
