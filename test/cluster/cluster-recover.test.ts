import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parseShippedName } from '../../src/storage/shipped-backups.ts';
import { describeThing, makeRunDir, removeRunDir } from '../leftovers.ts';
import { eventually } from '../system/harness.ts';
import { formCluster, makeTestCluster, type TestCluster, waitForStatus } from './cluster-harness.ts';
import { killMember } from './ha-scenarios.ts';

/*
 * Issue 13 part 5 (decisions 0046 and 0062): a member's guests of all three models, backed up on
 * schedule into the backup directory every member shares (an NFS mount in production, a directory
 * of the machine here), a full backup then incrementals after it, come back on the surviving
 * members from their latest chain (the full and each incremental in order) after the member is
 * destroyed: its daemon and every process of its guests killed.
 */

let cluster: TestCluster;
let backupDir: string;

before(async () => {
  backupDir = await makeRunDir('shipped');
  cluster = await makeTestCluster(['m1', 'm2', 'm3'], { env: { TRIVISOR_BACKUP_DIR: backupDir } });
});

after(async () => {
  if (cluster) await cluster.destroy();
  if (backupDir) {
    const report = await removeRunDir(backupDir);
    assert.deepEqual(report.left.map(describeThing), []);
  }
});

const guests = [
  ['rc-ct', []],
  ['rc-pvm', ['--model', 'pvm', '-c', 'limits.memory=64MiB']],
  ['rc-vm', ['--model', 'vm', '-c', 'limits.memory=128MiB']],
] as const;

