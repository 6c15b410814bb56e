import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { cgroupParentOf } from '../src/drivers/guest-cgroup.ts';
import { hostPortName } from '../src/network/guest-networking.ts';
import { ownerAlias } from '../src/network/linux-network-backend.ts';
import {
  describeThing,
  type HostFacts,
  isGuestLeftover,
  mentionsDir,
  type ProcessFacts,
  parseMarker,
  type RunFacts,
  type RunMarker,
  runLiveness,
  thingsOf,
} from './leftovers.ts';

// Pure logic of the sweeper: which runs are dead and which host objects belong to which run.

const BOOT = 'b00t';
const marker = (pid: number, startTime: number, more: Partial<RunMarker> = {}): RunMarker => ({
  owner: { pid, startTime, bootId: BOOT },
  createdAt: '2026-12-04T00:00:00Z',
  stateDirs: [],
  netns: [],
  links: [],
  ...more,
});

describe('runLiveness', () => {
  const m = marker(100, 5000);
  test('a run is live while its owner is the same process (pid, start time and boot)', () => {
    const ownerNow = { startTime: 5000, state: 'S' };
    assert.equal(runLiveness(m, { bootId: BOOT, ownerNow }), 'live');
  });
  test('a run is dead when its owner is gone, a zombie, a reused pid or of another boot', () => {
    assert.equal(runLiveness(m, { bootId: BOOT, ownerNow: undefined }), 'dead');
    assert.equal(runLiveness(m, { bootId: BOOT, ownerNow: { startTime: 5000, state: 'Z' } }), 'dead');
    assert.equal(runLiveness(m, { bootId: BOOT, ownerNow: { startTime: 7000, state: 'S' } }), 'dead');
    assert.equal(runLiveness(m, { bootId: 'other', ownerNow: { startTime: 5000, state: 'S' } }), 'dead');
  });
  test('a directory without a marker is never taken for dead', () => {
    assert.equal(runLiveness(undefined, { bootId: BOOT, ownerNow: undefined }), 'unknown');
  });
});

describe('parseMarker', () => {
  test('reads a whole marker and refuses torn or foreign ones', () => {
    const m = marker(1, 2, { session: 's1', stateDirs: ['/tmp/x'], netns: ['n'], links: ['l'] });
    assert.deepEqual(parseMarker(JSON.stringify(m)), m);
    assert.equal(parseMarker(JSON.stringify(m).slice(0, 20)), undefined);
    assert.equal(parseMarker('{"owner":{"pid":"1"}}'), undefined);
    assert.equal(parseMarker(''), undefined);
  });
});

describe('mentionsDir', () => {
  const dir = '/tmp/trivisor-test-sys-abc123';
  test('finds the directory in paths and option values', () => {
    assert.ok(mentionsDir(dir, dir));
    assert.ok(mentionsDir(`ubd0=${dir}/guests/p1/cow.img,${dir}/images/x/disk.ext4`, dir));
    assert.ok(mentionsDir(`--pid-file=${dir}/networks/n1/dnsmasq.pid`, dir));
    assert.ok(mentionsDir(`file=${dir}/guests/v1/root.qcow2,if=none`, dir));
  });
  test('does not take a longer name, nor the same path in another tree, for it', () => {
    assert.ok(!mentionsDir(`${dir}9/guests`, dir));
    assert.ok(!mentionsDir(`${dir}.old`, dir));
    assert.ok(!mentionsDir(`/srv/ci-root${dir}/guests/c1`, dir));
  });
});

