import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CT_CHAIN_FILE,
  commitChain,
  forgetChains,
  nextLink,
  parseChainState,
  readChain,
  snarNameOf,
  treeStamp,
} from './ct-incremental.ts';

const CHAIN = '0123456789abcdef';

test('nextLink starts a new chain without one and continues it with one', () => {
  assert.deepEqual(
    nextLink(undefined, () => CHAIN),
    { chain: CHAIN, sequence: 0, kind: 'full' },
  );
  const state = { chain: CHAIN, sequence: 4, snar: snarNameOf({ chain: CHAIN, sequence: 4 }) };
  assert.deepEqual(
    nextLink(state, () => 'unused'),
    { chain: CHAIN, sequence: 5, kind: 'incremental' },
  );
});

test('parseChainState takes only what commitChain writes: anything else means no chain', () => {
  const good = { chain: CHAIN, sequence: 2, snar: `backup-chain-${CHAIN}-2.snar` };
  assert.deepEqual(parseChainState(JSON.stringify(good)), good);
  for (const bad of [
    '',
    'not json',
    JSON.stringify({ ...good, snar: '../../etc/passwd' }),
    JSON.stringify({ ...good, chain: 'XYZ' }),
    JSON.stringify({ ...good, sequence: -1 }),
    JSON.stringify({ ...good, sequence: 1.5 }),
  ]) {
    assert.equal(parseChainState(bad), undefined, bad);
  }
});

describe('chain state and tree stamps on disk', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'trivisor-ct-incremental-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('a chain counts only with its snapshot file; a commit drops the earlier ones; forget drops all', async () => {
    const g = path.join(dir, 'g');
    await mkdir(g);
    const first = { chain: CHAIN, sequence: 0, snar: snarNameOf({ chain: CHAIN, sequence: 0 }) };
    await writeFile(path.join(g, CT_CHAIN_FILE), JSON.stringify(first));
    assert.equal(await readChain(g), undefined, 'no snapshot file: no chain');
    await writeFile(path.join(g, first.snar), 'snar 0');
    assert.deepEqual(await readChain(g), first);
    const second = { chain: CHAIN, sequence: 1, snar: snarNameOf({ chain: CHAIN, sequence: 1 }) };
    await writeFile(path.join(g, second.snar), 'snar 1');
    await commitChain(g, second);
    assert.deepEqual(await readChain(g), second);
    assert.deepEqual((await readdir(g)).sort(), [CT_CHAIN_FILE, second.snar].sort());
    await forgetChains(g);
    assert.equal(await readChain(g), undefined);
    assert.deepEqual(await readdir(g), []);
  });

  test('the tree stamp changes with a write, a new file, a deletion, a rename and a chmod, and not by itself', async () => {
    const t = path.join(dir, 't');
    await mkdir(path.join(t, 'd'), { recursive: true });
    await writeFile(path.join(t, 'd/f'), 'one');
    const stamps = [await treeStamp(t)];
    assert.equal(await treeStamp(t), stamps[0], 'reading changes nothing');
    const changes: Array<() => Promise<unknown>> = [
      () => writeFile(path.join(t, 'd/f'), 'two'),
      () => writeFile(path.join(t, 'd/g'), 'new'),
      () => rm(path.join(t, 'd/g')),
      () => rename(path.join(t, 'd/f'), path.join(t, 'd/h')),
      () => chmod(path.join(t, 'd/h'), 0o600),
    ];
    for (const change of changes) {
      // Kernels without fine-grained timestamps give changes within one tick (4 ms at 250 Hz) one ctime.
      await sleep(20);
      await change();
      const now = await treeStamp(t);
      assert.ok(!stamps.includes(now), `${change} changed the stamp`);
      stamps.push(now);
    }
  });
});
