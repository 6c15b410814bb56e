import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, eventually } from '../system/harness.ts';
import { formCluster, makeTestCluster, type TestCluster } from './cluster-harness.ts';

/*
 * Shared storage pools (decision 0049) on two members: one directory both see, proved by its
 * marker; a guest of each model on it moves cold from m1 to m2 without a byte copied (its files
 * keep their inodes) and runs there with its own file; m1's start-up sweep drops only its
 * stale link; ha.enabled=true is taken for them and refused in one line for a guest on the
 * default pool; delete leaves only what was not the pool's.
 */

interface Listed {
  name: string;
  status: string;
  location?: string;
}
const listed = (d: Daemon, name: string) =>
  (JSON.parse(d.ok(['list', '--format', 'json'])) as Listed[]).find((g) => g.name === name);

/** One `Error:` line and exit code 1. */
function refused(r: { code: number; stdout: string; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /^Error: [^\n]+\n$/, r.stderr);
  assert.match(r.stderr, pattern);
}

let cluster: TestCluster;
let runDir: string;
let nfs: string;
/** The backup chain the vm guest's full export on m2 began (the live move's case). */
let fullChain: string | undefined;

before(async () => {
  cluster = await makeTestCluster(['m1', 'm2']);
  // Guests' user namespaces and QEMU's uid walk through it: searchable, as a state dir is.
  runDir = await makeRunDir('shared-pool', { mode: 0o711 });
  nfs = path.join(runDir, 'nfs');
  await mkdir(nfs, { mode: 0o711 });
});

after(async () => {
  if (cluster) await cluster.destroy();
  if (runDir) {
    const report = await removeRunDir(runDir);
    assert.deepEqual(report.left, [], 'the shared directory leaves nothing behind');
  }
});

const models = [
  ['ct', []],
  ['pvm', ['-c', 'limits.memory=64MiB']],
  ['vm', ['-c', 'limits.memory=128MiB']],
] as const;
/** The file each model's guest keeps its own data in: the one a copy would make anew. */
const dataFile = { ct: 'upper/root/mine', pvm: 'disk/root.cow', vm: 'root.qcow2' } as const;

