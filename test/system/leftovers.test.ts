import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cgroupParentOf } from '../../src/drivers/guest-cgroup.ts';
import { cgroupDirs } from '../../src/host/cgroups-v1.ts';
import { mountPointsUnder } from '../../src/host/mounts.ts';
import { hostPortName } from '../../src/network/guest-networking.ts';
import { markerOf, removeRunDir, sessionLogOf } from '../leftovers.ts';
import { alive, type Daemon, eventually, gone, startDaemon } from './harness.ts';

// A test process killed by a timeout leaves its daemon's guests running. The next run's
// sweep must remove all of it, and nothing of a live run beside it.

const LEFTOVERS = path.resolve(import.meta.dirname, '../leftovers.ts');
const KILLED_RUN = path.resolve(import.meta.dirname, 'killed-run.ts');

interface KilledRun {
  stateDir: string;
  daemonPid: number;
  sleeperPid: number;
  network: string;
  netns: string;
  guests: Record<string, number | null>;
}

// The run to kill is a session of its own: what it leaves is this test's, not the suite's to report.
const SESSION = `leftovers-test-${process.pid}`;
const env = { ...process.env, TRIVISOR_TEST_SESSION: SESSION };
const leftovers = (mode: string) =>
  spawnSync(process.execPath, [LEFTOVERS, mode], { encoding: 'utf8', timeout: 120_000, env });
const linkExists = (name: string) => spawnSync('ip', ['link', 'show', 'dev', name]).status === 0;
const nftTables = () => spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' }).stdout;
const loopsOf = (file: string) => spawnSync('losetup', ['-j', file], { encoding: 'utf8' }).stdout.trim();

/** Loop devices whose backing file is under `dir` (removed files too). */
function loopDevicesUnder(dir: string): Array<{ device: string; autoclear: boolean }> {
  const sys = '/sys/block';
  return readdirSync(sys)
    .filter((n) => n.startsWith('loop') && existsSync(`${sys}/${n}/loop/backing_file`))
    .filter((n) => readFileSync(`${sys}/${n}/loop/backing_file`, 'utf8').startsWith(`${dir}/`))
    .map((n) => ({
      device: `/dev/${n}`,
      autoclear: readFileSync(`${sys}/${n}/loop/autoclear`, 'utf8').trim() === '1',
    }));
}

/** Every pid in the cgroups of a state dir (the pids hierarchy sees every task). */
function cgroupPids(stateDir: string): number[] {
  const pids: number[] = [];
  const walk = (dir: string) => {
    const procs = existsSync(path.join(dir, 'cgroup.procs'))
      ? readFileSync(path.join(dir, 'cgroup.procs'), 'utf8')
      : '';
    pids.push(...procs.split('\n').filter(Boolean).map(Number));
    const ls = spawnSync('find', [dir, '-mindepth', '1', '-maxdepth', '1', '-type', 'd'], {
      encoding: 'utf8',
    });
    for (const sub of ls.stdout.split('\n').filter(Boolean)) walk(sub);
  };
  const top = `/sys/fs/cgroup/pids${cgroupParentOf(stateDir)}`;
  if (existsSync(top)) walk(top);
  return pids;
}

