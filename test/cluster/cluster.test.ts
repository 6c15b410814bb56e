import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { alive, type Daemon, eventually, gone, sleep } from '../system/harness.ts';
import { makeTestCluster, membersOf, type TestCluster, waitForStatus } from './cluster-harness.ts';

interface GuestJson {
  location?: string;
  name: string;
  status: string;
  state: { pid: number | null };
}

const guestsOf = (d: Daemon) => JSON.parse(d.ok(['list', '--format', 'json'])) as GuestJson[];
const guest = (d: Daemon, name: string) => guestsOf(d).find((g) => g.name === name);

/** The etcd process of a daemon's state dir (its --data-dir names it). */
function etcdPidOf(d: Daemon): number | undefined {
  const needle = `--data-dir=${d.stateDir}/etcd/data`;
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').includes(needle)) return Number(name);
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

const CLI = path.resolve(import.meta.dirname, '../../bin/trivisor');

/** `trivisor ARGS` against `d` in the background, its input piped and its output collected. */
function spawnCli(d: Daemon, args: string[]) {
  const child: ChildProcess = spawn(CLI, args, {
    env: { ...process.env, TRIVISOR_DIR: d.stateDir },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout?.on('data', (c: Buffer) => {
    out += c.toString('latin1');
  });
  child.stderr?.on('data', (c: Buffer) => {
    err += c.toString('latin1');
  });
  const exit = once(child, 'exit').then(([code]) => (code as number | null) ?? 128);
  return { child, pid: child.pid ?? 0, stdout: () => out, stderr: () => err, exit };
}

/** One `Error:` line and exit code 1. */
function refused(r: { code: number; stdout: string; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /^Error: [^\n]+\n$/, r.stderr);
  assert.match(r.stderr, pattern);
}

// Three real daemons, each in its own network namespace, bootstrapped and joined through the
// CLI (issue 12, sections 3 and 6; decision 0032).

let cluster: TestCluster;

before(async () => {
  cluster = await makeTestCluster(['m1', 'm2', 'm3']);
});

after(async () => {
  if (cluster) await cluster.destroy();
});

describe('a three-member cluster', () => {
  test('bootstrap and two joins: three Online members, three etcd voters, each with measured usage; member files root-only, etcd and the member API closed to hosts without a member certificate', async () => {
    const [m1, m2, m3] = cluster.hosts;
    assert.ok(m1 && m2 && m3);
    const boot = m1.daemon.cli(['cluster', 'bootstrap', '--address', m1.ip], { timeoutMs: 180_000 });
    assert.equal(boot.code, 0, `${boot.stderr}\n${m1.daemon.stderr().slice(-3000)}`);
    assert.match(
      boot.stdout,
      new RegExp(`Cluster bootstrapped: member m1 at ${m1.ip.replaceAll('.', '\\.')}:8444`),
    );
    for (const host of [m2, m3]) {
      const add = m1.daemon.cli(['cluster', 'add', host.name]);
      assert.equal(add.code, 0, add.stderr);
      const token = add.stdout.trim();
      assert.match(token, /^trvjoin_[A-Za-z0-9_-]+$/, 'the token alone on stdout');
      const join = host.daemon.cli(['cluster', 'join', token, '--address', host.ip], { timeoutMs: 180_000 });
      assert.equal(join.code, 0, `${join.stderr}\n${host.daemon.stderr().slice(-3000)}`);
    }
    for (const host of [m1, m2, m3]) await waitForStatus(host.daemon, 'm3', 'Online');
    for (const host of [m1, m2, m3]) {
      const members = membersOf(host.daemon);
      assert.deepEqual(
        members.map((m) => [m.name, m.address, m.status, m.roles]),
        [
          ['m1', `${m1.ip}:8444`, 'Online', ['etcd-voter']],
          ['m2', `${m2.ip}:8444`, 'Online', ['etcd-voter']],
          ['m3', `${m3.ip}:8444`, 'Online', ['etcd-voter']],
        ],
      );
      for (const m of members) {
        assert.ok(m.cpu && m.cpu.cpus > 0 && m.cpu.used >= 0 && m.cpu.free <= m.cpu.cpus, JSON.stringify(m));
        assert.ok(m.memory && m.memory.totalBytes > 0 && m.memory.usedBytes > 0, JSON.stringify(m));
        assert.equal(m.guests, 0);
      }
    }
    // What makes a member is root-only, and its etcd serves only holders of a CA-signed certificate.
    for (const host of [m1, m2, m3]) {
      const dir = path.join(host.daemon.stateDir, 'cluster');
      assert.equal(statSync(dir).mode & 0o777, 0o700, dir);
      for (const file of ['member.key', 'member.crt', 'ca.crt', 'member.json']) {
        assert.equal(statSync(path.join(dir, file)).mode & 0o777, 0o600, `${host.name} ${file}`);
      }
      const pid = etcdPidOf(host.daemon);
      assert.ok(pid, `${host.name} runs an etcd member`);
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      for (const flag of ['--client-cert-auth', '--peer-client-cert-auth'])
        assert.ok(argv.includes(flag), flag);
      assert.ok(argv.includes(`--listen-client-urls=https://${host.ip}:2379`));
      assert.ok(argv.includes(`--listen-peer-urls=https://${host.ip}:2380`));
    }
    // From another host without a member certificate: no answer from etcd, nor from the member API.
    const curl = (url: string) =>
      cluster.inNetns(m2.netns, [
        'curl',
        '-sk',
        '--max-time',
        '5',
        '-o',
        '/dev/null',
        '-w',
        '%{http_code}',
        url,
      ]);
    for (const url of [
      `https://${m1.ip}:2379/health`,
      `https://${m1.ip}:2380/members`,
      `http://${m1.ip}:2379/health`,
    ]) {
      const r = curl(url);
      assert.notEqual(r.code, 0, `${url} answered ${r.stdout}`);
    }
    assert.equal(curl(`https://${m1.ip}:8444/1.0/cluster/members`).stdout, '401');
  });

  test('placement spreads guests of all three models over the three members: memory measured within a sixteenth counts as equal, the fewest guests wins, and each runs where it was placed', async () => {
    const [m1, m2, m3] = cluster.hosts;
    assert.ok(m1 && m2 && m3);
    // The three members measure one host's memory, seconds apart: as good as each other. None
    // holds a guest yet, so each launch goes to a member that holds none.
    const launched = [
      ['sp-ct', m1, []],
      ['sp-pvm', m2, ['--model', 'pvm', '-c', 'limits.memory=64MiB']],
      ['sp-vm', m3, ['--model', 'vm', '-c', 'limits.memory=128MiB']],
    ] as const;
    for (const [name, through, args] of launched) through.daemon.ok(['launch', 'busybox', name, ...args]);
    const placed = launched.map(([name]) => guest(m1.daemon, name));
    assert.deepEqual(
      new Set(placed.map((g) => g?.location)),
      new Set(['m1', 'm2', 'm3']),
      JSON.stringify(placed.map((g) => [g?.name, g?.location])),
    );
    for (const g of placed) {
      assert.equal(g?.status, 'Running', `${g?.name} on ${g?.location}`);
      const owner = cluster.hosts.find((h) => h.name === g?.location);
      assert.match(
        owner?.daemon.ok(['info', g?.name ?? '']) ?? '',
        /Placement: most free memory: \d+\.\d GiB of/,
      );
      assert.equal(m2.daemon.ok(['exec', g?.name ?? '', '--', 'echo', 'placed']), 'placed\n');
    }
    m1.daemon.ok(['delete', '--force', ...launched.map(([name]) => name)]);
    for (const [name] of launched) assert.equal(guest(m3.daemon, name), undefined);
  });

  test('a daemon killed with -9: Offline once its lease expires, its guests keep running; restarted, Online with its guests adopted', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    // Placed on m2 through m1 (decision 0033): m2's controller starts it.
    m1.daemon.ok(['launch', 'busybox', 'g2', '--target', 'm2']);
    assert.equal(guest(m2.daemon, 'g2')?.location, 'm2');
    assert.match(m2.daemon.ok(['info', 'g2']), /Placement: asked for \(--target m2\)/);
    const pid = guest(m2.daemon, 'g2')?.state.pid;
    assert.ok(pid && alive(pid));
    assert.equal(membersOf(m1.daemon).find((m) => m.name === 'm2')?.guests, 1);
    await m2.daemon.kill9();
    // The state reached, not how soon: a deadline that only a hung run misses. How long it takes
    // (issue 13 §4: within 10 s) is measured by bench/ha-failover.ts (`offline`), not here.
    await waitForStatus(m1.daemon, 'm2', 'Offline', 120_000);
    assert.ok(alive(pid), 'the guest outlived its daemon');
    assert.equal(guest(m1.daemon, 'g2')?.status, 'Running', 'its spec and status are still there');
    // An Offline member gets no guest, asked for or not.
    refused(
      m1.daemon.cli(['launch', 'busybox', 'gx', '--target', 'm2']),
      /Cannot place the guest on m2: m2 is Offline/,
    );
    assert.equal(guest(m1.daemon, 'gx'), undefined, 'nothing was recorded');
    await m2.daemon.restart();
    await waitForStatus(m1.daemon, 'm2', 'Online');
    const adopted = guest(m2.daemon, 'g2');
    assert.equal(adopted?.status, 'Running');
    assert.equal(adopted?.state.pid, pid, 'adopted, not started again');
    assert.equal(m2.daemon.ok(['exec', 'g2', '--', 'hostname']).trim(), 'g2');
  });

  test('every etcd killed with -9 at once: started again by the daemons, no spec lost, controllers resume', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    m1.daemon.ok(['project', 'create', 'kept']);
    const before = guestsOf(m1.daemon).map((g) => [g.name, g.status, g.state.pid]);
    const pids = cluster.hosts.map((h) => etcdPidOf(h.daemon));
    assert.equal(pids.filter((p) => p !== undefined).length, 3, 'three etcd members run');
    for (const p of pids) if (p) process.kill(p, 'SIGKILL');
    for (const p of pids) if (p) await eventually(`etcd ${p} gone`, () => gone(p));
    for (const h of cluster.hosts) {
      await eventually(`etcd of ${h.name} started again`, () => {
        const now = etcdPidOf(h.daemon);
        return now !== undefined && !pids.includes(now);
      });
    }
    for (const h of cluster.hosts) await waitForStatus(h.daemon, h.name, 'Online', 60_000);
    assert.deepEqual(
      guestsOf(m1.daemon).map((g) => [g.name, g.status, g.state.pid]),
      before,
    );
    assert.ok(
      JSON.parse(m2.daemon.ok(['project', 'list', '--format', 'json'])).some(
        (p: { name: string }) => p.name === 'kept',
      ),
    );
    // The guest controller watches again: a change of desired state is converged.
    m2.daemon.ok(['stop', 'g2']);
    await eventually('g2 stopped', () => guest(m1.daemon, 'g2')?.status === 'Stopped');
    m2.daemon.ok(['start', 'g2']);
    await eventually('g2 running again', () => guest(m1.daemon, 'g2')?.status === 'Running');
  });

  test('placement: a guest without --target goes to an Online member, the reason in info; --target an unknown member is refused', async () => {
    const [m1] = cluster.hosts;
    assert.ok(m1);
    m1.daemon.ok(['launch', 'busybox', 'auto1']);
    const placed = guest(m1.daemon, 'auto1');
    const owner = cluster.hosts.find((h) => h.name === placed?.location);
    assert.ok(owner, `placed on a member: ${placed?.location}`);
    assert.equal(placed?.status, 'Running');
    assert.match(owner.daemon.ok(['info', 'auto1']), /Placement: most free memory: \d+\.\d GiB of \d+\.\d/);
    assert.equal(owner.daemon.ok(['exec', 'auto1', '--', 'hostname']).trim(), 'auto1');
    refused(m1.daemon.cli(['launch', 'busybox', 'auto2', '--target', 'nope']), /Member nope not found/);
    assert.equal(guest(m1.daemon, 'auto2'), undefined, 'nothing was recorded');
    owner.daemon.ok(['delete', 'auto1', '--force']);
    assert.equal(guest(m1.daemon, 'auto1'), undefined);
  });

  test("every action on another member's guest works through any member: exec with and without a terminal, console, files, snapshots, live usage, lists, events and operations", async () => {
    const [m1, m2, m3] = cluster.hosts;
    assert.ok(m1 && m2 && m3);
    // Both on m3, asked through the others: m3's controller starts them.
    m1.daemon.ok(['launch', 'busybox', 'fc', '--target', 'm3']);
    m2.daemon.ok([
      'launch',
      'busybox',
      'fp',
      '--target',
      'm3',
      '--model',
      'pvm',
      '-c',
      'limits.memory=96MiB',
    ]);
    assert.equal(guest(m1.daemon, 'fc')?.location, 'm3');
    // The cluster's events, on m1: m3's lifecycle events arrive, saying where they happened.
    const monitor = spawnCli(m1.daemon, ['monitor', '--type', 'lifecycle']);
    try {
      await eventually(
        'm1 subscribed to every member',
        () => monitor.stderr() === '' && alive(monitor.pid),
        5_000,
      );
      await sleep(1000);
      // exec, plain and with a terminal, through m1 and m2; the exit code comes back.
      assert.equal(m1.daemon.ok(['exec', 'fc', '--', 'hostname']).trim(), 'fc');
      assert.match(m2.daemon.ok(['exec', '-t', 'fc', '--', 'tty']), /^\/dev\/pts\/\d+/m);
      assert.equal(m2.daemon.cli(['exec', 'fc', '--', 'sh', '-c', 'exit 7']).code, 7);
      // Files: pushed through m1, pulled through m2.
      const local = path.join(m1.daemon.stateDir, '..', 'fwd-file');
      writeFileSync(local, 'passed on\n');
      m1.daemon.ok(['file', 'push', local, 'fc/root/fwd-file']);
      assert.equal(m2.daemon.ok(['file', 'pull', 'fc/root/fwd-file', '-']), 'passed on\n');
      // A snapshot through m1, listed through m2, restored through m1.
      m1.daemon.ok(['snapshot', 'create', 'fc', 's1']);
      assert.match(m2.daemon.ok(['snapshot', 'list', 'fc']), /s1/);
      // Audited where it was carried out, as the caller who asked (root on m1's socket), once.
      type Entry = { actor: { name: string }; source: string; request: { method: string; path: string } };
      const snapshotsOf = async (d: Daemon) =>
        ((await d.api('GET', '/1.0/audit')).body as { metadata: Entry[] }).metadata.filter(
          (e) => e.request.method === 'POST' && e.request.path === '/1.0/guests/fc/snapshots',
        );
      const onOwner = await snapshotsOf(m3.daemon);
      assert.equal(onOwner.length, 1, JSON.stringify(onOwner));
      assert.equal(onOwner[0]?.actor.name, 'root');
      assert.match(onOwner[0]?.source ?? '', new RegExp(`${m1.ip.replaceAll('.', '\\.')}$`), 'from m1');
      assert.deepEqual(await snapshotsOf(m1.daemon), [], 'not audited twice');
      // An image imported on m1 only: a guest of it placed on m2 (through m3) runs there, its
      // tree fetched from m1 and checked against the sender's digest.
      const busybox = JSON.parse(m1.daemon.ok(['image', 'info', 'busybox', '--format', 'json'])) as {
        fingerprint: string;
      };
      const tree = path.join(m1.daemon.stateDir, '..', 'fw-tree');
      execFileSync('cp', [
        '-a',
        path.join(m1.daemon.stateDir, 'images', busybox.fingerprint, 'trees', 'rootfs'),
        tree,
      ]);
      writeFileSync(path.join(tree, 'etc', 'marker'), 'fetched\n');
      const tarball = path.join(m1.daemon.stateDir, '..', 'fw-rootfs.tar.gz');
      execFileSync('tar', ['-C', tree, '-czf', tarball, '.']);
      m1.daemon.ok(['image', 'import', tarball, '--alias', 'fwimg']);
      const fwimg = JSON.parse(m1.daemon.ok(['image', 'info', 'fwimg', '--format', 'json'])) as {
        fingerprint: string;
      };
      assert.ok(!existsSync(path.join(m2.daemon.stateDir, 'images', fwimg.fingerprint)), 'not on m2 yet');
      m3.daemon.ok(['launch', 'fwimg', 'fimg', '--target', 'm2']);
      assert.equal(m3.daemon.ok(['exec', 'fimg', '--', 'cat', '/etc/marker']), 'fetched\n');
      assert.ok(existsSync(path.join(m2.daemon.stateDir, 'images', fwimg.fingerprint, 'trees', 'rootfs')));
      m1.daemon.ok(['delete', '--force', 'fimg']);
      // Storage: a pool made through m1 on m3's disks, a volume on it made through m2 (on m3),
      // attached through m1 to m3's guest; a volume of m1's own default pool is refused there.
      m1.daemon.ok(['storage', 'create', 'fwpool', 'dir', '--target', 'm3']);
      const pools = JSON.parse(m2.daemon.ok(['storage', 'list', '--format', 'json'])) as Array<{
        name: string;
        location?: string;
      }>;
      assert.equal(pools.find((p) => p.name === 'fwpool')?.location, 'm3');
      m2.daemon.ok(['storage', 'volume', 'create', 'fwpool', 'fwvol', 'size=64MiB']);
      m1.daemon.ok(['storage', 'volume', 'attach', 'fwpool', 'fwvol', 'fc', '/mnt/fw']);
      assert.equal(
        m2.daemon.cli(['exec', 'fc', '--', 'sh', '-c', 'echo v > /mnt/fw/f && cat /mnt/fw/f']).stdout,
        'v\n',
      );
      m2.daemon.ok(['storage', 'volume', 'detach', 'fwpool', 'fwvol', 'fc']);
      m1.daemon.ok(['storage', 'volume', 'create', 'default', 'm1vol', 'size=64MiB']);
      refused(
        m2.daemon.cli(['storage', 'volume', 'attach', 'default', 'm1vol', 'fc', '/mnt/x']),
        /Volume m1vol is on member m1 and guest fc on m3/,
      );
      m3.daemon.ok(['storage', 'volume', 'delete', 'default', 'm1vol']);
      m1.daemon.ok(['storage', 'volume', 'delete', 'fwpool', 'fwvol']);
      // A guest on m3's pool, launched through m1, is made and runs on m3; another target is refused.
      m1.daemon.ok(['launch', 'busybox', 'fpg', '--storage', 'fwpool']);
      assert.equal(guest(m2.daemon, 'fpg')?.location, 'm3');
      assert.equal(m2.daemon.ok(['exec', 'fpg', '--', 'hostname']).trim(), 'fpg');
      refused(
        m1.daemon.cli(['launch', 'busybox', 'fpx', '--storage', 'fwpool', '--target', 'm2']),
        /Storage pool fwpool is on member m3/,
      );
      assert.equal(guest(m1.daemon, 'fpx'), undefined);
      m2.daemon.ok(['delete', '--force', 'fpg']);
      m2.daemon.ok(['storage', 'delete', 'fwpool']);
      // A copy through m1 is made on the source's member; an export through m2 is m3's archive,
      // imported through m1 onto m2 (?target=), where it runs.
      m1.daemon.ok(['copy', 'fc', 'fcc']);
      assert.equal(guest(m2.daemon, 'fcc')?.location, 'm3');
      const archive = path.join(m1.daemon.stateDir, '..', 'fc.tar.zst');
      m2.daemon.ok(['export', 'fc', archive]);
      m1.daemon.ok(['import', archive, 'fci', '--target', 'm2']);
      assert.equal(guest(m3.daemon, 'fci')?.location, 'm2');
      m3.daemon.ok(['start', 'fci']);
      assert.equal(m1.daemon.ok(['exec', 'fci', '--', 'cat', '/root/fwd-file']), 'passed on\n');
      refused(m1.daemon.cli(['import', archive, 'fcx', '--target', 'nope']), /Member nope not found/);
      assert.equal(guest(m1.daemon, 'fcx'), undefined);
      m2.daemon.ok(['delete', '--force', 'fci', 'fcc']);
      // Live usage is m3's to say: the list on m1 has it, and ?target= narrows the list.
      await eventually("fc has live usage in m1's list", () => {
        const listed = guestsOf(m1.daemon).find((g) => g.name === 'fc') as GuestJson & {
          state: { usage: { memoryBytes: number } | null };
        };
        return (listed?.state.usage?.memoryBytes ?? 0) > 0;
      });
      const onM3 = await m2.daemon.api('GET', '/1.0/guests?recursion=1&target=m3');
      assert.equal(onM3.status, 200, onM3.text);
      assert.deepEqual((onM3.body as { metadata: GuestJson[] }).metadata.map((g) => g.name).sort(), [
        'fc',
        'fp',
      ]);
      const unknown = await m2.daemon.api('GET', '/1.0/guests?target=nope');
      assert.equal(unknown.status, 404, unknown.text);
      // Operations: m3's snapshot operation is in m1's list, with its location.
      const ops = await m1.daemon.api('GET', '/1.0/operations?recursion=1');
      assert.ok(
        (ops.body as { metadata: Array<{ description: string; location?: string }> }).metadata.some(
          (o) => o.location === 'm3' && /snapshot/i.test(o.description),
        ),
        ops.text,
      );
      // The pvm guest's console, interactive, through m2: a command typed, its answer seen.
      await eventually('fp running', () => guest(m1.daemon, 'fp')?.status === 'Running', 120_000);
      const consoleCli = spawnCli(m2.daemon, ['console', 'fp']);
      consoleCli.child.stdin?.write('echo fwd-$((6*7))\n');
      await eventually('the console answers', () => /fwd-42/.test(consoleCli.stdout()), 60_000);
      consoleCli.child.stdin?.write('\x01q');
      assert.equal(await consoleCli.exit, 0, consoleCli.stderr());
      // A network made through m1 has a bridge on every member; a NIC attached through m2 plugs
      // into m3's running guest, which reaches its gateway on m3's bridge.
      m1.daemon.ok(['network', 'create', 'fwnet', 'ipv4.address=198.19.77.1/24']);
      for (const h of cluster.hosts) {
        await eventually(`fwnet's bridge on ${h.name}`, () =>
          /198\.19\.77\.1\/24/.test(
            cluster.inNetns(h.netns, ['ip', '-4', 'addr', 'show', 'dev', 'fwnet']).stdout,
          ),
        );
      }
      assert.match(m2.daemon.ok(['network', 'attach', 'fwnet', 'fc', 'eth0']), /eth0/);
      await eventually(
        'fc reaches its gateway on m3',
        () => m1.daemon.cli(['exec', 'fc', '--', 'ping', '-c1', '-W2', '198.19.77.1']).code === 0,
        30_000,
      );
      m2.daemon.ok(['network', 'detach', 'fwnet', 'fc', 'eth0']);
      m2.daemon.ok(['network', 'delete', 'fwnet']);
      for (const h of cluster.hosts) {
        await eventually(
          `fwnet's bridge gone from ${h.name}`,
          () => cluster.inNetns(h.netns, ['ip', 'link', 'show', 'dev', 'fwnet']).code !== 0,
        );
      }
      // m3's daemon killed and started again under m1's open monitor: m1 takes up m3's events again. A stop
      // asked through m2: m1's monitor shows m3's event.
      await m3.daemon.kill9();
      const seenBefore = monitor.stdout().length;
      await m3.daemon.restart();
      await waitForStatus(m1.daemon, 'm3', 'Online');
      // A live stream keeps no past: m1 takes m3 up again within seconds, and what m3 said before
      // is not replayed. Freezes through m3 until one is seen on m1 show the stream is back.
      const sinceRestart = (event: RegExp) =>
        monitor
          .stdout()
          .slice(seenBefore)
          .split('\n')
          .some((line) => event.test(line) && /"location":"m3"/.test(line) && /fc/.test(line));
      await eventually(
        "m1's monitor streams m3's events again",
        () => {
          m3.daemon.ok(['freeze', 'fc']);
          m3.daemon.ok(['unfreeze', 'fc']);
          return sinceRestart(/"guest-frozen"/);
        },
        30_000,
      );
      m2.daemon.ok(['stop', 'fc']);
      await eventually("m3's guest-stopped event on m1", () => sinceRestart(/"guest-stopped"/));
    } finally {
      monitor.child.kill('SIGINT');
      await monitor.exit;
    }
    m1.daemon.ok(['delete', '--force', 'fc', 'fp']);
    assert.equal(guest(m2.daemon, 'fc'), undefined);
  });

  test("bad input is one line and changes nothing: expired, used and foreign tokens, a duplicate or unknown name, an address that is not the host's or that members cannot reach, removing a member that holds guests", async () => {
    const [m1] = cluster.hosts;
    assert.ok(m1);
    const m4 = await cluster.addHost('m4');
    const memberNames = () => membersOf(m1.daemon).map((m) => m.name);

    // An expired token.
    const expiring = m1.daemon.ok(['cluster', 'add', 'm4', '--expiry', '1s']).trim();
    await sleep(1500);
    refused(m4.daemon.cli(['cluster', 'join', expiring, '--address', m4.ip]), /join token for m4 expired/);
    // A token cut short.
    refused(
      m4.daemon.cli(['cluster', 'join', expiring.slice(0, 30), '--address', m4.ip]),
      /not a join token/,
    );
    // A name already taken, an unknown one.
    refused(m1.daemon.cli(['cluster', 'add', 'm2']), /already has a member named m2/);
    refused(m1.daemon.cli(['cluster', 'remove', 'nope']), /No cluster member is named nope/);
    // A member that holds a guest.
    refused(m1.daemon.cli(['cluster', 'remove', 'm2']), /Member m2 holds 1 guest \(g2\).*--force/);

    const token = m1.daemon.ok(['cluster', 'add', 'm4']).trim();
    // An address that is not the joining host's.
    refused(
      m4.daemon.cli(['cluster', 'join', token, '--address', `${cluster.subnet}.99`]),
      /is not an address of this host/,
    );
    // An address of the joining host that no member can reach (on its loopback only).
    assert.equal(cluster.inNetns(m4.netns, ['ip', 'addr', 'add', '10.254.0.4/32', 'dev', 'lo']).code, 0);
    refused(
      m4.daemon.cli(['cluster', 'join', token, '--address', '10.254.0.4']),
      /Member m1 cannot reach the joining host at 10\.254\.0\.4:8444/,
    );
    assert.deepEqual(memberNames(), ['m1', 'm2', 'm3'], 'no member was added');
    refused(m4.daemon.cli(['cluster', 'list']), /not a cluster member/);

    // The same token still works after those refusals; the fourth member is an etcd client only.
    m4.daemon.ok(['cluster', 'join', token, '--address', m4.ip]);
    await waitForStatus(m1.daemon, 'm4', 'Online');
    assert.deepEqual(membersOf(m1.daemon).find((m) => m.name === 'm4')?.roles, ['etcd-client']);
    // Used once: another host cannot join with it.
    const m5 = await cluster.addHost('m5');
    refused(
      m5.daemon.cli(['cluster', 'join', token, '--address', m5.ip]),
      /join token for m4 was already used/,
    );

    // Removal: refused while it holds a guest, done with --force; a member cannot remove itself.
    m4.daemon.ok(['launch', 'busybox', 'g4', '--target', 'm4']);
    refused(m1.daemon.cli(['cluster', 'remove', 'm4']), /holds 1 guest \(g4\)/);
    refused(m4.daemon.cli(['cluster', 'remove', 'm4']), /remove it through another member/);
    m1.daemon.ok(['cluster', 'remove', 'm4', '--force']);
    assert.deepEqual(memberNames(), ['m1', 'm2', 'm3']);
  });
});
