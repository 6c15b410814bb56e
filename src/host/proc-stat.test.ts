import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import {
  isSameProcess,
  isSameProcessSync,
  parseProcStat,
  readProcessIdentity,
  readProcessTree,
} from './proc-stat.ts';

const line = (comm: string, state = 'S', start = 4242) =>
  `123 (${comm}) ${state} 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 ${start} 1000 200 18446744073709551615\n`;

describe('parseProcStat', () => {
  test('reads pid, state, ppid, process group, session and start time (field 22)', () => {
    assert.deepEqual(parseProcStat(line('init')), {
      pid: 123,
      comm: 'init',
      state: 'S',
      ppid: 1,
      pgrp: 123,
      session: 123,
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
    assert.equal(isSameProcessSync(me), true, 'the synchronous read agrees');
    assert.equal(isSameProcessSync({ pid: me.pid, startTime: me.startTime + 1 }), false);
  });

  test('isSameProcessSync: a zombie, a missing pid and a bad pid are not the process', async () => {
    const root = await mkdtemp(join(tmpdir(), 'proc-'));
    try {
      await mkdir(join(root, '77'));
      await writeFile(join(root, '77', 'stat'), line('zombie', 'Z').replace('123', '77'));
      await mkdir(join(root, '79'));
      await writeFile(join(root, '79', 'stat'), line('init').replace('123', '79'));
      assert.equal(isSameProcessSync({ pid: 77, startTime: 4242 }, root), false);
      assert.equal(isSameProcessSync({ pid: 78, startTime: 4242 }, root), false);
      assert.equal(isSameProcessSync({ pid: 79, startTime: 4242 }, root), true);
      assert.equal(isSameProcessSync({ pid: 0, startTime: 4242 }, root), false);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
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

describe('readProcessTree', () => {
  // pid ppid pgrp session state
  const procs: Array<[number, number, number, number, string]> = [
    [1, 0, 1, 1, 'S'],
    [10, 1, 10, 10, 'S'], // the daemon
    [20, 10, 10, 10, 'S'], // the command, not a group leader: its group and session are the daemon's
    [21, 20, 21, 21, 'S'], // its child that made its own session: still a descendant
    [22, 21, 21, 21, 'S'],
    [23, 20, 10, 10, 'Z'], // a zombie child: nothing to kill
    [30, 1, 30, 30, 'S'], // a session leader
    [31, 1, 30, 30, 'S'], // reparented to init, still in 30's session
    [32, 1, 32, 30, 'S'], // its own group in 30's session
    [33, 32, 32, 30, 'S'],
  ];
  const withProc = async (fn: (root: string) => Promise<void>) => {
    const root = await mkdtemp(join(tmpdir(), 'proc-'));
    try {
      for (const [pid, ppid, pgrp, session, state] of procs) {
        await mkdir(join(root, String(pid)));
        await writeFile(
          join(root, String(pid), 'stat'),
          `${pid} (p) ${state} ${ppid} ${pgrp} ${session} 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 99 1000 200 1\n`,
        );
      }
      await fn(root);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  };

  test('takes the descendants, not the group and session it does not lead', () =>
    withProc(async (root) => {
      assert.deepEqual(
        (await readProcessTree(20, root)).sort((a, b) => a - b),
        [20, 21, 22],
      );
    }));

  test('takes the whole session of a session leader, reparented processes too', () =>
    withProc(async (root) => {
      assert.deepEqual(
        (await readProcessTree(30, root)).sort((a, b) => a - b),
        [30, 31, 32, 33],
      );
    }));

  test('a process that is gone has no tree', () =>
    withProc(async (root) => {
      assert.deepEqual(await readProcessTree(40, root), []);
    }));
});
