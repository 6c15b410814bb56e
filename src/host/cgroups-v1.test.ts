import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  cgroupDirs,
  readCgroupUsage,
  readFreezerState,
  readFreezerStateSync,
  removeCgroup,
  sharedMemoryCgroup,
  writeFreezerState,
} from './cgroups-v1.ts';

test('readCgroupUsage reads memory, cpu and pids files of a v1 cgroup', async () => {
  const root = await mkdtemp(join(tmpdir(), 'cg-'));
  try {
    const path = '/trivisor-x/g1';
    const put = async (ctrl: string, file: string, value: string) => {
      await mkdir(join(root, ctrl, path), { recursive: true });
      await writeFile(join(root, ctrl, path, file), `${value}\n`);
    };
    await put('memory', 'memory.usage_in_bytes', '1048576');
    await put('memory', 'memory.limit_in_bytes', '67108864');
    await put('cpuacct', 'cpuacct.usage', '2500000000');
    await put('pids', 'pids.current', '3');
    await put('freezer', 'freezer.state', 'FROZEN');
    assert.deepEqual(await readCgroupUsage(path, root), {
      memoryBytes: 1_048_576,
      memoryLimitBytes: 67_108_864,
      cpuSeconds: 2.5,
      processes: 3,
    });
    assert.equal(await readFreezerState(path, root), 'FROZEN');
    await put('memory', 'memory.limit_in_bytes', '9223372036854771712');
    assert.equal((await readCgroupUsage(path, root)).memoryLimitBytes, undefined, 'unlimited is no limit');
    assert.deepEqual(await readCgroupUsage('/nope', root), { memoryBytes: 0, cpuSeconds: 0, processes: 0 });
    assert.equal(await readFreezerState('/nope', root), undefined);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('removeCgroup removes the cgroup where it is, skips hierarchies without it and returns the busy ones', async () => {
  const root = await mkdtemp(join(tmpdir(), 'cg-'));
  try {
    const path = '/trivisor-x/g1';
    await mkdir(join(root, 'pids', path), { recursive: true });
    await mkdir(join(root, 'memory', path), { recursive: true });
    await mkdir(join(root, 'freezer', 'trivisor-x'), { recursive: true });
    // A directory that is not empty stands in for a cgroup that still holds a child cgroup.
    await mkdir(join(root, 'memory', path, 'child'));
    assert.deepEqual(await removeCgroup(path, root), [join(root, 'memory', path)]);
    assert.deepEqual(await cgroupDirs(path, root), [join(root, 'memory', path)]);
    await rm(join(root, 'memory', path, 'child'), { recursive: true });
    assert.deepEqual(await removeCgroup(path, root), []);
    assert.deepEqual(await cgroupDirs(path, root), []);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('a guest without a memory cgroup of its own reports the resident memory of its processes', async () => {
  const root = await mkdtemp(join(tmpdir(), 'cg-'));
  try {
    const path = '/trivisor-x/g1';
    await mkdir(join(root, 'pids', path), { recursive: true });
    // This test's own process stands in for the guest's init; a pid gone meanwhile counts nothing.
    await writeFile(join(root, 'pids', path, 'cgroup.procs'), `${process.pid}\n999999999\n`);
    await writeFile(join(root, 'pids', path, 'pids.current'), '1\n');
    const rss = () => Number(readFileSync('/proc/self/statm', 'utf8').split(' ')[1]) * 4096;
    const low = rss();
    const usage = await readCgroupUsage(path, root);
    const high = rss();
    assert.ok(
      usage.memoryBytes >= Math.min(low, high) * 0.9 && usage.memoryBytes <= Math.max(low, high) * 1.1,
      `${usage.memoryBytes} is not this process's RSS (${low}..${high})`,
    );
    assert.equal(usage.memoryLimitBytes, undefined);
    assert.equal(usage.processes, 1);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('the shared memory cgroup sits in the memory hierarchy, and there is none without one', async () => {
  const root = await mkdtemp(join(tmpdir(), 'cg-'));
  try {
    assert.equal(await sharedMemoryCgroup('/trivisor-x', root), undefined);
    await mkdir(join(root, 'memory'));
    await writeFile(join(root, 'memory', 'memory.usage_in_bytes'), '0\n');
    assert.deepEqual(await sharedMemoryCgroup('/trivisor-x', root), {
      mount: join(root, 'memory'),
      dir: join(root, 'memory', 'trivisor-x'),
    });
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('writeFreezerState freezes and thaws the cgroup in the freezer hierarchy; a missing cgroup is ENOENT', async () => {
  const root = await mkdtemp(join(tmpdir(), 'cg-'));
  try {
    const path = '/trivisor-x/g1';
    await mkdir(join(root, 'freezer', path), { recursive: true });
    await writeFile(join(root, 'freezer', path, 'freezer.state'), 'THAWED\n');
    await writeFreezerState(path, 'FROZEN', root);
    assert.equal(await readFreezerState(path, root), 'FROZEN');
    assert.equal(readFreezerStateSync(path, root), 'FROZEN', 'the synchronous read agrees');
    await writeFreezerState(path, 'THAWED', root);
    assert.equal(await readFreezerState(path, root), 'THAWED');
    await assert.rejects(writeFreezerState('/trivisor-x/g2', 'FROZEN', root), { code: 'ENOENT' });
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