describe('a shared storage pool on two members', () => {
  test('bootstrap and join: two Online members', async () => {
    await formCluster(cluster);
  });

  test('made through m1 over one directory: its marker there, Created on both members; bad asks are one line', () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    refused(m1.daemon.cli(['storage', 'create', 'bad', 'dir', 'shared=true']), /shared=true needs source=/);
    refused(
      m1.daemon.cli(['storage', 'create', 'bad', 'btrfs', `source=${nfs}`, 'shared=true']),
      /shared=true needs the dir driver/,
    );
    m1.daemon.ok(['storage', 'create', 'nfs', 'dir', `source=${nfs}`, 'shared=true']);
    const info = JSON.parse(m2.daemon.ok(['storage', 'info', 'nfs', '--format', 'json'])) as {
      shared?: boolean;
      marker?: string;
      status: string;
      path: string;
      members?: Array<{ name: string; status: string }>;
    };
    assert.equal(info.shared, true);
    assert.equal(info.path, nfs);
    assert.equal(info.status, 'Created', JSON.stringify(info));
    assert.deepEqual(
      info.members?.map((m) => `${m.name}:${m.status}`),
      ['m1:Created', 'm2:Created'],
    );
    assert.equal(readFileSync(path.join(nfs, '.trivisor-shared-pool'), 'utf8').trim(), info.marker);
    assert.match(m1.daemon.ok(['storage', 'list']), /\bnfs\s+dir\s+yes\s+Created\b/);
    refused(
      m2.daemon.cli(['storage', 'create', 'nfs2', 'dir', `source=${nfs}`, 'shared=true']),
      /has source/,
    );
  });

  test("a guest of each model made on it on m1 moves cold to m2 with no copy, and runs there with its own file; the ct and pvm guests' backup chains go on there", (t) => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const inodes = new Map<string, number>();
    /** The chain each ct and pvm guest's full export on m1 began. */
    const chains = new Map<string, string>();
    const rangeOf = (d: Daemon, name: string) =>
      d.ok(['exec', name, '--', 'cat', '/proc/self/uid_map']).trim().split(/\s+/)[1];
    /** The ct guest's id range on m1, from its uid_map. */
    let ctRangeOnM1: string | undefined;
    for (const [model, args] of models) {
      const name = `sh-${model}`;
      m1.daemon.ok([
        'launch',
        'busybox',
        name,
        '--model',
        model,
        '--target',
        'm1',
        '--storage',
        'nfs',
        ...args,
      ]);
      m1.daemon.ok(['exec', name, '--', 'sh', '-c', `echo ${name} was here > /root/mine; sync`]);
      if (model === 'ct') ctRangeOnM1 = rangeOf(m1.daemon, name);
      m1.daemon.ok(['stop', name]);
      if (model !== 'vm') {
        // The first link of its backup chain, made on m1 (the vm's chain is the live move's case).
        const full = m1.daemon.ok(['export', name, path.join(runDir, `${name}-full.tar`), '--incremental'], {
          timeoutMs: 300_000,
        });
        const chain = /^Full backup: starts chain ([0-9a-f]{16})\n$/.exec(full)?.[1];
        assert.ok(chain, full);
        chains.set(name, chain);
      }
      // Its directory is the pool's; m1 holds a link to it.
      assert.equal(lstatSync(path.join(m1.daemon.stateDir, 'guests', name)).isSymbolicLink(), true);
      inodes.set(name, statSync(path.join(nfs, 'guests', name, dataFile[model])).ino);
    }
    // vm and pvm disks name the pool's copy of the image's base disk, the same file on every member.
    const bases = readdirSync(path.join(nfs, 'bases')).filter((f) => /^[0-9a-f]{64}-/.test(f));
    assert.ok(bases.length >= 1, bases.join(' '));

    // A pvm guest of m2's own has the host uid m1 gave sh-pvm (each member hands out the lowest
    // free one): m2 gives the adopted guest another, and its disk follows.
    m2.daemon.ok([
      'launch',
      'busybox',
      'local-pvm',
      '--model',
      'pvm',
      '--target',
      'm2',
      '-c',
      'limits.memory=64MiB',
    ]);
    const uidOf = (dir: string) => readFileSync(path.join(dir, 'uid'), 'utf8').trim();
    const pvmUid = uidOf(path.join(nfs, 'guests', 'sh-pvm'));
    assert.equal(uidOf(path.join(m2.daemon.stateDir, 'guests', 'local-pvm')), pvmUid);
    for (const [model] of models) {
      const name = `sh-${model}`;
      const moved = m2.daemon.cli(['move', name, '--target', 'm2'], { timeoutMs: 300_000 });
      assert.equal(
        moved.code,
        0,
        `${moved.stderr}\nm1: ${m1.daemon.stderr().slice(-3000)}\nm2: ${m2.daemon.stderr().slice(-3000)}`,
      );
      assert.equal(listed(m1.daemon, name)?.location, 'm2');
      assert.equal(
        statSync(path.join(nfs, 'guests', name, dataFile[model])).ino,
        inodes.get(name),
        `${name}'s data stayed where it was: not copied`,
      );
      assert.equal(existsSync(path.join(m1.daemon.stateDir, 'guests', name)), false, "m1's link went");
      assert.equal(lstatSync(path.join(m2.daemon.stateDir, 'guests', name)).isSymbolicLink(), true);
      const started = m2.daemon.cli(['start', name], { timeoutMs: 180_000 });
      assert.equal(started.code, 0, `${started.stderr}\nm2: ${m2.daemon.stderr().slice(-3000)}`);
      assert.equal(listed(m2.daemon, name)?.status, 'Running');
      assert.equal(m1.daemon.ok(['exec', name, '--', 'cat', '/root/mine']), `${name} was here\n`);
      const chain = chains.get(name);
      if (chain) {
        // Its chain state is in its directory on the pool: the next export on m2 goes on with it.
        // A ct guest whose files were given another id range on m2 changed every file: a new chain.
        m2.daemon.ok(['exec', name, '--', 'sh', '-c', `echo ${name} later > /root/later; sync`]);
        const next = m2.daemon.ok(['export', name, path.join(runDir, `${name}-next.tar`), '--incremental'], {
          timeoutMs: 300_000,
        });
        const sameRange = model !== 'ct' || rangeOf(m2.daemon, name) === ctRangeOnM1;
        t.diagnostic(`${name}: id range the same on m2: ${sameRange}; its export there: ${next.trim()}`);
        if (sameRange) assert.equal(next, `Incremental backup 1 of chain ${chain}\n`, name);
        else assert.match(next, /^Full backup: starts chain [0-9a-f]{16}\n$/, name);
        for (const f of [`${name}-full.tar`, `${name}-next.tar`]) rmSync(path.join(runDir, f));
      }
    }
    const movedUid = uidOf(path.join(nfs, 'guests', 'sh-pvm'));
    assert.notEqual(movedUid, pvmUid, 'sh-pvm got a uid of its own on m2');
    assert.equal(String(statSync(path.join(nfs, 'guests', 'sh-pvm', 'disk', 'root.cow')).uid), movedUid);
    m2.daemon.ok(['delete', '--force', 'local-pvm']);
  });

  test('the vm moves live from m2 to m1 with only its RAM sent: its counter goes on in the same boot, its disk is the same file, and each member had a QEMU of its own (decision 0061)', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const name = 'sh-vm';
    const disk = path.join(nfs, 'guests', name, dataFile.vm);
    const inode = statSync(disk).ino;
    const loop =
      'echo $$ > /tmp/counter.pid; i=0; while :; do i=$((i+1)); echo $i > /tmp/n; usleep 10000; done';
    m2.daemon.ok(['exec', name, '--', 'sh', '-c', `setsid sh -c '${loop}' </dev/null >/dev/null 2>&1 &`]);
    const read = (d: Daemon) =>
      d
        .ok(['exec', name, '--', 'sh', '-c', 'cat /proc/sys/kernel/random/boot_id /tmp/counter.pid /tmp/n'])
        .trim()
        .split('\n');
    await eventually('the counter runs', () => Number(read(m2.daemon)[2] ?? 0) > 5, 30_000);
    const [boot, pid, n] = read(m2.daemon);
    // The QEMU's own files are each member's: nothing of them in the guest's directory on the pool.
    const m2Run = path.join(m2.daemon.stateDir, 'run', 'vm', name);
    assert.ok(existsSync(path.join(m2Run, 'qmp.sock')) && existsSync(path.join(m2Run, 'boot.json')));
    for (const f of ['qmp.sock', 'boot.json', 'qemu.pid', 'agent.sock']) {
      assert.equal(existsSync(path.join(nfs, 'guests', name, f)), false, `no ${f} on the pool`);
    }

    // The first link of its backup chain, made on m2 (its QEMU then holds the link's bitmap, which
    // the move must bring along: see the case after this one).
    const full = m2.daemon.ok(['export', name, path.join(runDir, 'sh-vm-full.tar'), '--incremental'], {
      timeoutMs: 300_000,
    });
    const chain = /^Full backup: starts chain ([0-9a-f]{16})\n$/.exec(full)?.[1];
    assert.ok(chain, full);
    fullChain = chain;

    const moved = m1.daemon.cli(['move', name, '--target', 'm1', '--live'], { timeoutMs: 300_000 });
    assert.equal(
      moved.code,
      0,
      `${moved.stderr}\nm1: ${m1.daemon.stderr().slice(-3000)}\nm2: ${m2.daemon.stderr().slice(-3000)}`,
    );
    const ops = JSON.parse(m1.daemon.ok(['operation', 'list', '--format', 'json'])) as Array<{
      description: string;
      status: string;
      metadata: Record<string, unknown>;
    }>;
    const op = ops.find((o) => o.description === `Moving guest ${name} live to m1`);
    assert.ok(op, JSON.stringify(ops.map((o) => o.description)));
    assert.equal(op.status, 'Success');
    assert.equal(op.metadata.sharedDisk, true, JSON.stringify(op.metadata));
    assert.equal(op.metadata.diskMirroredBytes, 0, 'no disk mirrored: no NBD export was used');
    assert.ok((op.metadata.ramTransferredBytes as number) > 0, JSON.stringify(op.metadata));
    assert.ok(typeof op.metadata.downtimeMs === 'number', JSON.stringify(op.metadata));

    assert.equal(listed(m2.daemon, name)?.location, 'm1');
    assert.equal(listed(m2.daemon, name)?.status, 'Running');
    const [bootAfter, pidAfter, nAfter] = read(m1.daemon);
    assert.equal(bootAfter, boot, 'the same boot: no restart');
    assert.equal(pidAfter, pid, 'the same counter process');
    assert.ok(Number(nAfter) > Number(n), `the counter went on: ${n} then ${nAfter}`);
    await eventually(
      'the counter still counts on m1',
      () => Number(read(m1.daemon)[2]) > Number(nAfter),
      30_000,
    );

    assert.equal(statSync(disk).ino, inode, 'the same disk file: not copied');
    assert.equal(lstatSync(path.join(m1.daemon.stateDir, 'guests', name)).isSymbolicLink(), true);
    assert.equal(existsSync(path.join(m2.daemon.stateDir, 'guests', name)), false, "m2's link went");
    assert.equal(existsSync(m2Run), false, "m2's runtime directory went with its QEMU");
    assert.ok(existsSync(path.join(m1.daemon.stateDir, 'run', 'vm', name, 'qmp.sock')));
    const qemus = spawnSync('pgrep', ['-f', `guest=${name},`], { encoding: 'utf8' })
      .stdout.trim()
      .split('\n');
    assert.equal(qemus.filter((p) => p !== '').length, 1, "one QEMU of the guest on the machine: m1's");
  });

  test("the vm's backup chain goes on on m1 after the shared-pool live move: its next export is the chain's next link, holding only what changed", () => {
    const [m1] = cluster.hosts;
    assert.ok(m1 && fullChain);
    const name = 'sh-vm';
    const inc = path.join(runDir, 'sh-vm-inc1.tar');
    const out = m1.daemon.ok(['export', name, inc, '--incremental'], { timeoutMs: 300_000 });
    assert.equal(out, `Incremental backup 1 of chain ${fullChain}\n`);
    const fullBytes = statSync(path.join(runDir, 'sh-vm-full.tar')).size;
    const incBytes = statSync(inc).size;
    assert.ok(incBytes < fullBytes / 4, `link 1 is ${incBytes} B against the full's ${fullBytes} B`);
    for (const f of ['sh-vm-full.tar', 'sh-vm-inc1.tar']) rmSync(path.join(runDir, f));
  });

  test("m1's start-up sweep drops its stale link to a guest that runs on m2, and nothing of the guest's", async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const stale = path.join(m1.daemon.stateDir, 'guests', 'sh-ct');
    symlinkSync(path.join(nfs, 'guests', 'sh-ct'), stale);
    await m1.daemon.kill9();
    await m1.daemon.restart();
    assert.equal(lstatSync(stale, { throwIfNoEntry: false }), undefined, "m1's stale link went");
    for (const [model] of models) {
      const name = `sh-${model}`;
      assert.ok(existsSync(path.join(nfs, 'guests', name, dataFile[model])), name);
      assert.equal(listed(m2.daemon, name)?.status, 'Running');
    }
    assert.equal(m2.daemon.ok(['exec', 'sh-ct', '--', 'cat', '/root/mine']), 'sh-ct was here\n');
  });

  test('ha.enabled=true is taken for guests on the shared pool and refused in one line for one on the default pool', () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    for (const [model] of models) {
      const name = `sh-${model}`;
      m1.daemon.ok(['config', 'set', name, 'ha.priority=10']);
      m2.daemon.ok(['config', 'set', name, 'ha.enabled=true']);
      assert.equal(m1.daemon.ok(['config', 'get', name, 'ha.enabled']).trim(), 'true');
      // Left as it was: the HA manager's own tests are elsewhere.
      m2.daemon.ok(['config', 'unset', name, 'ha.enabled']);
    }
    m1.daemon.ok(['launch', 'busybox', 'local-ct', '--target', 'm1']);
    refused(
      m2.daemon.cli(['config', 'set', 'local-ct', 'ha.enabled=true']),
      /ha\.enabled=true needs the guest's disk on a shared storage pool: local-ct is on pool default/,
    );
    refused(
      m1.daemon.cli(['launch', 'busybox', 'local-ha', '--target', 'm1', '-c', 'ha.enabled=true']),
      /needs the guest's disk on a shared storage pool/,
    );
    assert.equal(listed(m1.daemon, 'local-ha'), undefined);
    m1.daemon.ok(['delete', '--force', 'local-ct']);
  });

  test('delete is refused while guests are on it; then it removes the marker and its own structure only', () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    refused(m1.daemon.cli(['storage', 'delete', 'nfs']), /holds guests/);
    const deleted = m1.daemon.cli(['delete', '--force', 'sh-ct', 'sh-pvm', 'sh-vm'], { timeoutMs: 180_000 });
    assert.equal(deleted.code, 0, deleted.stderr);
    for (const [model] of models) assert.equal(existsSync(path.join(nfs, 'guests', `sh-${model}`)), false);
    m1.daemon.ok(['storage', 'delete', 'nfs']);
    assert.deepEqual(readdirSync(nfs), [], 'nothing of the pool is left');
    assert.ok(existsSync(nfs), "the directory itself is the administrator's");
  });
});
