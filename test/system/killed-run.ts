/**
 * A test run to be killed (by test/system/leftovers.test.ts): a daemon on a run dir of
 * this process with a ct guest on a network (bridge, veth, dnsmasq, nft tables), a pvm
 * guest (UML), a vm guest (QEMU), a btrfs pool (a loop device and a mount), and a network namespace with a
 * process in it. Prints what it made as one JSON line, then waits to be killed.
 */
import { spawn, spawnSync } from 'node:child_process';
import { startDaemon } from './harness.ts';

const sfx = String(process.pid % 10000);
const net = `tkn${sfx}`;
const netns = `tvtkill${sfx}`;

const d = await startDaemon();
d.ok(['network', 'create', net, 'ipv4.address=198.18.231.1/24']);
d.ok(['launch', 'busybox', 'kc', '-n', net]);
d.ok(['launch', 'busybox', 'kp', '--model', 'pvm', '-c', 'limits.memory=64MiB']);
d.ok(['launch', 'busybox', 'kv', '--model', 'vm', '-c', 'limits.memory=128MiB']);
d.ok(['storage', 'create', 'kb', 'btrfs', 'size=256MiB']);
d.claim({ netns: [netns] });
if (spawnSync('ip', ['netns', 'add', netns]).status !== 0) throw new Error(`cannot add netns ${netns}`);
const sleeper = spawn('nsenter', [`--net=/run/netns/${netns}`, 'sleep', '3600'], {
  stdio: 'ignore',
  detached: true,
});
const guests = JSON.parse(d.ok(['list', '--format', 'json'])) as Array<{
  name: string;
  state: { pid: number | null };
}>;
process.stdout.write(
  `${JSON.stringify({
    stateDir: d.stateDir,
    daemonPid: d.process.pid,
    sleeperPid: sleeper.pid,
    network: net,
    netns,
    guests: Object.fromEntries(guests.map((g) => [g.name, g.state.pid])),
  })}\n`,
);
// Killed here, as a test process killed by a timeout would be.
setInterval(() => {}, 60_000);
