import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Operation } from '../../src/core/types.ts';
import { type Daemon, eventually } from '../system/harness.ts';
import { formCluster, makeTestCluster, type TestCluster, waitForStatus } from './cluster-harness.ts';

/*
 * Issue 13 part 1, cold moves (decision 0040), on two members: a running guest of each model,
 * with a file of its own and a snapshot, moves from m1 to m2 through m2's API; it runs there
 * with both, and m1 keeps nothing of it. Either member's daemon killed half way: the move is
 * undone. Bad requests are one line and move nothing.
 */

interface Listed {
  name: string;
  status: string;
  location?: string;
}
/** The state letter of process `pid` (T: stopped), from /proc/PID/stat. */
const stateOf = (pid: number) => readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '')[0];
const listed = (d: Daemon, name: string) =>
  (JSON.parse(d.ok(['list', '--format', 'json'])) as Listed[]).find((g) => g.name === name);
/** Guest `name` from the records (recursion=1), as any member lists them: a guest's own GET goes to its owner. */
const recordOf = async (d: Daemon, name: string) => {
  const r = await d.api('GET', '/1.0/guests?recursion=1');
  return (r.body.metadata as Listed[] | undefined)?.find((g) => g.name === name);
};
/** A running ct guest `name` on m1 with a file of its own, /root/mine. */
const launchWithFile = (m1: Daemon, name: string) => {
  m1.ok(['launch', 'busybox', name, '--target', 'm1']);
  m1.ok(['exec', name, '--', 'sh', '-c', `echo ${name} was here > /root/mine`]);
};

/** One `Error:` line and exit code 1. */
function refused(r: { code: number; stdout: string; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /^Error: [^\n]+\n$/, r.stderr);
  assert.match(r.stderr, pattern);
}

/**
 * Waits for the move operation `operation` of guest `name` on m1 to fail with `reason` (the part
 * between "to m2: " and "; it stays on m1"), then for the guest to run on m1 again with its file.
 */
async function failedBackOnM1(
  t: { diagnostic(message: string): void },
  m1: Daemon,
  name: string,
  operation: string | undefined,
  reason: string,
): Promise<void> {
  const done = await m1.api('GET', `${operation}/wait?timeout=150`);
  const op = done.body.metadata as { status: string; error: string | null };
  assert.equal(op.status, 'Failure', JSON.stringify(done.body));
  t.diagnostic(`the move ended: ${op.error}`);
  assert.match(op.error ?? '', new RegExp(`^Cannot move guest ${name} to m2: ${reason}; it stays on m1$`));
  await eventually(
    'the guest runs on m1 again',
    async () => {
      const g = await recordOf(m1, name);
      return g?.location === 'm1' && g.status === 'Running';
    },
    60_000,
  );
  assert.equal(m1.ok(['exec', name, '--', 'cat', '/root/mine']), `${name} was here\n`);
}

let cluster: TestCluster;

before(async () => {
  cluster = await makeTestCluster(['m1', 'm2']);
});

after(async () => {
  if (cluster) await cluster.destroy();
});

