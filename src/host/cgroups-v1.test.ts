import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { cgroupDirs, readCgroupUsage, readFreezerState, removeCgroup } from './cgroups-v1.ts';

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
