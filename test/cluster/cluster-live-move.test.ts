import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { BackupDirectoryArchiveWire } from '../../src/api/backup-schemas.ts';
import { qmpOnce } from '../../src/drivers/vm/qmp-client.ts';
import { describeThing, makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, eventually } from '../system/harness.ts';
import { formCluster, makeTestCluster, type TestCluster, waitForStatus } from './cluster-harness.ts';

/*
 * Issue 13 part 1, vm live moves (decision 0042), on two members, one vm guest of 128 MiB shared
 * by the checks. The guest streams a counter every 10 ms over one TCP connection to a listener
 * on m1 (in a ct guest on the same network): after the move the same
 * connection goes on, the counter has no gap and no restart, the guest did not boot again, and
 * no pause seen by the listener is longer than the pause the move measured plus slack. The
 * listener runs in a ct guest's network namespace on m1: once the vm is on m2, their traffic
 * crosses the network's VXLAN between the members (decision 0050).
 *
 * The same guest's scheduled backups (decision 0062, amended 2026-12-07: a vm chain goes on across
 * a live move): a full one shipped from m1 before the move, a file written after it, and the first
 * scheduled backup on m2 after the move is the next link of that chain, holding only what changed;
 * the full and that link import as a guest whose disk has the file. The backup directory is one
 * for both members (TRIVISOR_BACKUP_DIR), as an NFS mount would be.
 */

/** The longest pause the listener may see beyond the pause the move measured (TCG on a busy 2-core host). */
const SLACK_MS = 2500;

interface Op {
  id: string;
  status: string;
  progressText: string | null;
  error: string | null;
  metadata: Record<string, unknown>;
}

/** One `Error:` line and exit code 1. */
function refused(r: { code: number; stdout: string; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /^Error: [^\n]+\n$/, r.stderr);
  assert.match(r.stderr, pattern);
}

const listed = (d: Daemon, name: string) =>
  (
    JSON.parse(d.ok(['list', '--format', 'json'])) as Array<{
      name: string;
      status: string;
      location?: string;
    }>
  ).find((g) => g.name === name);

let cluster: TestCluster;
let backupDir: string;
let listener: ChildProcess | undefined;
/** `host-ms counter` lines the listener on m1 got from the guest, in order. */
const received: Array<{ at: number; n: number }> = [];

before(async () => {
  backupDir = await makeRunDir('shipped');
  cluster = await makeTestCluster(['m1', 'm2'], { env: { TRIVISOR_BACKUP_DIR: backupDir } });
});

after(async () => {
  listener?.kill('SIGKILL');
  if (cluster) await cluster.destroy();
  if (backupDir) {
    const report = await removeRunDir(backupDir);
    assert.deepEqual(report.left.map(describeThing), []);
  }
});

const NAME = 'lm-vm';
const LISTENER = 'lm-peer';
const SUBNET = '198.19.83';
/** The listener guest's address. */
let PEER = '';
const PORT = 7083;

