import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { createKsmControl, KSM_PAGES_TO_SCAN, KSM_SLEEP_MILLISECS } from './ksm.ts';
import { silentLogger } from './logger.ts';

/** A fake /sys/kernel/mm/ksm: plain files holding what the kernel's hold. */
async function fakeKsm(values: Record<string, number> = {}) {
  const root = await mkdtemp(join(tmpdir(), 'trivisor-ksm-'));
  const sysfs = join(root, 'ksm');
  await mkdir(sysfs);
  const all = {
    run: 0,
    pages_to_scan: 100,
    sleep_millisecs: 20,
    pages_shared: 0,
    pages_sharing: 0,
    ...values,
  };
  for (const [name, value] of Object.entries(all)) await writeFile(join(sysfs, name), `${value}\n`);
  const read = async (name: string) => Number((await readFile(join(sysfs, name), 'utf8')).trim());
  const stateFile = join(root, 'ksm.json');
  return {
    sysfs,
    stateFile,
    read,
    set: (name: string, value: number) => writeFile(join(sysfs, name), `${value}\n`),
    control: () => createKsmControl({ sysfsDir: sysfs, stateFile, log: silentLogger() }),
    [Symbol.asyncDispose]: () => rm(root, { recursive: true, force: true }),
  };
}

const exists = (path: string) =>
  stat(path).then(
    () => true,
    () => false,
  );

test('update() starts KSM at its scan rate while vm guests run and puts everything back when none do', async () => {
  await using k = await fakeKsm();
  const ksm = k.control();
  await ksm.update(2);
  assert.equal(await k.read('run'), 1);
  assert.equal(await k.read('pages_to_scan'), KSM_PAGES_TO_SCAN);
  assert.equal(await k.read('sleep_millisecs'), KSM_SLEEP_MILLISECS);
  assert.equal((await ksm.status()).enabledByTrivisor, true);
  await ksm.update(1);
  assert.equal(await k.read('run'), 1);
  await ksm.update(0);
  assert.equal(await k.read('run'), 0);
  assert.equal(await k.read('pages_to_scan'), 100);
  assert.equal(await k.read('sleep_millisecs'), 20);
  assert.equal(await exists(k.stateFile), false);
  assert.equal((await ksm.status()).enabledByTrivisor, false);
});

test('update() leaves a KSM the administrator runs as it is, guests or not', async () => {
  await using k = await fakeKsm({ run: 1, pages_to_scan: 3000, sleep_millisecs: 10 });
  const ksm = k.control();
  await ksm.update(3);
  await ksm.update(0);
  assert.deepEqual(
    [await k.read('run'), await k.read('pages_to_scan'), await k.read('sleep_millisecs')],
    [1, 3000, 10],
  );
  assert.equal((await ksm.status()).enabledByTrivisor, false);
});

test('a restarted daemon still puts back the KSM its predecessor started', async () => {
  await using k = await fakeKsm();
  await k.control().update(1);
  assert.equal(await k.read('run'), 1);
  // The next daemon finds no vm guest (they were stopped while none ran).
  await k.control().update(0);
  assert.equal(await k.read('run'), 0);
  assert.equal(await k.read('pages_to_scan'), 100);
});

test('update() starts KSM again when someone stopped it while vm guests still run', async () => {
  await using k = await fakeKsm();
  const ksm = k.control();
  await ksm.update(1);
  await k.set('run', 0);
  await ksm.update(1);
  assert.equal(await k.read('run'), 1);
  // What it found the first time is what goes back.
  await ksm.update(0);
  assert.equal(await k.read('run'), 0);
});

test('a KSM stopped and unmerged by someone else since stays so when the last guest stops', async () => {
  await using k = await fakeKsm();
  const ksm = k.control();
  await ksm.update(1);
  await k.set('run', 2);
  await ksm.update(0);
  assert.equal(await k.read('run'), 2);
  assert.equal(await k.read('pages_to_scan'), 100);
});

test('status() reports the saving, and a kernel without KSM as unavailable without failing', async () => {
  await using k = await fakeKsm({ run: 1, pages_shared: 10, pages_sharing: 256 });
  const status = await k.control().status();
  assert.equal(status.available, true);
  assert.equal(status.pagesSharing, 256);
  assert.equal(status.savedBytes, 1024 * 1024);
  const none = createKsmControl({
    sysfsDir: join(k.sysfs, 'missing'),
    stateFile: k.stateFile,
    log: silentLogger(),
  });
  await none.update(4);
  assert.equal((await none.status()).available, false);
  assert.equal(await exists(k.stateFile), false);
});

test('update() logs and swallows a sysfs it cannot write (KSM only saves memory)', async () => {
  await using k = await fakeKsm();
  await rm(join(k.sysfs, 'pages_to_scan'));
  const ksm = k.control();
  await ksm.update(1);
  assert.equal(await k.read('run'), 0);
});
