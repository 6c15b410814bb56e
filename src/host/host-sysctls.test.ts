import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PORTS_PER_BRIDGE } from '../network/leaf-bridges.ts';
import { DENSITY_SYSCTLS, raiseSysctls, type SysctlFs, sysctlPath } from './host-sysctls.ts';

/** A /proc/sys of a few files; writes go to the map, or fail for the paths in `readOnly`. */
function fakeFs(
  files: Record<string, string>,
  readOnly: string[] = [],
): SysctlFs & { files: Record<string, string> } {
  return {
    files,
    async read(p) {
      const text = files[p];
      if (text === undefined) throw new Error(`ENOENT: ${p}`);
      return text;
    },
    async write(p, text) {
      if (readOnly.includes(p)) throw new Error(`EROFS: ${p}`);
      files[p] = text;
    },
  };
}

test('raiseSysctls() raises a setting below its floor and reports what it found and set', async () => {
  const fs = fakeFs({ '/proc/sys/kernel/pid_max': '32768\n' });
  const [r] = await raiseSysctls([{ key: 'kernel.pid_max', atLeast: 4_194_304, reason: 'pids' }], { fs });
  assert.equal(fs.files['/proc/sys/kernel/pid_max'], '4194304\n');
  assert.deepEqual(r, {
    key: 'kernel.pid_max',
    atLeast: 4_194_304,
    reason: 'pids',
    before: 32768,
    value: 4_194_304,
    changed: true,
  });
});

test('raiseSysctls() never lowers a setting an administrator set higher', async () => {
  const fs = fakeFs({ '/proc/sys/kernel/pid_max': '4194304\n' });
  const [r] = await raiseSysctls([{ key: 'kernel.pid_max', atLeast: 100_000, reason: 'pids' }], { fs });
  assert.equal(fs.files['/proc/sys/kernel/pid_max'], '4194304\n');
  assert.equal(r?.changed, false);
  assert.equal(r?.value, 4_194_304);
});

test('raiseSysctls() reports a setting it cannot read or write, and goes on with the others', async () => {
  const fs = fakeFs({ '/proc/sys/kernel/pid_max': '32768\n', '/proc/sys/kernel/threads-max': '1000\n' }, [
    '/proc/sys/kernel/pid_max',
  ]);
  const reports = await raiseSysctls(
    [
      { key: 'kernel.no_such', atLeast: 1, reason: 'x' },
      { key: 'kernel.pid_max', atLeast: 4_194_304, reason: 'pids' },
      { key: 'kernel.threads-max', atLeast: 2000, reason: 'threads' },
    ],
    { fs },
  );
  assert.match(reports[0]?.error ?? '', /ENOENT/);
  assert.equal(reports[0]?.before, null);
  assert.match(reports[1]?.error ?? '', /EROFS/);
  assert.deepEqual([reports[1]?.before, reports[1]?.value, reports[1]?.changed], [32768, 32768, false]);
  assert.equal(reports[2]?.changed, true);
  assert.equal(fs.files['/proc/sys/kernel/threads-max'], '2000\n');
});

test('sysctlPath() maps dotted names under /proc/sys and refuses anything else', () => {
  assert.equal(sysctlPath('fs.inotify.max_user_instances'), '/proc/sys/fs/inotify/max_user_instances');
  assert.throws(() => sysctlPath('../../etc/passwd'));
  assert.throws(() => sysctlPath('kernel/pid_max'));
});

test('every density setting names its reason and its decision', () => {
  for (const s of DENSITY_SYSCTLS) {
    assert.match(s.reason, /decision 00(5[789]|68)/, s.key);
    assert.ok(s.atLeast > 0, s.key);
    sysctlPath(s.key);
  }
});

test('the per-CPU receive queue holds many floods of a full bridge at once (decision 0068)', () => {
  // A broadcast flooded to a bridge's ports is queued as one copy per port on the CPU that
  // floods it, before any is delivered; a batch of broadcasts handled in one softirq pass
  // queues a flood each. The floor holds sixteen floods of a full bridge and its uplinks.
  const backlog = DENSITY_SYSCTLS.find((s) => s.key === 'net.core.netdev_max_backlog');
  assert.ok(backlog, 'net.core.netdev_max_backlog is raised');
  assert.ok(backlog.atLeast >= 16 * (PORTS_PER_BRIDGE + 1), `${backlog.atLeast} holds 16 floods`);
});