describe('moving a vm guest live between two members', () => {
  /** Whether the listener saw the guest's connection close. */
  let connectionClosed = () => false;
  test('bootstrap and join; a vm guest on a managed network, its counter streaming to m1 over TCP', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    await formCluster(cluster);

    m1.daemon.ok(['network', 'create', 'lmnet', `ipv4.address=${SUBNET}.1/24`]);
    m1.daemon.ok([
      ...['launch', 'busybox', NAME, '--model', 'vm', '--target', 'm1', '--network', 'lmnet'],
      ...['-c', 'limits.memory=128MiB'],
    ]);
    // The listener runs in the network namespace of a ct guest on m1: after the move the vm on
    // m2 reaches it only through the network's VXLAN between the members (decision 0050).
    m1.daemon.ok(['launch', 'busybox', LISTENER, '--target', 'm1', '--network', 'lmnet']);
    const peer = JSON.parse(m1.daemon.ok(['info', LISTENER, '--format', 'json'])) as {
      devices?: Record<string, { 'ipv4.address'?: string }>;
      state: { pid: number | null };
    };
    PEER = peer.devices?.eth0?.['ipv4.address'] ?? '';
    assert.match(PEER, /^198\.19\.83\.\d+$/);
    assert.ok(peer.state.pid);
    await eventually(
      `${LISTENER} holds ${PEER}`,
      () =>
        m1.daemon
          .ok(['exec', LISTENER, '--', 'ip', '-4', 'addr', 'show', 'dev', 'eth0'])
          .includes(`inet ${PEER}/`),
      60_000,
    );
    const server = `
      const net = require('node:net');
      net.createServer((s) => {
        let buf = '';
        s.setEncoding('utf8');
        s.on('data', (d) => {
          buf += d;
          let nl;
          while ((nl = buf.indexOf('\\n')) >= 0) {
            process.stdout.write(Date.now() + ' ' + buf.slice(0, nl) + '\\n');
            buf = buf.slice(nl + 1);
          }
        });
        s.on('close', () => process.stdout.write('closed\\n'));
      }).listen(${PORT}, '${PEER}', () => process.stdout.write('listening\\n'));`;
    listener = spawn('nsenter', [`--net=/proc/${peer.state.pid}/ns/net`, process.execPath, '-e', server], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    let closed = false;
    listener.stdout?.setEncoding('utf8');
    listener.stdout?.on('data', (d: string) => {
      out += d;
      let nl = out.indexOf('\n');
      while (nl >= 0) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        if (line === 'closed') closed = true;
        const m = /^(\d+) (\d+)$/.exec(line);
        if (m) received.push({ at: Number(m[1]), n: Number(m[2]) });
        nl = out.indexOf('\n');
      }
    });
    connectionClosed = () => closed;
    await eventually(
      `${NAME} reaches ${PEER}`,
      () => m1.daemon.cli(['exec', NAME, '--', 'ping', '-c1', '-W2', PEER]).code === 0,
    );
    const loop = `i=0; while :; do i=$((i+1)); echo $i; usleep 10000; done | nc ${PEER} ${PORT}`;
    m1.daemon.ok(['exec', NAME, '--', 'sh', '-c', `setsid sh -c '${loop}' </dev/null >/dev/null 2>&1 &`]);
    await eventually('the counter streaming', () => received.length > 50, 30_000);
  });

  const table = ['nft', 'list', 'table', 'inet', `trivisor-migration-${NAME}`];
  const bootId = (d: Daemon) => d.ok(['exec', NAME, '--', 'cat', '/proc/sys/kernel/random/boot_id']).trim();

  test('migration.downtime_limit: bad values are refused in one line, a good one is taken', () => {
    const [m1] = cluster.hosts;
    assert.ok(m1);
    for (const bad of ['abc', '0', '-5', '1.5', '60001']) {
      refused(
        m1.daemon.cli(['config', 'set', NAME, `migration.downtime_limit=${bad}`]),
        /migration\.downtime_limit=.* must be a whole number of milliseconds from 1 to 60000/,
      );
    }
    refused(
      m1.daemon.cli(['launch', 'busybox', 'lm-bad', '--model', 'vm', '-c', 'migration.downtime_limit=fast']),
      /migration\.downtime_limit/,
    );
    assert.equal(listed(m1.daemon, 'lm-bad'), undefined);
    m1.daemon.ok(['config', 'set', NAME, 'migration.downtime_limit=250']);
  });

  /** The pid of the destination's QEMU waiting for the guest's migration, or ''. */
  const incoming = () =>
    spawnSync('pgrep', ['-f', `guest=${NAME},.*-incoming defer`], { encoding: 'utf8' }).stdout.trim();
  /** Asks m1 to move the guest live to m2 and waits until the copy runs; answers a reader of the move's operation. */
  const moveUntilCopying = async (m1: Daemon) => {
    const asked = await m1.api('POST', `/1.0/guests/${NAME}?target=m2`, { migration: true, live: true });
    assert.equal(asked.status, 202, asked.text);
    const id = (asked.body.metadata as Op).id;
    const op = async () => (await m1.api('GET', `/1.0/operations/${id}`)).body.metadata as Op;
    let copying = false;
    for (const deadline = Date.now() + 120_000; !copying && Date.now() < deadline; ) {
      const now = await op();
      assert.equal(now.status, 'Running', now.error ?? '');
      copying = /mirroring the disk|copying RAM/.test(now.progressText ?? '');
      if (!copying) await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(copying, 'the copy started');
    return { id, op };
  };

  test('a live move cancelled half way: the guest runs on on m1 as it was, m2 keeps nothing of it', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const boot = bootId(m1.daemon);
    // The destination's QEMU held up (SIGSTOP) as soon as the copy starts: it cannot finish before
    // the cancel, however fast it would be (the RAM alone takes over a second under TCG).
    const { id, op } = await moveUntilCopying(m1.daemon);
    // Both streams go in TLS: the source's QEMU holds this migration's credentials. Asked before
    // the destination is held up: with its NBD server stopped, the source's main loop may not
    // greet a new monitor connection for seconds (seen in CI: no QMP greeting within 10 s).
    const objects = await qmpOnce<Array<{ name: string; type: string }>>(
      path.join(m1.daemon.stateDir, 'run', 'vm', NAME, 'qmp.sock'),
      'qom-list',
      { args: { path: '/objects' } },
    );
    assert.ok(
      objects.some((o) => o.name === 'migration-tls' && o.type === 'child<tls-creds-x509>'),
      JSON.stringify(objects),
    );
    const pid = incoming();
    assert.match(pid, /^\d+$/, "the destination's waiting QEMU");
    process.kill(Number(pid), 'SIGSTOP');
    try {
      // While the ports listen, only m1's address may reach them: m2's own processes may not either.
      const listedTable = cluster.inNetns(m2.netns, table);
      assert.equal(listedTable.code, 0, listedTable.stderr);
      assert.match(listedTable.stdout, new RegExp(`ip saddr != ${m1.ip.replaceAll('.', '\\.')} drop`));
      const ports = /tcp dport \{ (\d+), (\d+) \}/.exec(listedTable.stdout)?.slice(1) ?? [];
      assert.equal(ports.length, 2, listedTable.stdout);
      for (const port of ports) {
        const probe = cluster.inNetns(m2.netns, [
          'timeout',
          '2',
          'bash',
          '-c',
          `exec 3<>/dev/tcp/${m2.ip}/${port}`,
        ]);
        assert.notEqual(probe.code, 0, `port ${port} of m2 reached from m2 itself`);
      }
      assert.equal((await m1.daemon.api('DELETE', `/1.0/operations/${id}`)).status, 200);
    } finally {
      process.kill(Number(pid), 'SIGCONT');
    }
    await eventually('the move Cancelled', async () => (await op()).status === 'Cancelled', 60_000);
    assert.equal(listed(m2.daemon, NAME)?.location, 'm1');
    assert.equal(listed(m2.daemon, NAME)?.status, 'Running');
    assert.equal(bootId(m1.daemon), boot, 'the same boot');
    assert.equal(existsSync(path.join(m2.daemon.stateDir, 'guests', NAME)), false, 'nothing of it on m2');
    assert.notEqual(cluster.inNetns(m2.netns, table).code, 0, "the ports' filter is gone from m2");
    await eventually("the destination's QEMU gone", () => incoming() === '', 15_000);
    const qemus = spawnSync('pgrep', ['-f', `guest=${NAME},`], { encoding: 'utf8' })
      .stdout.trim()
      .split('\n');
    assert.equal(qemus.filter((p) => p !== '').length, 1, "one QEMU of the guest on the machine: m1's");
    const before = received.length;
    await eventually('the counter still streaming', () => received.length > before + 20, 10_000);
    assert.equal(connectionClosed(), false);
  });

  test("m2's daemon killed -9 during a live move: m1 stops the migration once m2 is Offline, the guest runs on on m1 as it was, and m2 started again keeps nothing of it", async (t) => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const boot = bootId(m1.daemon);
    const { id } = await moveUntilCopying(m1.daemon);
    // The destination's QEMU held up (as in the cancel above) so that the migration cannot end
    // before m2 is seen gone; then m2's daemon dies. Its QEMU is released once m1 has given up
    // (its log says so): as in the cancel, the undo's commands to the source's QEMU then do not
    // wait on a peer that does not read (under load that took m1 past 150 s).
    const pid = incoming();
    assert.match(pid, /^\d+$/, "the destination's waiting QEMU");
    process.kill(Number(pid), 'SIGSTOP');
    let ended: Op;
    try {
      await m2.daemon.kill9();
      const log = path.join(m1.daemon.stateDir, 'daemon.log');
      await eventually(
        'm1 gave the move up',
        () =>
          readFileSync(log, 'utf8').includes('the destination is gone: the live move is stopped and undone'),
        120_000,
      );
      process.kill(Number(pid), 'SIGCONT');
      const done = await m1.daemon.api('GET', `/1.0/operations/${id}/wait?timeout=150`);
      ended = done.body.metadata as Op;
    } finally {
      try {
        process.kill(Number(pid), 'SIGCONT');
      } catch {
        // Gone already.
      }
    }
    t.diagnostic(`the move ended: ${ended.error}`);
    assert.equal(ended.status, 'Failure', JSON.stringify(ended));
    assert.equal(
      ended.error,
      `Cannot move guest ${NAME} live to m2: m2 went Offline while the guest was being moved to it; it stays running on m1`,
    );
    assert.equal(listed(m1.daemon, NAME)?.location, 'm1');
    assert.equal(listed(m1.daemon, NAME)?.status, 'Running');
    assert.equal(bootId(m1.daemon), boot, 'the same boot');
    const before = received.length;
    await eventually('the counter still streaming', () => received.length > before + 20, 10_000);
    assert.equal(connectionClosed(), false);
    // m2 started again: the QEMU its dead daemon had waiting, the guest's files and the ports'
    // filter are gone; one QEMU of the guest on the machine, m1's.
    await m2.daemon.restart();
    await waitForStatus(m1.daemon, 'm2', 'Online', 60_000);
    await eventually("the destination's QEMU gone", () => incoming() === '', 60_000);
    assert.equal(existsSync(path.join(m2.daemon.stateDir, 'guests', NAME)), false, 'nothing of it on m2');
    assert.notEqual(cluster.inNetns(m2.netns, table).code, 0, "the ports' filter is gone from m2");
    const qemus = spawnSync('pgrep', ['-f', `guest=${NAME},`], { encoding: 'utf8' })
      .stdout.trim()
      .split('\n');
    assert.equal(qemus.filter((p) => p !== '').length, 1, "one QEMU of the guest on the machine: m1's");
    assert.equal(listed(m2.daemon, NAME)?.location, 'm1');
  });

  test("m2 hung during a live move (every packet to and from it dropped, no RST; its daemon stopped): m1 stops the migration once m2 is Offline and undoes it at once, nothing of it left in m1's QEMU, the guest runs on on m1 as it was, and m2 continued keeps nothing of it", async (t) => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const boot = bootId(m1.daemon);
    const qmpSocket = path.join(m1.daemon.stateDir, 'run', 'vm', NAME, 'qmp.sock');
    const log = path.join(m1.daemon.stateDir, 'daemon.log');
    // The killed case above logged its own give-up: this case waits for one more.
    const gaveUp = () =>
      readFileSync(log, 'utf8').split('the destination is gone: the live move is stopped and undone').length -
      1;
    const gaveUpBefore = gaveUp();
    const { id } = await moveUntilCopying(m1.daemon);
    // A frozen or cut-off host: what m1 sends to it is never answered, not even by a reset.
    // Dropped in m2's own network namespace, its loopback aside; its etcd's two ports too are
    // left open: m1 and m2 are the cluster's two etcd voters, and a store cut in half has no
    // quorum, so nothing could ever see m2 Offline (a cluster of three voters would; this one
    // cannot). Its daemon stopped: it renews no lease, so m2 goes Offline as a frozen host does.
    const hang = 'trivisor-test-hang';
    const etcd = '{ 2379, 2380 }';
    const rules = (dir: 'iif' | 'oif') =>
      `policy drop; ${dir} "lo" accept; tcp dport ${etcd} accept; tcp sport ${etcd} accept;`;
    const pid = m2.daemon.process.pid;
    assert.ok(pid);
    let hung = false;
    let stopped = false;
    const release = () => {
      if (hung) {
        const r = cluster.inNetns(m2.netns, ['nft', 'delete', 'table', 'inet', hang]);
        assert.equal(r.code, 0, r.stderr);
        hung = false;
      }
      if (stopped) {
        process.kill(pid, 'SIGCONT');
        stopped = false;
      }
    };
    // Released even when the case fails (a killed run's sweep removes m2's namespace, rule and all).
    t.after(release);
    hung = true;
    const made = cluster.inNetns(
      m2.netns,
      ['nft', '-f', '-'],
      `table inet ${hang} {\n` +
        `  chain input { type filter hook input priority -300; ${rules('iif')} }\n` +
        `  chain output { type filter hook output priority -300; ${rules('oif')} }\n}\n`,
    );
    assert.equal(made.code, 0, made.stderr);
    stopped = true;
    process.kill(pid, 'SIGSTOP');
    const hungAt = Date.now();
    // What m1's kernel holds then: the copy's connections to m2, open (or still opening), unanswered.
    await new Promise((r) => setTimeout(r, 2000));
    const sockets = cluster.inNetns(m1.netns, ['ss', '-tn', 'dst', m2.ip]);
    t.diagnostic(
      `m1's connections to m2 (etcd's aside) 2 s into the hang:\n${sockets.stdout
        .split('\n')
        .filter((l) => !/:23(79|80)\b/.test(l))
        .join('\n')}`,
    );
    await eventually('m1 gave the move up', () => gaveUp() > gaveUpBefore, 120_000);
    const gaveUpAt = Date.now();
    // Bounded as generously as the killed case: an undo that waits on QEMU's blocked sends takes
    // minutes, and fails here.
    const done = await m1.daemon.api('GET', `/1.0/operations/${id}/wait?timeout=120`);
    const ended = done.body.metadata as Op;
    // m1's log: when the move was given up, and when its QEMU was back as it was (the undo done).
    const at = (msg: string) =>
      readFileSync(log, 'utf8')
        .split('\n')
        .filter((l) => l.includes(msg))
        .map((l) => (JSON.parse(l) as { time: number }).time)
        .at(-1) ?? Number.NaN;
    const undoneMs =
      at('the live migration stopped and undone here') -
      at('the destination is gone: the live move is stopped and undone');
    t.diagnostic(
      `the move ended: ${ended.error}; from the hang, m1 gave up after ${gaveUpAt - hungAt} ms and the move ended after ${Date.now() - hungAt} ms; its QEMU's undo took ${undoneMs} ms`,
    );
    assert.equal(ended.status, 'Failure', JSON.stringify(ended));
    assert.equal(
      ended.error,
      `Cannot move guest ${NAME} live to m2: m2 went Offline while the guest was being moved to it; it stays running on m1`,
    );
    assert.equal(listed(m1.daemon, NAME)?.location, 'm1');
    assert.equal(listed(m1.daemon, NAME)?.status, 'Running');
    // Nothing of the migration left in m1's QEMU: no mirror job, no migration under way, no NBD node.
    // (Each asked with the wait a loaded host may need; a QEMU whose main loop is stuck never answers.)
    const ask = <T>(command: string, args?: Record<string, unknown>) =>
      qmpOnce<T>(qmpSocket, command, { ...(args && { args }), timeoutMs: 30_000 });
    assert.deepEqual(await ask<unknown[]>('query-block-jobs'), []);
    const migration = await ask<{ status?: string }>('query-migrate');
    assert.ok(
      [undefined, 'none', 'completed', 'failed', 'cancelled'].includes(migration.status),
      JSON.stringify(migration),
    );
    const nodes = await ask<Array<{ 'node-name': string }>>('query-named-block-nodes', { flat: true });
    assert.equal(
      nodes.some((n) => n['node-name'] === 'migration-target'),
      false,
      JSON.stringify(nodes.map((n) => n['node-name'])),
    );
    assert.equal((await ask<{ status: string }>('query-status')).status, 'running');
    assert.equal(bootId(m1.daemon), boot, 'the same boot');
    const before = received.length;
    await eventually('the counter still streaming', () => received.length > before + 20, 10_000);
    assert.equal(connectionClosed(), false);
    // m2 back (its rule gone, its daemon continued): the QEMU it had waiting, the guest's files
    // and the ports' filter go; one QEMU of the guest on the machine, m1's.
    release();
    await waitForStatus(m1.daemon, 'm2', 'Online', 60_000);
    const files = path.join(m2.daemon.stateDir, 'guests', NAME);
    await eventually(
      "the destination's QEMU, the guest's files and the ports' filter gone from m2",
      () => incoming() === '' && !existsSync(files) && cluster.inNetns(m2.netns, table).code !== 0,
      60_000,
    );
    const qemus = spawnSync('pgrep', ['-f', `guest=${NAME},`], { encoding: 'utf8' })
      .stdout.trim()
      .split('\n');
    assert.equal(qemus.filter((p) => p !== '').length, 1, "one QEMU of the guest on the machine: m1's");
    assert.equal(listed(m2.daemon, NAME)?.location, 'm1');
  });

  test("m2 hung for the migration only (its NBD and migration ports dropped both ways, no RST; m2 stays Online): m1 gives the move up once the copy made no progress for the guest's migration.stall_limit, undoes it, the guest runs on on m1 as it was, and m2, told to discard, keeps nothing of it", async (t) => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const boot = bootId(m1.daemon);
    const qmpSocket = path.join(m1.daemon.stateDir, 'run', 'vm', NAME, 'qmp.sock');
    // The limit is the guest's (as migration.downtime_limit is), low for this case only.
    for (const bad of ['abc', '4', '3601', '1.5']) {
      refused(
        m1.daemon.cli(['config', 'set', NAME, `migration.stall_limit=${bad}`]),
        /migration\.stall_limit=.* must be a whole number of seconds from 5 to 3600/,
      );
    }
    m1.daemon.ok(['config', 'set', NAME, 'migration.stall_limit=10']);
    const hang = 'trivisor-test-stall';
    let hung = false;
    t.after(() => {
      if (hung) {
        const r = cluster.inNetns(m2.netns, ['nft', 'delete', 'table', 'inet', hang]);
        assert.equal(r.code, 0, r.stderr);
        hung = false;
      }
      m1.daemon.ok(['config', 'unset', NAME, 'migration.stall_limit']);
    });
    const { id, op } = await moveUntilCopying(m1.daemon);
    // The migration's two ports on m2, from the filter its prepare made (only m1 may reach them).
    const filter = cluster.inNetns(m2.netns, table);
    assert.equal(filter.code, 0, filter.stderr);
    const ports = /tcp dport \{ (\d+), (\d+) \}/.exec(filter.stdout)?.slice(1) ?? [];
    assert.equal(ports.length, 2, filter.stdout);
    // What m1 sends to those ports is never answered, not even by a reset, and nothing comes back
    // from them; the member API and etcd go on: m2's daemon renews its lease, m2 stays Online.
    const set = `{ ${ports.join(', ')} }`;
    hung = true;
    const made = cluster.inNetns(
      m2.netns,
      ['nft', '-f', '-'],
      `table inet ${hang} {\n` +
        `  chain input { type filter hook input priority -300; tcp dport ${set} drop; }\n` +
        `  chain output { type filter hook output priority -300; tcp sport ${set} drop; }\n}\n`,
    );
    assert.equal(made.code, 0, made.stderr);
    const hungAt = Date.now();
    const phase = (await op()).progressText;
    // Bounded generously: without the watch the move waits for ever (m2 never goes Offline).
    const done = await m1.daemon.api('GET', `/1.0/operations/${id}/wait?timeout=120`);
    const ended = done.body.metadata as Op;
    t.diagnostic(
      `the ports dropped at "${phase}"; the move ended ${Date.now() - hungAt} ms after: ${ended.error}`,
    );
    assert.equal(ended.status, 'Failure', JSON.stringify(ended));
    assert.equal(
      ended.error,
      `Cannot move guest ${NAME} live to m2: the migration made no progress for 10 s (the destination stopped answering); it stays running on m1`,
    );
    const members = JSON.parse(m1.daemon.ok(['cluster', 'list', '--format', 'json'])) as Array<{
      name: string;
      status: string;
    }>;
    assert.equal(members.find((m) => m.name === 'm2')?.status, 'Online', 'm2 stayed Online');
    assert.equal(listed(m1.daemon, NAME)?.location, 'm1');
    assert.equal(listed(m1.daemon, NAME)?.status, 'Running');
    // Nothing of the migration left in m1's QEMU: no mirror job, no migration under way, no NBD node.
    const ask = <T>(command: string, args?: Record<string, unknown>) =>
      qmpOnce<T>(qmpSocket, command, { ...(args && { args }), timeoutMs: 30_000 });
    assert.deepEqual(await ask<unknown[]>('query-block-jobs'), []);
    const migration = await ask<{ status?: string }>('query-migrate');
    assert.ok(
      [undefined, 'none', 'completed', 'failed', 'cancelled'].includes(migration.status),
      JSON.stringify(migration),
    );
    const nodes = await ask<Array<{ 'node-name': string }>>('query-named-block-nodes', { flat: true });
    assert.equal(
      nodes.some((n) => n['node-name'] === 'migration-target'),
      false,
      JSON.stringify(nodes.map((n) => n['node-name'])),
    );
    assert.equal((await ask<{ status: string }>('query-status')).status, 'running');
    assert.equal(bootId(m1.daemon), boot, 'the same boot');
    const before = received.length;
    await eventually('the counter still streaming', () => received.length > before + 20, 10_000);
    assert.equal(connectionClosed(), false);
    // m2 was told to discard (the ports still dropped: its member API answered): the QEMU it had
    // waiting, the guest's files and the ports' filter go; one QEMU of the guest, m1's.
    const files = path.join(m2.daemon.stateDir, 'guests', NAME);
    await eventually(
      "the destination's QEMU, the guest's files and the ports' filter gone from m2",
      () => incoming() === '' && !existsSync(files) && cluster.inNetns(m2.netns, table).code !== 0,
      60_000,
    );
    const qemus = spawnSync('pgrep', ['-f', `guest=${NAME},`], { encoding: 'utf8' })
      .stdout.trim()
      .split('\n');
    assert.equal(qemus.filter((p) => p !== '').length, 1, "one QEMU of the guest on the machine: m1's");
    assert.equal(listed(m2.daemon, NAME)?.location, 'm1');
  });

  /** The guest's backups in the backup directory, as the API lists them (`backup list`). */
  type Shipped = BackupDirectoryArchiveWire;
  const shipped = (d: Daemon) =>
    (JSON.parse(d.ok(['backup', 'list', NAME, '--format', 'json'])) as Shipped[])
      // A link's chain state beside it (`….chain.json`) is listed too, as `other`.
      .filter((b) => b.kind !== 'other')
      .sort((a, b) => (a.sequence ?? 0) - (b.sequence ?? 0));
  /** The dirty bitmaps of the guest's disk node (`root`) as its running QEMU on `d`'s member shows them. */
  const bitmapsOf = async (d: Daemon) => {
    const nodes = await qmpOnce<Array<{ 'node-name': string; 'dirty-bitmaps'?: unknown[] }>>(
      path.join(d.stateDir, 'run', 'vm', NAME, 'qmp.sock'),
      'query-named-block-nodes',
    );
    return JSON.stringify(nodes.map((n) => ({ node: n['node-name'], bitmaps: n['dirty-bitmaps'] ?? [] })));
  };
  /** What was shipped before the move: the newest link the guest's next backup follows. */
  let beforeMove: Shipped[] = [];
  /** Written after the full backup (before the move) and after the move: only the link holds them. */
  const marks = { '/root/before-move': '', '/root/after-move': '' };

  test('a scheduled full backup of the vm guest on m1, shipped to the backup directory; a file written after it', async (t) => {
    const [m1] = cluster.hosts;
    assert.ok(m1);
    // 6 MiB that do not compress, in the full backup only: the link after it is far smaller.
    m1.daemon.ok([
      'exec',
      NAME,
      '--',
      'sh',
      '-c',
      'dd if=/dev/urandom of=/root/bulk bs=1M count=6 2>/dev/null && sync',
    ]);
    m1.daemon.ok(['config', 'set', NAME, 'backups.schedule=* * * * *']);
    try {
      await eventually(
        'a full backup of the guest shipped',
        () => shipped(m1.daemon).some((b) => b.kind === 'full'),
        180_000,
      );
    } finally {
      // No backup while the guest moves: the next one is asked for on m2.
      m1.daemon.ok(['config', 'unset', NAME, 'backups.schedule']);
    }
    beforeMove = shipped(m1.daemon);
    t.diagnostic(`m1's QEMU, node root's bitmaps after the full backup: ${await bitmapsOf(m1.daemon)}`);
    const full = beforeMove.find((b) => b.kind === 'full');
    assert.ok(full?.chain && full.sizeBytes > 6 * 2 ** 20, JSON.stringify(beforeMove));
    marks['/root/before-move'] = `written on m1 after the full backup ${randomBytes(6).toString('hex')}`;
    m1.daemon.ok([
      'exec',
      NAME,
      '--',
      'sh',
      '-c',
      `echo '${marks['/root/before-move']}' > /root/before-move && sync`,
    ]);
  });

  test('a live move to m2: the guest runs on with the same boot, its counter and its TCP connection go on, and m1 keeps nothing of it', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const boot = bootId(m1.daemon);
    const asked = await m2.daemon.api('POST', `/1.0/guests/${NAME}?target=m2`, {
      migration: true,
      live: true,
    });
    assert.equal(asked.status, 202, asked.text);
    const from = received.length;
    const done = await m1.daemon.api('GET', `${asked.body.operation}/wait?timeout=300`);
    const op = done.body.metadata as Op;
    assert.equal(
      op.status,
      'Success',
      `${JSON.stringify(done.body)}\nm1: ${m1.daemon.stderr().slice(-3000)}\nm2: ${m2.daemon.stderr().slice(-3000)}`,
    );
    const m = op.metadata as Record<string, number>;
    assert.equal(op.metadata.location, 'm2');
    for (const k of ['downtimeMs', 'pausedMs', 'totalMs', 'ramTransferredBytes']) {
      assert.ok(typeof m[k] === 'number' && (m[k] as number) >= 0, `${k}: ${JSON.stringify(op.metadata)}`);
    }
    assert.equal(m.downtimeLimitMs, 250);
    assert.ok((m.ramTransferredBytes as number) > 0);
    assert.equal(listed(m1.daemon, NAME)?.location, 'm2');
    assert.equal(listed(m1.daemon, NAME)?.status, 'Running');
    assert.equal(bootId(m2.daemon), boot, 'the same boot: no restart');
    assert.equal(existsSync(path.join(m1.daemon.stateDir, 'guests', NAME)), false, "m1's copy is gone");
    const after = received.length;
    await eventually('the counter streaming after the move', () => received.length > after + 50, 30_000);
    assert.equal(connectionClosed(), false, 'the TCP connection survived');
    // No number lost or repeated: the loop was not restarted, the stream lost nothing.
    const seen = received.slice(from);
    for (let i = 1; i < seen.length; i++) assert.equal(seen[i]?.n, (seen[i - 1]?.n ?? 0) + 1, `at ${i}`);
    let gap = 0;
    for (let i = 1; i < seen.length; i++) gap = Math.max(gap, (seen[i]?.at ?? 0) - (seen[i - 1]?.at ?? 0));
    const paused = m.pausedMs as number;
    process.stdout.write(
      `# live move: downtime ${m.downtimeMs} ms (QEMU), paused ${paused} ms, total ${m.totalMs} ms; longest gap seen on m1 ${gap} ms\n`,
    );
    assert.ok(gap <= paused + SLACK_MS, `gap ${gap} ms > paused ${paused} ms + ${SLACK_MS} ms`);
    // The TLS credentials were on disk only while QEMU loaded them.
    assert.deepEqual(
      readdirSync(tmpdir()).filter((n) => n.startsWith('trivisor-migration-')),
      [],
      'no credentials left in /tmp',
    );
  });

  // The cancelled move above ran before the guest had a backup bitmap: with QEMU 7.2 a migration
  // with `dirty-bitmaps` on and no bitmap kept that QEMU from ever carrying one (issue 13 §5,
  // decision 0062); the source turns the capability on only when there is a bitmap to carry.
  test("the first scheduled backup on m2 after the live move is the next link of m1's chain, holds only what changed, and with the full imports as a guest whose disk has the files written between", async (t) => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    assert.equal(listed(m2.daemon, NAME)?.location, 'm2');
    const full = beforeMove.find((b) => b.kind === 'full');
    const last = beforeMove.at(-1);
    assert.ok(full?.chain && last, 'the test before shipped a full backup');
    marks['/root/after-move'] = `written on m2 after the move ${randomBytes(6).toString('hex')}`;
    m2.daemon.ok([
      'exec',
      NAME,
      '--',
      'sh',
      '-c',
      `echo '${marks['/root/after-move']}' > /root/after-move && sync`,
    ]);
    const known = new Set(beforeMove.map((b) => b.name));
    // What the next link needs (decision 0062): the bitmap named for the last link in m2's QEMU.
    const bitmaps = await bitmapsOf(m2.daemon);
    t.diagnostic(`m2's QEMU's bitmaps before the backup: ${bitmaps}`);
    t.diagnostic(`the backup directory: ${readdirSync(path.join(backupDir, NAME)).join(', ')}`);
    m2.daemon.ok(['config', 'set', NAME, 'backups.schedule=* * * * *']);
    let made: Shipped | undefined;
    try {
      await eventually(
        'a backup shipped from m2',
        () => {
          made = shipped(m2.daemon).find((b) => !known.has(b.name));
          return made !== undefined;
        },
        180_000,
      );
    } finally {
      m2.daemon.ok(['config', 'unset', NAME, 'backups.schedule']);
    }
    assert.ok(made);
    t.diagnostic(
      `shipped: ${beforeMove.map((b) => `${b.name} ${b.sizeBytes} B`).join(', ')}; after the move ${made.name} ${made.sizeBytes} B`,
    );
    // The next link of m1's chain, not a new full one (decision 0062: m2 took the shipped state over).
    assert.deepEqual(
      {
        kind: made.kind,
        chain: made.chain,
        sequence: made.sequence,
        parent: made.parent,
        restorable: made.restorable,
      },
      {
        kind: 'incremental',
        chain: full.chain,
        sequence: (last.sequence ?? 0) + 1,
        parent: last.name,
        restorable: true,
      },
      `m2's first backup after the move: ${made.name}; m2's QEMU's bitmaps ${bitmaps}; m2's log: ${readFileSync(
        path.join(m2.daemon.stateDir, 'daemon.log'),
        'utf8',
      )
        .split('\n')
        .filter((l) => /backup chain|chain shipped/.test(l))
        .slice(-6)
        .join('\n')}`,
    );
    // Only what changed: two small files and the file system's metadata, not the 6 MiB of the full.
    assert.ok(
      made.sizeBytes * 8 < full.sizeBytes,
      `link ${made.sizeBytes} B against full ${full.sizeBytes} B`,
    );
    // The full and the link, imported on m1 as a new guest (stopped): its disk holds both files.
    m1.daemon.ok(['import', '--from-backups', `${NAME}/${made.name}`, 'lm-copy'], { timeoutMs: 300_000 });
    const scratch = mkdtempSync(path.join(tmpdir(), 'lm-copy-'));
    try {
      // Its config came with the link, schedule and all: no backups of the copy.
      m1.daemon.ok(['config', 'unset', 'lm-copy', 'backups.schedule']);
      const found = spawnSync('find', [m1.daemon.stateDir, '-path', '*/lm-copy/*', '-name', 'root.qcow2'], {
        encoding: 'utf8',
      }).stdout.trim();
      assert.match(found, /^\/\S+root\.qcow2$/, `lm-copy's disk on m1: ${found}`);
      const raw = path.join(scratch, 'disk.raw');
      const converted = spawnSync('qemu-img', ['convert', '-O', 'raw', found, raw], { encoding: 'utf8' });
      assert.equal(converted.status, 0, converted.stderr);
      // The journal replayed on the copy first: debugfs reads the file system as it is on disk.
      spawnSync('e2fsck', ['-fy', raw], { encoding: 'utf8' });
      for (const [file, text] of Object.entries(marks)) {
        const read = spawnSync('debugfs', ['-R', `cat ${file}`, raw], { encoding: 'utf8' });
        assert.equal(read.stdout, `${text}\n`, `${file} in lm-copy's disk: ${read.stderr}`);
      }
    } finally {
      rmSync(scratch, { recursive: true, force: true });
      const deleted = m1.daemon.cli(['delete', '--force', 'lm-copy']);
      assert.equal(deleted.code, 0, deleted.stderr);
    }
  });

  test('moved back and forth right away (m2 to m1 to m2, each asked as soon as the last ended): after each the guest runs on its destination with the same boot, its QMP socket there answering, the source keeping no runtime files', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const boot = bootId(m2.daemon);
    for (const [from, to] of [
      [m2, m1],
      [m1, m2],
    ] as const) {
      const asked = await from.daemon.api('POST', `/1.0/guests/${NAME}?target=${to.name}`, {
        migration: true,
        live: true,
      });
      assert.equal(asked.status, 202, asked.text);
      const done = await from.daemon.api('GET', `${asked.body.operation}/wait?timeout=300`);
      const op = done.body.metadata as Op;
      assert.equal(
        op.status,
        'Success',
        `${from.name} to ${to.name}: ${JSON.stringify(done.body)}\n${from.name}: ${from.daemon.stderr().slice(-3000)}\n${to.name}: ${to.daemon.stderr().slice(-3000)}`,
      );
      const run = (d: Daemon) => path.join(d.stateDir, 'run', 'vm', NAME);
      // Its QEMU on the destination answers on the socket its runtime directory holds (issue 13:
      // one move found it gone, another left the guest Stopped).
      const status = await qmpOnce<{ status: string }>(path.join(run(to.daemon), 'qmp.sock'), 'query-status');
      assert.equal(status.status, 'running', `${to.name}'s QEMU`);
      assert.equal(listed(to.daemon, NAME)?.status, 'Running');
      assert.equal(listed(to.daemon, NAME)?.location, to.name);
      assert.equal(existsSync(run(from.daemon)), false, `${from.name} keeps no runtime files of it`);
    }
    assert.equal(bootId(m2.daemon), boot, 'the same boot');
    const before = received.length;
    await eventually('the counter streaming after the moves', () => received.length > before + 20, 30_000);
    assert.equal(connectionClosed(), false);
  });

  test('a QEMU left paused by a migration that was never handed over (its daemon died in between) runs again: its member resumes it', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const boot = bootId(m2.daemon);
    // What a source daemon that died right after the copy leaves: the migration completed, the
    // guest paused (postmigrate), the records still its own. Here by hand, to a sink in m2.
    const sink = spawn(
      'nsenter',
      [
        `--net=/run/netns/${m2.netns}`,
        process.execPath,
        '-e',
        "require('node:net').createServer((s) => s.resume()).listen(7099, '127.0.0.1', () => console.log('ready'))",
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await new Promise<void>((resolve, reject) => {
        sink.stdout?.once('data', () => resolve());
        sink.once('exit', () => reject(new Error('the sink exited')));
      });
      const qmp = path.join(m2.daemon.stateDir, 'run', 'vm', NAME, 'qmp.sock');
      await qmpOnce(qmp, 'migrate-set-parameters', { args: { 'max-bandwidth': 2 ** 30 } });
      await qmpOnce(qmp, 'migrate', { args: { uri: 'tcp:127.0.0.1:7099' } });
      await eventually(
        'the migration to the sink completed',
        async () => (await qmpOnce<{ status?: string }>(qmp, 'query-migrate')).status === 'completed',
        60_000,
      );
      await eventually(
        'the guest running again',
        async () => (await qmpOnce<{ status: string }>(qmp, 'query-status')).status === 'running',
        30_000,
      );
    } finally {
      sink.kill('SIGKILL');
    }
    const before = received.length;
    await eventually('the counter streaming again', () => received.length > before + 20, 30_000);
    assert.equal(connectionClosed(), false);
    assert.equal(bootId(m2.daemon), boot, 'the same boot');
    assert.equal(listed(m1.daemon, NAME)?.status, 'Running');
    listener?.kill('SIGKILL');
    m1.daemon.ok(['delete', '--force', NAME, LISTENER]);
    assert.equal(existsSync(path.join(m2.daemon.stateDir, 'guests', NAME)), false);
    m1.daemon.ok(['network', 'delete', 'lmnet']);
  });
});