describe('moving guests between two members', () => {
  test('bootstrap and join: two Online members', async () => {
    await formCluster(cluster);
  });

  const models = [
    ['ct', []],
    ['pvm', ['-c', 'limits.memory=64MiB']],
    ['vm', ['-c', 'limits.memory=128MiB']],
  ] as const;
  for (const [model, args] of models) {
    test(`a running ${model} guest moves from m1 to m2, asked through m2: it runs there with its own file and its snapshot, and m1 keeps nothing of it`, async () => {
      const [m1, m2] = cluster.hosts;
      assert.ok(m1 && m2);
      const name = `mv-${model}`;
      m1.daemon.ok(['launch', 'busybox', name, '--model', model, '--target', 'm1', ...args]);
      m1.daemon.ok(['exec', name, '--', 'sh', '-c', `echo ${name} was here > /root/mine`]);
      m1.daemon.ok(['snapshot', 'create', name, 's1']);
      const dirOn = (d: Daemon) => path.join(d.stateDir, 'guests', name);
      assert.ok(existsSync(dirOn(m1.daemon)));

      const moved = m2.daemon.cli(['move', name, '--target', 'm2'], { timeoutMs: 300_000 });
      assert.equal(
        moved.code,
        0,
        `${moved.stderr}\nm1: ${m1.daemon.stderr().slice(-3000)}\nm2: ${m2.daemon.stderr().slice(-3000)}`,
      );
      const there = listed(m1.daemon, name);
      assert.equal(there?.location, 'm2');
      assert.equal(there?.status, 'Running', 'it ran, so it runs again');
      assert.equal(m1.daemon.ok(['exec', name, '--', 'cat', '/root/mine']), `${name} was here\n`);
      assert.match(m2.daemon.ok(['snapshot', 'list', name]), /\bs1\b/);
      assert.equal(existsSync(dirOn(m1.daemon)), false, "m1's copy is gone");
      assert.ok(existsSync(dirOn(m2.daemon)));
      // The snapshot came along: restored, it has the file as it was when it was taken.
      m1.daemon.ok(['exec', name, '--', 'rm', '/root/mine']);
      m1.daemon.ok(['snapshot', 'restore', name, 's1']);
      assert.equal(m2.daemon.ok(['exec', name, '--', 'cat', '/root/mine']), `${name} was here\n`);
      if (model === 'vm') {
        // Decision 0088: the same guest moves back live, its snapshot with it (no other vm boot).
        m1.daemon.ok(['exec', name, '--', 'sh', '-c', 'echo later > /root/later; sync']);
        const bootId = () => m1.daemon.ok(['exec', name, '--', 'cat', '/proc/sys/kernel/random/boot_id']);
        const booted = bootId();
        const live = m2.daemon.cli(['move', name, '--target', 'm1', '--live'], { timeoutMs: 300_000 });
        assert.equal(
          live.code,
          0,
          `${live.stderr}\nm1: ${m1.daemon.stderr().slice(-3000)}\nm2: ${m2.daemon.stderr().slice(-3000)}`,
        );
        const back = listed(m2.daemon, name);
        assert.equal(back?.location, 'm1');
        assert.equal(back?.status, 'Running');
        assert.equal(bootId(), booted, 'it kept running: no restart');
        assert.equal(m1.daemon.ok(['exec', name, '--', 'cat', '/root/later']), 'later\n');
        assert.match(m2.daemon.ok(['snapshot', 'list', name]), /\bs1\b/);
        assert.equal(existsSync(dirOn(m2.daemon)), false, "m2's copy is gone");
        // Restored on m1, the snapshot has what it had when it was taken, not what came after.
        m2.daemon.ok(['snapshot', 'restore', name, 's1']);
        assert.equal(m1.daemon.ok(['exec', name, '--', 'cat', '/root/mine']), `${name} was here\n`);
        assert.notEqual(m1.daemon.cli(['exec', name, '--', 'test', '-e', '/root/later']).code, 0);
      }
      m1.daemon.ok(['delete', '--force', name]);
      assert.equal(existsSync(dirOn(m2.daemon)), false);
      assert.equal(existsSync(dirOn(m1.daemon)), false);
    });
  }

  test("m1's daemon killed -9 after it handed a running ct guest over to m2, before its archive went: started again, it undoes the move (decision 0079): the guest runs on m1 with its own file, and m2 keeps nothing of it", async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const name = `mv-die-${process.pid}`;
    launchWithFile(m1.daemon, name);
    const guestOn = (d: Daemon) => recordOf(d, name);
    // m2's daemon is held (SIGSTOP) so that the move waits at the step after the hand-over: m1
    // has stopped the guest, written its archive and given the records to m2, whose controller
    // would now make the guest's files and take the archive.
    const m2pid = m2.daemon.process.pid;
    assert.ok(m2pid);
    /** Waits as `eventually` does; one that fails says what the members logged last. */
    const waitFor = (what: string, cond: () => Promise<boolean>, timeoutMs: number) =>
      eventually(what, cond, timeoutMs).catch((e: unknown) => {
        const tail = (h: (typeof cluster.hosts)[number]) =>
          readFileSync(path.join(h.daemon.stateDir, 'daemon.log'), 'utf8').slice(-4000);
        throw new Error(`${String(e)}\n${cluster.hosts.map((h) => `${h.name}:\n${tail(h)}`).join('\n')}`);
      });
    process.kill(m2pid, 'SIGSTOP');
    try {
      const asked = await m1.daemon.api('POST', `/1.0/guests/${name}?target=m2`, { migration: true });
      assert.equal(asked.status, 202, asked.text);
      await waitFor('the records name m2', async () => (await guestOn(m1.daemon))?.location === 'm2', 60_000);
      await m1.daemon.kill9();
    } finally {
      process.kill(m2pid, 'SIGCONT');
    }
    // m2 makes the guest's files from its image, as for a new guest: an empty copy, the archive
    // never came. The data is only in m1's copy.
    await waitFor('m2 made its copy', async () => (await guestOn(m2.daemon))?.status === 'Stopped', 60_000);
    // What a destination's daemon that died mid-move leaves (decision 0088, amended): a live
    // move's snapshots part that no move journals, a receive's work directory, an upload of an
    // archive. The restarted daemon's sweep removes them before its member API serves.
    const imports = path.join(m1.daemon.stateDir, 'imports');
    const debris = [
      path.join(imports, `move-snapshots-${name}-gone.tar`),
      path.join(imports, `.move-${name}-gone-a1b2c3`),
      path.join(m1.daemon.stateDir, 'trivisor-move-00112233aabbccdd.tar'),
    ];
    mkdirSync(debris[1] as string, { recursive: true });
    writeFileSync(path.join(debris[1] as string, 'rootfs.fifo'), '');
    writeFileSync(debris[0] as string, 'part');
    writeFileSync(debris[2] as string, 'half an archive');
    await m1.daemon.restart();
    assert.deepEqual(
      debris.filter((f) => existsSync(f)),
      [],
      'the stale move files are swept at start',
    );
    await waitFor(
      'the guest runs on m1 again',
      async () => {
        const g = await guestOn(m2.daemon);
        return g?.location === 'm1' && g.status === 'Running';
      },
      120_000,
    );
    assert.equal(m1.daemon.ok(['exec', name, '--', 'cat', '/root/mine']), `${name} was here\n`);
    const dirOn = (d: Daemon) => path.join(d.stateDir, 'guests', name);
    assert.ok(existsSync(dirOn(m1.daemon)));
    assert.equal(existsSync(dirOn(m2.daemon)), false, "m2's copy is gone");
    const archives = path.join(m1.daemon.stateDir, 'backups', name);
    assert.deepEqual(existsSync(archives) ? readdirSync(archives) : [], [], 'no archive is left');
    // The restarted daemon said what it did, as an operation of its own.
    const ops = JSON.parse(m1.daemon.ok(['operation', 'list', '--format', 'json'])) as Operation[];
    const resumed = ops.find((o) => o.description.startsWith(`Finishing the move of guest ${name} to m2`));
    assert.deepEqual(
      [resumed?.status, resumed?.metadata.outcome],
      ['Success', 'undone: the guest stays here'],
      JSON.stringify(ops),
    );
    m1.daemon.ok(['delete', '--force', name]);
  });

  test("m2's daemon killed -9 as a ct guest's move to it begins: m1 undoes the move once m2 is Offline, not after its 5-minute wait for m2's files; the guest runs on m1 with its own file, and m2 started again keeps nothing of it", async (t) => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const name = `mv-dst-${process.pid}`;
    launchWithFile(m1.daemon, name);
    const guestOn = (d: Daemon) => recordOf(d, name);
    // m2 is held (SIGSTOP) as the move is asked, then killed: it is still Online when m1 takes the
    // request, and Offline once its lease (5 s) expires. m1 stops and archives the guest, hands
    // it over and waits for m2 to make its files: once m2 has been Offline for 10 s it undoes the
    // move. Before, it waited 5 minutes for the files: longer than the wait below.
    const m2pid = m2.daemon.process.pid;
    assert.ok(m2pid);
    process.kill(m2pid, 'SIGSTOP');
    let asked: Awaited<ReturnType<Daemon['api']>>;
    try {
      asked = await m1.daemon.api('POST', `/1.0/guests/${name}?target=m2`, { migration: true });
      assert.equal(asked.status, 202, asked.text);
    } finally {
      await m2.daemon.kill9();
    }
    await failedBackOnM1(
      t,
      m1.daemon,
      name,
      asked.body.operation,
      'm2 went Offline while the guest was being moved to it',
    );
    await m2.daemon.restart();
    await waitForStatus(m1.daemon, 'm2', 'Online', 60_000);
    const dirOn = (d: Daemon) => path.join(d.stateDir, 'guests', name);
    assert.ok(existsSync(dirOn(m1.daemon)));
    assert.equal(existsSync(dirOn(m2.daemon)), false, 'm2 has no copy');
    const seenFromM2 = await guestOn(m2.daemon);
    assert.deepEqual(
      [seenFromM2?.location, seenFromM2?.status],
      ['m1', 'Running'],
      "m2's view once it is back",
    );
    m1.daemon.ok(['delete', '--force', name]);
  });

  test("m2's daemon killed -9 once it made a ct guest's files from the move's archive, before it answered (a failpoint): m1 undoes the move as the connection breaks, in one line, and leaves m2 the discard in the store; m2 started again removes its copy, and the guest runs on m1 with its own file", async (t) => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const name = `mv-made-${process.pid}`;
    const dirOn = (d: Daemon) => path.join(d.stateDir, 'guests', name);
    launchWithFile(m1.daemon, name);
    // m2 again, stopping itself (SIGSTOP) where its receive has made the guest's files from the
    // archive and not yet answered m1 (src/host/failpoints.ts): no signal from outside hits that.
    await m2.daemon.kill9();
    await m2.daemon.restart({ env: { TRIVISOR_FAILPOINTS: 'move.receive.files-made' } });
    let armed = true;
    t.after(async () => {
      // Whatever failed, m2 runs again without the failpoint for the cases after this one.
      if (!armed) return;
      await m2.daemon.kill9();
      await m2.daemon.restart();
      await waitForStatus(m1.daemon, 'm2', 'Online', 60_000);
    });
    await waitForStatus(m1.daemon, 'm2', 'Online', 60_000);
    const m2pid = m2.daemon.process.pid;
    assert.ok(m2pid);
    const asked = await m1.daemon.api('POST', `/1.0/guests/${name}?target=m2`, { migration: true });
    assert.equal(asked.status, 202, asked.text);
    await eventually('m2 stopped at the failpoint', async () => stateOf(m2pid) === 'T', 180_000);
    assert.ok(existsSync(dirOn(m2.daemon)), "m2 made the guest's files before it stopped");
    await m2.daemon.kill9();
    await failedBackOnM1(
      t,
      m1.daemon,
      name,
      asked.body.operation,
      'm2 broke the connection before it answered \\([^\n]+\\)',
    );
    // m1 could not tell m2 to discard its copy: it left that in the store (decision 0040, amended).
    assert.match(
      readFileSync(path.join(m1.daemon.stateDir, 'daemon.log'), 'utf8'),
      new RegExp(`"guest":"${name}"[^\n]*its copy there is left: it goes when the member is back`),
    );
    assert.ok(existsSync(dirOn(m2.daemon)), "m2's copy is there while m2 is down");
    await m2.daemon.restart();
    armed = false;
    await waitForStatus(m1.daemon, 'm2', 'Online', 60_000);
    // Its receiver's sweep at start (before its member API serves) finds the discard m1 left.
    await eventually('m2 removed its copy', async () => !existsSync(dirOn(m2.daemon)), 60_000);
    const seenFromM2 = await recordOf(m2.daemon, name);
    assert.deepEqual(
      [seenFromM2?.location, seenFromM2?.status],
      ['m1', 'Running'],
      "m2's view once it is back",
    );
    assert.equal(m1.daemon.ok(['exec', name, '--', 'cat', '/root/mine']), `${name} was here\n`);
    m1.daemon.ok(['delete', '--force', name]);
  });

  test("a ct guest with a NIC on a managed network keeps its MAC and address when it moves, and reaches the gateway on its new member's bridge", async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    m1.daemon.ok(['network', 'create', 'mvnet', 'ipv4.address=198.19.79.1/24']);
    m1.daemon.ok(['launch', 'busybox', 'mv-nic', '--target', 'm1', '--network', 'mvnet']);
    const nic = () => {
      const g = JSON.parse(m2.daemon.ok(['info', 'mv-nic', '--format', 'json'])) as {
        devices?: Record<string, { hwaddr?: string; 'ipv4.address'?: string }>;
      };
      return g.devices?.eth0;
    };
    const before = nic();
    assert.match(before?.hwaddr ?? '', /^[0-9a-f:]{17}$/);
    assert.match(before?.['ipv4.address'] ?? '', /^198\.19\.79\.\d+$/);
    const ping = () =>
      m1.daemon.cli(['exec', 'mv-nic', '--', 'ping', '-c1', '-W2', '198.19.79.1']).code === 0;
    await eventually('mv-nic reaches its gateway on m1', ping, 30_000);
    m2.daemon.ok(['move', 'mv-nic', '--target', 'm2']);
    assert.deepEqual(nic(), before, 'the same MAC and address');
    await eventually('mv-nic reaches its gateway on m2', ping, 30_000);
    const inGuest = m1.daemon.ok(['exec', 'mv-nic', '--', 'ip', '-4', 'addr', 'show', 'dev', 'eth0']);
    assert.ok(inGuest.includes(`inet ${before?.['ipv4.address']}/24`), inGuest);
    m1.daemon.ok(['delete', '--force', 'mv-nic']);
    m1.daemon.ok(['network', 'delete', 'mvnet']);
  });

  test("evacuate m1, asked through m2 while m1's daemon is down: once it is back its guests move to m2 or stop as cluster.evacuate says, and m1 gets no new guest; a restore brings them back as they were", async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    m1.daemon.ok(['launch', 'busybox', 'ev-a', '--target', 'm1']);
    m1.daemon.ok(['launch', 'busybox', 'ev-b', '--target', 'm1', '-c', 'cluster.evacuate=stop']);
    // The evacuation is a record: m1's daemon, dead when it is asked, carries it out when it starts.
    await m1.daemon.kill9();
    const asked = await m2.daemon.api('POST', '/1.0/cluster/members/m1/state', { action: 'evacuate' });
    assert.equal(asked.status, 202, asked.text);
    await m1.daemon.restart();
    const done = await m2.daemon.api('GET', `${asked.body.operation}/wait?timeout=240`);
    const op = done.body.metadata as { status: string; err: string | null };
    assert.equal(op.status, 'Success', JSON.stringify(done.body));
    await waitForStatus(m2.daemon, 'm1', 'Evacuated');
    assert.deepEqual(
      [listed(m2.daemon, 'ev-a'), listed(m2.daemon, 'ev-b')].map((g) => [g?.name, g?.location, g?.status]),
      [
        ['ev-a', 'm2', 'Running'],
        ['ev-b', 'm1', 'Stopped'],
      ],
    );
    // An evacuated member gets no new guest; asking again changes nothing.
    m1.daemon.ok(['launch', 'busybox', 'ev-c']);
    assert.equal(listed(m1.daemon, 'ev-c')?.location, 'm2');
    m2.daemon.ok(['cluster', 'evacuate', 'm1']);
    assert.equal(listed(m1.daemon, 'ev-a')?.location, 'm2');

    m2.daemon.ok(['cluster', 'restore', 'm1']);
    await waitForStatus(m2.daemon, 'm1', 'Online');
    assert.deepEqual(
      ['ev-a', 'ev-b', 'ev-c'].map((n) => listed(m2.daemon, n)).map((g) => [g?.name, g?.location, g?.status]),
      [
        ['ev-a', 'm1', 'Running'],
        ['ev-b', 'm1', 'Running'],
        ['ev-c', 'm2', 'Running'],
      ],
    );
    assert.equal(m2.daemon.ok(['exec', 'ev-a', '--', 'hostname']).trim(), 'ev-a');
    refused(m2.daemon.cli(['cluster', 'evacuate', 'nope']), /No cluster member is named nope/);
    refused(
      m2.daemon.cli(['config', 'set', 'ev-a', 'cluster.evacuate=never']),
      /must be auto, live-migrate, migrate or stop/,
    );
    m1.daemon.ok(['delete', '--force', 'ev-a', 'ev-b', 'ev-c']);
  });

  test('bad moves are one line and move nothing: an unknown member, its own member, --live (with the reason), a guest with a volume attached', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    m1.daemon.ok(['launch', 'busybox', 'mv-bad', '--target', 'm1']);
    refused(m2.daemon.cli(['move', 'mv-bad', '--target', 'nope']), /Member nope not found/);
    refused(m2.daemon.cli(['move', 'mv-bad', '--target', 'm1']), /Guest mv-bad is on member m1 already/);
    refused(
      m2.daemon.cli(['move', 'mv-bad', '--target', 'm2', '--live']),
      /ct guests cannot move live: .*--stateless/,
    );
    refused(m2.daemon.cli(['move', 'nothing', '--target', 'm2']), /Guest nothing not found/);
    m1.daemon.ok(['storage', 'volume', 'create', 'default', 'mvvol', 'size=16MiB']);
    m1.daemon.ok(['storage', 'volume', 'attach', 'default', 'mvvol', 'mv-bad', '/data']);
    refused(
      m2.daemon.cli(['move', 'mv-bad', '--target', 'm2']),
      /Guest mv-bad has volumes attached \(default\/mvvol\): .*detach them first/,
    );
    const still = listed(m2.daemon, 'mv-bad');
    assert.equal(still?.location, 'm1');
    assert.equal(still?.status, 'Running');
    m1.daemon.ok(['storage', 'volume', 'detach', 'default', 'mvvol', 'mv-bad']);
    m1.daemon.ok(['delete', '--force', 'mv-bad']);
    m1.daemon.ok(['storage', 'volume', 'delete', 'default', 'mvvol']);
  });
});