describe('a killed test run is swept by the next one; a live run beside it is left alone', {
  timeout: 600_000,
}, () => {
  let live: Daemon;
  let livePid: number;
  let child: ChildProcess | undefined;
  let killed: KilledRun | undefined;

  before(async () => {
    live = await startDaemon();
    live.ok(['launch', 'busybox', 'lc']);
    const g = JSON.parse(live.ok(['info', 'lc', '--format', 'json'])) as { state: { pid: number } };
    livePid = g.state.pid;
  });

  after(async () => {
    // Whatever the test got to: nothing of the killed run may stay.
    child?.kill('SIGKILL');
    if (killed) {
      for (const pid of [killed.daemonPid, killed.sleeperPid]) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {}
      }
      if (existsSync(killed.stateDir) || existsSync(markerOf(killed.stateDir))) {
        await removeRunDir(killed.stateDir);
      }
    }
    rmSync(sessionLogOf(SESSION), { force: true });
    await live?.destroy();
  });

  test('its daemon, ct, pvm and vm guests, dnsmasq, mounts, loop device, bridge, port, nft tables, netns, cgroups and dir go', async () => {
    child = spawn(process.execPath, [KILLED_RUN], { stdio: ['ignore', 'pipe', 'inherit'], env });
    const run = child;
    killed = await new Promise<KilledRun>((resolve, reject) => {
      let out = '';
      run.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        const line = out.split('\n')[0];
        if (out.includes('\n') && line) resolve(JSON.parse(line) as KilledRun);
      });
      run.once('exit', (code) => reject(new Error(`the run to kill exited (${code}) before it was ready`)));
    });
    const k = killed;
    const guestPids = cgroupPids(k.stateDir);
    const dnsmasqPid = Number(
      readFileSync(path.join(k.stateDir, 'networks', k.network, 'dnsmasq.pid'), 'utf8').trim(),
    );
    const port = hostPortName(k.stateDir, 'kc', 'eth0');
    const poolImage = path.join(k.stateDir, 'storage-pools', 'kb.img');

    // What the run made is there.
    assert.ok(k.guests.kc && k.guests.kp && k.guests.kv, 'the guests run');
    for (const pid of [k.guests.kc, k.guests.kp, k.guests.kv])
      assert.ok(guestPids.includes(pid), 'in cgroups');
    assert.ok(alive(dnsmasqPid), 'dnsmasq runs');
    assert.ok((await mountPointsUnder(k.stateDir)).length > 0, 'mounts');
    assert.notEqual(loopsOf(poolImage), '', 'the pool has a loop device');
    assert.ok(linkExists(k.network) && linkExists(port), 'bridge and port');
    assert.match(nftTables(), new RegExp(`trivisor-${k.network}\\b`));
    assert.ok(existsSync(`/run/netns/${k.netns}`), 'netns');

    // Killed as a timeout kills a test: the test process alone. Its daemon and guests live on.
    run.kill('SIGKILL');
    await eventually('the run is dead', () => run.exitCode !== null || run.signalCode !== null);
    assert.ok(alive(k.daemonPid), 'its daemon outlives it');
    assert.ok(
      guestPids.every((pid) => alive(pid)),
      'the guests outlive it (what the sweep is for)',
    );

    const check = leftovers('--check');
    assert.equal(check.status, 1, check.stdout + check.stderr);
    assert.ok(check.stdout.includes(`${k.stateDir} (dead run)`), check.stdout);
    assert.match(check.stdout, /runc container kc/);
    assert.match(check.stdout, new RegExp(`bridge ${k.network}`));
    assert.ok(!check.stdout.includes(live.stateDir), 'the live run is not listed');

    const sweep = leftovers('--sweep');
    assert.ok(sweep.stdout.includes(`${k.stateDir} (dead run, swept)`), sweep.stdout + sweep.stderr);

    for (const pid of [k.daemonPid, ...guestPids, dnsmasqPid, k.sleeperPid]) {
      assert.ok(gone(pid), `process ${pid} is gone`);
    }
    assert.deepEqual(await mountPointsUnder(k.stateDir), [], 'no mounts');
    // A UML guest of another run, started while the pool was mounted, holds a copy of that mount
    // in its own mount namespace: the loop device then detaches (autoclear) when that guest ends.
    const mountinfo = readFileSync('/proc/self/mountinfo', 'utf8');
    for (const loop of loopDevicesUnder(k.stateDir)) {
      assert.ok(
        loop.autoclear && !mountinfo.includes(` ${loop.device} `),
        `loop device ${loop.device} let go`,
      );
    }
    assert.ok(!linkExists(k.network), 'no bridge');
    assert.ok(!linkExists(port), 'no port');
    assert.doesNotMatch(nftTables(), new RegExp(`trivisor-(${k.network}|${port})\\b`), 'no nft tables');
    assert.ok(!existsSync(`/run/netns/${k.netns}`), 'no netns');
    assert.deepEqual(await cgroupDirs(cgroupParentOf(k.stateDir)), [], 'no cgroups');
    assert.ok(!existsSync(k.stateDir), 'no state dir');
    assert.ok(!existsSync(markerOf(k.stateDir)), 'no marker');
    killed = undefined;

    // Its session's check still hears of it, once.
    const later = leftovers('--check');
    assert.equal(later.status, 1, later.stdout);
    assert.ok(later.stdout.includes(`${k.stateDir} (dead run of this session, swept by a later test file)`));
    assert.match(later.stdout, /runc container kc/);
    assert.equal(leftovers('--check').status, 0, 'reported once');

    // The live run beside it: untouched.
    assert.ok(alive(livePid), 'the live guest still runs');
    assert.equal(
      (JSON.parse(live.ok(['info', 'lc', '--format', 'json'])) as { state: { pid: number } }).state.pid,
      livePid,
    );
    assert.equal(live.ok(['exec', 'lc', '--', 'hostname']), 'lc\n');
    assert.ok(existsSync(live.stateDir) && existsSync(markerOf(live.stateDir)), 'its dir and marker stay');
  });
});