describe('thingsOf', () => {
  const dead = '/tmp/trivisor-test-sys-DEAD01';
  const live = '/tmp/trivisor-test-sys-LIVE01';
  const run = (dir: string, more: Partial<RunFacts> = {}): RunFacts => ({
    dir,
    marker: marker(1, 1, { stateDirs: [dir] }),
    stateDirs: [dir],
    guests: { [dir]: ['c1', 'v1'] },
    networks: { [dir]: ['tn1', 'trivisor0'] },
    runc: [{ root: `${dir}/runc`, id: 'c1' }],
    ...more,
  });
  const proc = (pid: number, more: Partial<ProcessFacts>): ProcessFacts => ({
    pid,
    ppid: 1,
    startTime: pid * 10,
    comm: 'x',
    state: 'S',
    cmdline: [],
    trivisorDir: undefined,
    sameRoot: true,
    cgroups: [],
    netns: 'net:[1]',
    ...more,
  });
  const deadParent = cgroupParentOf(dead);
  const liveParent = cgroupParentOf(live);
  const tap = hostPortName(dead, 'v1', 'eth0');
  const detached = hostPortName(dead, 'v1', 'eth1');
  const host: HostFacts = {
    processes: [
      proc(10, { comm: 'node', cmdline: ['node', 'src/cli/main.ts', 'daemon'], trivisorDir: dead }),
      proc(11, { comm: 'qemu-system-x86', cmdline: ['qemu-system-x86_64', '-drive', `file=${dead}/g/v1/d`] }),
      proc(12, { comm: 'sh', cgroups: [`${deadParent}/c1`], sameRoot: false }),
      proc(13, { comm: 'dnsmasq', cmdline: ['dnsmasq', `--pid-file=${dead}/networks/tn1/dnsmasq.pid`] }),
      proc(14, { comm: 'sleep', cmdline: ['sleep', '60'], netns: 'net:[77]' }),
      // Its etcd members (detached, so they outlive the test process): a test's own, a managed one.
      proc(15, { comm: 'etcd', cmdline: ['etcd', '--name=etcd', `--data-dir=${dead}/etcd/data`] }),
      proc(16, { comm: 'etcd', cmdline: ['etcd', '--name=m1', `--data-dir=${dead}/m1-state/etcd/data`] }),
      // Not the dead run's: a shell an engineer left in it, a chroot's copy of the path, the live run.
      proc(20, { comm: 'bash', cmdline: ['-bash'], trivisorDir: dead }),
      proc(21, { comm: 'qemu-system-x86', cmdline: ['qemu', `${dead}/x`], sameRoot: false }),
      proc(22, { comm: 'node', cmdline: ['node', 'main.ts', 'daemon'], trivisorDir: live }),
      proc(23, { comm: 'init', cgroups: [`${liveParent}/c1`], sameRoot: false }),
      proc(24, { comm: 'qemu-system-x86', cmdline: ['qemu', `${live}/guests/v1`] }),
      // The live run's etcd, and the host's own.
      proc(26, { comm: 'etcd', cmdline: ['etcd', `--data-dir=${live}/etcd/data`] }),
      proc(27, { comm: 'etcd', cmdline: ['/usr/bin/etcd', '--data-dir=/var/lib/etcd/default'] }),
      proc(25, { comm: 'sleep', cmdline: ['sleep', `${dead}/x`], state: 'Z' }),
      // The sweeper itself, whatever it names.
      proc(30, { comm: 'node', cmdline: ['node', 'test/leftovers.ts', dead] }),
    ],
    mounts: [
      '/',
      `${dead}/guests/c1/rootfs`,
      `${dead}/storage-pools/p`,
      `${dead}9/x`,
      `${live}/guests/c1/rootfs`,
    ],
    links: [
      { name: 'eth0' },
      { name: 'tn1', alias: ownerAlias(dead), kind: 'bridge' },
      { name: tap, master: 'tn1', kind: 'tun' },
      { name: detached, kind: 'tun' },
      { name: `${detached}i`, kind: 'ifb' },
      { name: 'tvtup99', kind: 'veth' },
      { name: 'trivisor0', alias: ownerAlias('/var/lib/trivisor'), kind: 'bridge' },
      { name: 'tn2', alias: ownerAlias(live), kind: 'bridge' },
      { name: hostPortName(live, 'v1', 'eth0'), master: 'tn2', kind: 'tun' },
    ],
    cgroups: [
      { hierarchy: 'pids', path: deadParent },
      { hierarchy: 'pids', path: `${deadParent}/c1` },
      { hierarchy: 'memory', path: deadParent },
      { hierarchy: 'memory', path: `${deadParent}/c1` },
      { hierarchy: 'pids', path: liveParent },
      { hierarchy: 'pids', path: '/trivisor-c6596532' },
    ],
    loops: [
      { device: '/dev/loop3', backingFile: `${dead}/storage-pools/p.img`, autoclear: true },
      { device: '/dev/loop4', backingFile: `${live}/storage-pools/p.img`, autoclear: true },
    ],
    netns: [
      { name: 'tvtinet99', id: 'net:[77]' },
      { name: 'other', id: 'net:[78]' },
    ],
    nftTables: [
      { family: 'ip', name: 'trivisor-tn1' },
      { family: 'bridge', name: 'trivisor-acl-tn1' },
      { family: 'bridge', name: `trivisor-${tap}` },
      { family: 'ip', name: 'trivisor-trivisor0' },
      { family: 'ip', name: 'trivisor-tn2' },
    ],
  };
  const deadRun = run(dead, {
    marker: marker(1, 1, { stateDirs: [dead], netns: ['tvtinet99'], links: ['tvtup99'] }),
  });
  const things = thingsOf(deadRun, host, new Set([30]));
  const lines = things.map(describeThing);

  test("a dead run's processes: its daemon, guests by cgroup or path, dnsmasq, what runs in its netns, its etcd", () => {
    const pids = things.flatMap((t) => (t.kind === 'process' ? [t.pid] : []));
    assert.deepEqual(pids, [10, 11, 12, 13, 14, 15, 16]);
  });

  test('its mounts deepest first, loop devices, runc containers, cgroups, netns', () => {
    assert.deepEqual(
      things.filter((t) => t.kind === 'mount').map((t) => t.path),
      [`${dead}/guests/c1/rootfs`, `${dead}/storage-pools/p`],
    );
    assert.ok(lines.includes(`loop device /dev/loop3 on ${dead}/storage-pools/p.img`));
    assert.ok(!lines.some((l) => l.includes('/dev/loop4')));
    assert.ok(lines.includes(`runc container c1 (root ${dead}/runc)`));
    assert.deepEqual(things.filter((t) => t.kind === 'cgroup').map(describeThing), [
      `cgroup ${deadParent}/c1 (pids, memory)`,
      `cgroup ${deadParent} (pids, memory)`,
    ]);
    assert.ok(lines.includes('network namespace tvtinet99'));
    assert.ok(!lines.includes('network namespace other'));
  });

  test('its bridge by owner alias, ports on it or named after its guests, claimed links; ports first', () => {
    const links = things.filter((t) => t.kind === 'link').map((t) => t.name);
    assert.deepEqual(links, [tap, detached, `${detached}i`, 'tvtup99', 'tn1']);
  });

  test("its nft tables, but not those of a same-named network whose bridge is another daemon's", () => {
    assert.deepEqual(
      things.filter((t) => t.kind === 'nft').map((t) => `${t.family} ${t.name}`),
      ['ip trivisor-tn1', 'bridge trivisor-acl-tn1', `bridge trivisor-${tap}`],
    );
  });

  test("nothing of the live run, the host's own daemon or the host is listed", () => {
    for (const l of lines) {
      assert.ok(!l.includes(live), l);
      assert.ok(!/trivisor0|tn2|c6596532|eth0 /.test(l), l);
    }
    const liveThings = thingsOf(run(live), host, new Set([30]));
    assert.ok(!liveThings.map(describeThing).some((l) => l.includes(dead)));
    assert.deepEqual(
      liveThings.flatMap((t) => (t.kind === 'process' ? [t.pid] : [])),
      [22, 23, 24, 26],
    );
    assert.ok(!lines.some((l) => l.includes('/var/lib/etcd')), "the host's own etcd is nobody's leftover");
  });

  test('a bare cgroup parent is housekeeping, a guest cgroup is a leftover', () => {
    const cgroups = things.filter((t) => t.kind === 'cgroup');
    assert.deepEqual(
      cgroups.map((t) => isGuestLeftover(t, [dead])),
      [true, false],
    );
  });
});