describe('recovery of a lost member from its shipped backups', () => {
  // Three etcd voters: the store keeps its quorum when one member is lost.
  test('bootstrap and two joins: three Online members', async () => {
    await formCluster(cluster);
  });

  test("m3's guests of every model, backed up each minute (a full, then incrementals), run on the other members with the files of both after m3 is destroyed; asked again, nothing moves; bad input is one line", async (t) => {
    const [m1, m2, m3] = cluster.hosts;
    assert.ok(m1 && m2 && m3);
    for (const [name, args] of guests) {
      m1.daemon.ok(['launch', 'busybox', name, '--target', 'm3', ...args]);
      m1.daemon.ok(['exec', name, '--', 'sh', '-c', `echo ${name} kept > /root/kept`]);
    }
    // Only then is the schedule set: every backup shipped has the file.
    for (const [name] of guests) m1.daemon.ok(['config', 'set', name, 'backups.schedule=* * * * *']);
    const shippedOf = (name: string) => {
      try {
        return readdirSync(path.join(backupDir, name)).filter((f) => parseShippedName(f) !== undefined);
      } catch {
        return [];
      }
    };
    await eventually(
      'a full backup of each guest shipped',
      () => guests.every(([name]) => shippedOf(name).some((f) => parseShippedName(f)?.link?.kind === 'full')),
      180_000,
    );
    // Written after the full backup: only an incremental can bring it back.
    for (const [name] of guests) {
      m1.daemon.ok(['exec', name, '--', 'sh', '-c', `echo ${name} later > /root/later && sync`]);
    }
    const writtenAt = Date.now();
    const incrementalAfterWrite = (name: string) =>
      shippedOf(name).some((f) => {
        const p = parseShippedName(f);
        return p?.link?.kind === 'incremental' && p.takenAt.getTime() > writtenAt;
      });
    await eventually(
      'an incremental of each guest, begun after the write, shipped',
      () => guests.every(([name]) => incrementalAfterWrite(name)),
      180_000,
    );

    // The id range rc-ct's files are in on m3 (decision 18): its chain goes on where it gets the same.
    const rangeOf = (name: string) =>
      m1.daemon.ok(['exec', name, '--', 'cat', '/proc/self/uid_map']).trim().split(/\s+/)[1];
    const ctRangeOnM3 = rangeOf('rc-ct');

    // m3 is destroyed: its daemon, its etcd and every process of its guests.
    await m3.daemon.kill9();
    assert.ok(killMember(m3.daemon.stateDir) >= 3, "m3's guests' processes were found and killed");
    await waitForStatus(m2.daemon, 'm3', 'Offline');

    // What m3 shipped (nothing more is shipped until a guest is back on a member).
    const before = new Set(guests.flatMap(([name]) => shippedOf(name)));
    const newestOf = (name: string) =>
      shippedOf(name)
        .map((f) => parseShippedName(f))
        .sort((a, b) => (a?.takenAt.getTime() ?? 0) - (b?.takenAt.getTime() ?? 0))
        .at(-1)?.link;
    const newest = new Map(guests.map(([name]) => [name as string, newestOf(name)]));
    const recovered = m2.daemon.cli(['admin', 'recover', '--from-backups', backupDir], {
      timeoutMs: 600_000,
    });
    assert.equal(recovered.code, 0, `${recovered.stderr}\nm2: ${m2.daemon.stderr().slice(-3000)}`);
    const out = recovered.stdout;
    const stamp = '\\d{8}T\\d{6}Z';
    for (const [name] of guests) {
      // The chain's full first, then its incrementals in order, as many as were shipped.
      const chain = `${stamp}-full-([0-9a-f]{16})\\.tar(, ${stamp}-incr-\\1-\\d+\\.tar)+`;
      assert.match(out, new RegExp(`^Recovered ${name} on m[12] from ${chain}$`, 'm'), out);
    }
    assert.doesNotMatch(out, /^Warning:/m, out);
    type Listed = { name: string; status: string; location?: string };
    const listed = JSON.parse(m2.daemon.ok(['list', '--format', 'json'])) as Listed[];
    for (const [name] of guests) {
      const g = listed.find((l) => l.name === name);
      assert.match(g?.location ?? '', /^m[12]$/, name);
      assert.equal(g?.status, 'Running', name);
      assert.equal(m2.daemon.ok(['exec', name, '--', 'cat', '/root/kept']), `${name} kept\n`);
      assert.equal(m2.daemon.ok(['exec', name, '--', 'cat', '/root/later']), `${name} later\n`);
    }

    // The first scheduled backup on the member each guest came back to (decision 0062, amended):
    // the pvm guest's chain goes on from the state shipped beside its newest link, its next link;
    // so does the vm guest's (the recovery's import left its disk an empty bitmap named for the
    // last link applied), and the ct guest's (its layer's manifest) when its files are in the same
    // id range as on m3, else a full one (every file changed owner).
    const ctSameRange = rangeOf('rc-ct') === ctRangeOnM3;
    t.diagnostic(`rc-ct's id range: ${ctRangeOnM3} on m3, ${ctSameRange ? 'the same' : 'another'} now`);
    const firstNew = (name: string) => shippedOf(name).find((f) => !before.has(f));
    await eventually(
      'a scheduled backup of each guest shipped by its new member',
      () => guests.every(([name]) => firstNew(name) !== undefined),
      150_000,
    );
    for (const [name] of guests) {
      const made = parseShippedName(firstNew(name) ?? '')?.link;
      const last = newest.get(name);
      t.diagnostic(
        `${name}: first backup on its new member ${firstNew(name)}, after ${JSON.stringify(last)}`,
      );
      if (name === 'rc-pvm' || name === 'rc-vm' || (name === 'rc-ct' && ctSameRange)) {
        assert.deepEqual(made, { ...last, sequence: (last?.sequence ?? -2) + 1, kind: 'incremental' }, name);
      } else assert.equal(made?.kind, 'full', name);
    }

    // Asked again: every guest is on an Online member, which has it.
    const again = m2.daemon.ok(['admin', 'recover', '--from-backups', backupDir]);
    for (const [name] of guests) {
      assert.match(again, new RegExp(`^Skipped ${name}: it is on member m[12], which has it$`, 'm'), again);
    }
    const missing = m2.daemon.cli(['admin', 'recover', '--from-backups', '/nonexistent-backups']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^Error: \/nonexistent-backups is not a directory on host m2\n$/);
    for (const [name] of guests) m2.daemon.ok(['delete', '--force', name]);
  });
});
