import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { isSameProcess, parseProcStat, readProcessIdentity } from './proc-stat.ts';

const line = (comm: string, state = 'S', start = 4242) =>
  `123 (${comm}) ${state} 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 ${start} 1000 200 18446744073709551615\n`;

describe('parseProcStat', () => {
  test('reads pid, state, ppid and start time (field 22)', () => {
    assert.deepEqual(parseProcStat(line('init')), {
      pid: 123,
      comm: 'init',
      state: 'S',
      ppid: 1,
      startTime: 4242,
    });
  });

  test('keeps a comm that contains spaces and parentheses', () => {
    const stat = parseProcStat(line('a) b (c) d'));
    assert.equal(stat.comm, 'a) b (c) d');
    assert.equal(stat.startTime, 4242);
    assert.equal(stat.ppid, 1);
  });

  test('rejects a malformed line', () => {
    assert.throws(() => parseProcStat('garbage'));
  });
});

describe('process identity', () => {
  test('this process is the same process as itself, and not one with another start time', async () => {
    const me = await readProcessIdentity(process.pid);
    assert.ok(me);
    assert.equal(await isSameProcess(me), true);
    assert.equal(await isSameProcess({ pid: me.pid, startTime: me.startTime + 1 }), false);
  });

  test('a missing pid or a zombie has no identity', async () => {
    const root = await mkdtemp(join(tmpdir(), 'proc-'));
    try {
      await mkdir(join(root, '77'));
      await writeFile(join(root, '77', 'stat'), line('zombie', 'Z').replace('123', '77'));
      assert.equal(await readProcessIdentity(77, root), undefined);
      assert.equal(await readProcessIdentity(78, root), undefined);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
