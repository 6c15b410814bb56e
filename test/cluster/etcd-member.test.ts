import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  bootstrapEtcdMember,
  createEtcdMember,
  type EtcdMember,
  type EtcdMemberOptions,
  type EtcdTls,
  etcdPaths,
  joinEtcdCluster,
} from '../../src/cluster/etcd-member.ts';
import { isTrivisorError } from '../../src/core/errors.ts';
import { createLogger, silentLogger } from '../../src/host/logger.ts';
import { isSameProcess, readProcessIdentity } from '../../src/host/proc-stat.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { type EtcdStore, openEtcdStore } from '../../src/store/etcd-store.ts';
import { cleanUpRun, makeRunDir, markerOf, readRunFacts, sweepRuns } from '../leftovers.ts';
import { freePort } from '../store/etcd-server.ts';
import { makeTestCa } from '../store/test-certs.ts';

// Managed etcd members (src/cluster/etcd-member.ts), for real: etcd 3.4 on loopback ports,
// each member's state dir in this file's test run, with and without TLS.

let runDir: string;
const members: EtcdMember[] = [];

before(async () => {
  runDir = await makeRunDir('etcd-member');
});

after(async () => {
  for (const m of members) await m.stop().catch(() => {});
  if (runDir) await cleanUpRun(runDir);
});

async function optionsFor(name: string, tls?: EtcdTls): Promise<EtcdMemberOptions> {
  return {
    name,
    stateDir: join(runDir, `${name}-state`),
    address: '127.0.0.1',
    clientPort: await freePort(),
    peerPort: await freePort(),
    ...(tls ? { tls } : {}),
    runner: hostRunner(),
    log: silentLogger(),
    checkIntervalMs: 200,
    restartDelayMs: 200,
  };
}

const tracked = (m: EtcdMember) => {
  members.push(m);
  return m;
};

async function storeOf(endpoints: string[], tls?: EtcdTls): Promise<EtcdStore> {
  return openEtcdStore({ endpoints, ...(tls ? { tls } : {}) });
}

/** How many processes run with `--data-dir=DIR` (one etcd per member, never two). */
function countProcessesNaming(dataDir: string): number {
  let n = 0;
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').includes(`--data-dir=${dataDir}`)) n++;
    } catch {
      // gone meanwhile
    }
  }
  return n;
}

/** Runs the daemon's side in a process of its own; resolves with what it printed once its member serves. */
async function daemonSide(
  options: EtcdMemberOptions | undefined,
  ownRun = false,
): Promise<{ child: ReturnType<typeof spawn>; stateDir: string; pid: number }> {
  const given = options
    ? {
        name: options.name,
        stateDir: options.stateDir,
        address: options.address,
        clientPort: options.clientPort,
        peerPort: options.peerPort,
        ...(options.tls ? { tls: options.tls } : {}),
      }
    : { name: 'killed', address: '127.0.0.1', clientPort: await freePort(), peerPort: await freePort() };
  const child = spawn(
    process.execPath,
    [
      join(import.meta.dirname, 'etcd-member-daemon.ts'),
      JSON.stringify(given),
      ...(ownRun ? ['--own-run'] : []),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const line = await new Promise<string>((resolve, reject) => {
    let text = '';
    child.stdout?.on('data', (d: Buffer) => {
      text += d.toString();
      if (text.includes('\n')) resolve(text.split('\n')[0] ?? '');
    });
    child.once('exit', (code) => reject(new Error(`the daemon side exited with ${code}`)));
  });
  return { child, ...(JSON.parse(line) as { stateDir: string; pid: number }) };
}

async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const killed = (child: ReturnType<typeof spawn>) =>
  new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });

for (const mode of ['plain', 'tls'] as const) {
  describe(`a managed etcd member (${mode})`, () => {
    let tls: EtcdTls | undefined;
    before(() => {
      if (mode === 'plain') return;
      const ca = makeTestCa(join(runDir, 'ca'));
      tls = { caFile: ca.certFile, ...ca.issue('member') };
    });

    test('bootstrap starts a member that serves, keeps its data root-only, and a second start adopts it', async () => {
      const options = await optionsFor(`solo-${mode}`, tls);
      const member = tracked(await bootstrapEtcdMember(options));
      assert.match(member.clientUrl, mode === 'tls' ? /^https:\/\/127\.0\.0\.1:/ : /^http:\/\/127\.0\.0\.1:/);
      const store = await storeOf([member.clientUrl], tls);
      try {
        await store.put('k', 'v');
      } finally {
        await store.close();
      }
      const paths = etcdPaths(options.stateDir);
      for (const dir of [paths.dir, paths.dataDir]) assert.equal(statSync(dir).mode & 0o777, 0o700, dir);
      for (const file of [paths.record, paths.pidFile, paths.log]) {
        assert.equal(statSync(file).mode & 0o777, 0o600, file);
      }
      // Another daemon life of the same state dir: it adopts, it does not start a second etcd.
      const again = createEtcdMember(options);
      const { adopted, process } = await again.start();
      again.detach();
      assert.equal(adopted, true);
      assert.deepEqual(process, member.process());
      assert.equal(countProcessesNaming(member.dataDir), 1);
    });

    test('a daemon killed with -9 leaves etcd running, and the next daemon adopts it with its data', async () => {
      const options = await optionsFor(`adopt-${mode}`, tls);
      const side = await daemonSide(options);
      const etcd = await readProcessIdentity(side.pid);
      assert.ok(etcd);
      const before = await storeOf(
        [`${mode === 'tls' ? 'https' : 'http'}://127.0.0.1:${options.clientPort}`],
        tls,
      );
      await before.put('written', 'before the kill');
      await before.close();
      await killed(side.child);
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.equal(await isSameProcess(etcd), true, 'etcd died with the daemon');

      const member = tracked(createEtcdMember(options));
      const { adopted, process } = await member.start();
      assert.equal(adopted, true);
      assert.deepEqual(process, etcd);
      assert.equal(countProcessesNaming(member.dataDir), 1);
      const store = await storeOf([member.clientUrl], tls);
      try {
        assert.equal((await store.get('written'))?.value, 'before the kill');
      } finally {
        await store.close();
      }
    });

    test('an etcd killed with -9 is started again by the supervisor, with its data', async () => {
      const member = tracked(await bootstrapEtcdMember(await optionsFor(`restart-${mode}`, tls)));
      const store = await storeOf([member.clientUrl], tls);
      try {
        await store.put('survives', 'yes');
        const first = member.process();
        assert.ok(first);
        process.kill(first.pid, 'SIGKILL');
        await waitFor(() => member.restarts() === 1 && member.process()?.pid !== first.pid);
        // The store reconnects by itself once the new etcd serves.
        await waitFor(async () => (await store.get('survives').catch(() => undefined))?.value === 'yes');
        assert.equal(countProcessesNaming(member.dataDir), 1);
      } finally {
        await store.close();
      }
    });

    test('an etcd that keeps dying is started again with growing pauses, and serves again once it can', async () => {
      // etcd through a wrapper that notes every start (its time in ns) and, while told to, fails
      // at once. What is asserted is the order of events, not how many fit in a time: each retry
      // the supervisor announces pauses twice as long as the one before (200 ms first, the
      // options' restartDelayMs), each is followed by one start only (a start at every check,
      // each 0.2 s, would make many more), and no start comes sooner than its pause.
      const dir = join(runDir, `loop-${mode}-bin`);
      mkdirSync(dir, { recursive: true });
      const wrapper = join(dir, 'etcd');
      writeFileSync(
        wrapper,
        `#!/bin/sh\ndate +%s%N >> ${dir}/attempts\n[ -e ${dir}/fail ] && exit 1\nexec etcd "$@"\n`,
        { mode: 0o755 },
      );
      const retries: number[] = [];
      const log = createLogger({
        level: 'warn',
        destination: '/dev/null',
        forward: {
          to: (line) => {
            if (line.message === 'etcd is not running; starting it again')
              retries.push(Number(line.context.retryInMs));
          },
        },
      });
      const options = { ...(await optionsFor(`loop-${mode}`, tls)), etcdBinary: wrapper, log };
      const member = tracked(await bootstrapEtcdMember(options));
      const first = member.process();
      assert.ok(first);
      writeFileSync(join(dir, 'fail'), '');
      const starts = () => readFileSync(join(dir, 'attempts'), 'utf8').trim().split('\n').map(BigInt);
      const startsBefore = starts().length;
      process.kill(first.pid, 'SIGKILL');
      // A deadline that only a hung run misses.
      await waitFor(() => retries.length >= 5, 120_000);
      const announced = retries.length;
      const since = starts().slice(startsBefore);
      assert.deepEqual(retries.slice(0, 5), [0, 200, 400, 800, 1600], 'each pause twice the one before');
      // The newest retry may still be in its pause: its start is not there yet.
      assert.ok(
        since.length === announced || since.length === announced - 1,
        `${since.length} starts for ${announced} retries`,
      );
      for (let i = 1; i < since.length; i++) {
        const gapMs = Number(((since[i] ?? 0n) - (since[i - 1] ?? 0n)) / 1_000_000n);
        // The clock's and the timer's granularity aside, never sooner than the pause.
        assert.ok(
          gapMs >= (retries[i] ?? 0) - 10,
          `start ${i + 1} came ${gapMs} ms after the one before, pause ${retries[i]} ms`,
        );
      }
      rmSync(join(dir, 'fail'));
      const store = await storeOf([member.clientUrl], tls);
      try {
        await waitFor(
          async () => (await store.put('back', '1').catch(() => undefined)) !== undefined,
          120_000,
        );
      } finally {
        await store.close();
      }
      assert.equal(countProcessesNaming(member.dataDir), 1);
    });

    test('stop() stops etcd and keeps its data; the member starts again from it', async () => {
      const options = await optionsFor(`stop-${mode}`, tls);
      const member = tracked(await bootstrapEtcdMember(options));
      let store = await storeOf([member.clientUrl], tls);
      await store.put('kept', '1');
      await store.close();
      const first = member.process();
      assert.ok(first);
      await member.stop();
      assert.equal(await isSameProcess(first), false);
      await new Promise((resolve) => setTimeout(resolve, 500));
      assert.equal(member.restarts(), 0, 'a stopped member is not started again');

      const again = tracked(createEtcdMember(options));
      const { adopted } = await again.start();
      assert.equal(adopted, false);
      store = await storeOf([again.clientUrl], tls);
      try {
        assert.equal((await store.get('kept'))?.value, '1');
      } finally {
        await store.close();
      }
    });
  });
}

describe('watch progress (decision 0087)', () => {
  test("a watch of a quiet prefix hears how far the store moved on at the member's progress interval", async () => {
    // 500 ms here so the test is short; the daemon's is 60 s. At etcd's default (10 min) the
    // watch's progress would stay where it began.
    const options = { ...(await optionsFor('progress')), progressNotifyIntervalMs: 500 };
    const member = tracked(await bootstrapEtcdMember(options));
    const store = await storeOf([member.clientUrl]);
    try {
      const from = (await store.revision()) + 1;
      const lost: string[] = [];
      const delivered: number[] = [];
      const watcher = store.watch(
        'quiet/',
        { fromRevision: from, onLost: (e) => lost.push(e.message) },
        (_events, revision) => delivered.push(revision),
      );
      let last = 0;
      for (let i = 0; i < 5; i++) last = (await store.put(`busy/${i}`, 'x')).revision;
      assert.ok(watcher.progress, 'an etcd watch tells its progress');
      await waitFor(() => (watcher.progress?.() ?? 0) >= last, 10_000);
      watcher.cancel();
      assert.deepEqual(delivered, [], 'nothing of the quiet prefix was delivered');
      assert.deepEqual(lost, []);
    } finally {
      await store.close();
    }
  });
});

describe('bad input', () => {
  test('starting a member that was never bootstrapped or joined is FailedPrecondition in one line', async () => {
    const member = createEtcdMember(await optionsFor('never'));
    await assert.rejects(
      member.start(),
      (e) =>
        isTrivisorError(e) &&
        e.code === 'FailedPrecondition' &&
        /bootstrap a cluster or join one/.test(e.message),
    );
  });

  test('a member name that is not a DNS label, or an address that is not an IP, is InvalidArgument', async () => {
    const options = await optionsFor('ok');
    assert.throws(
      () => createEtcdMember({ ...options, name: 'Not_A_Label' }),
      (e) => isTrivisorError(e) && e.code === 'InvalidArgument',
    );
    await assert.rejects(
      bootstrapEtcdMember({ ...options, name: 'badaddr', address: 'example.com' }),
      (e) => isTrivisorError(e) && e.code === 'InvalidArgument',
    );
  });
});

describe('a dead test run', () => {
  test("the sweeper kills a killed run's etcd (it names the run's directory)", async () => {
    const side = await daemonSide(undefined, true);
    const etcd = await readProcessIdentity(side.pid);
    assert.ok(etcd);
    await killed(side.child);
    const dir = join(side.stateDir, '..');
    assert.ok(readFileSync(markerOf(dir), 'utf8').includes('"owner"'));
    const [report] = await sweepRuns([readRunFacts(dir)]);
    assert.ok(report);
    assert.ok(
      report.found.some((t) => t.kind === 'process' && t.pid === etcd.pid),
      `etcd not found by the sweeper: ${JSON.stringify(report.found)}`,
    );
    assert.deepEqual(report.left, []);
    assert.equal(await isSameProcess(etcd), false);
  });
});

for (const mode of ['plain', 'tls'] as const) {
  describe(`a three-member cluster on loopback (${mode})`, () => {
    test('forms by bootstrap and two joins, and survives the loss of one member', async () => {
      const ca = mode === 'tls' ? makeTestCa(join(runDir, 'cluster-ca')) : undefined;
      const tlsOf = (name: string): EtcdTls | undefined =>
        ca ? { caFile: ca.certFile, ...ca.issue(name) } : undefined;
      const o1 = await optionsFor(`m1-${mode}`, tlsOf('m1'));
      const o2 = await optionsFor(`m2-${mode}`, tlsOf('m2'));
      const o3 = await optionsFor(`m3-${mode}`, tlsOf('m3'));
      const m1 = tracked(await bootstrapEtcdMember(o1));
      const admin = tlsOf('admin');
      const m2 = tracked(
        await joinEtcdCluster(o2, { endpoints: [m1.clientUrl], ...(admin ? { tls: admin } : {}) }),
      );
      const m3 = tracked(
        await joinEtcdCluster(o3, {
          endpoints: [m1.clientUrl, m2.clientUrl],
          ...(admin ? { tls: admin } : {}),
        }),
      );
      const endpoints = [m1.clientUrl, m2.clientUrl, m3.clientUrl];
      const store = await storeOf(endpoints, admin);
      const seen: string[] = [];
      const watcher = store.watch('c/', { onLost: (e) => assert.fail(e) }, (events) =>
        seen.push(...events.map((e) => e.kv.value)),
      );
      try {
        await store.put('c/1', 'three members');
        // Every member has it (each read from one member alone).
        for (const url of endpoints) {
          const one = await storeOf([url], admin);
          try {
            assert.equal((await one.get('c/1'))?.value, 'three members', url);
          } finally {
            await one.close();
          }
        }
        // A duplicate name is refused before anything is added.
        const dup = {
          ...(await optionsFor(`m2-${mode}`, tlsOf('m2b'))),
          stateDir: join(runDir, `dup-${mode}-state`),
        };
        await assert.rejects(
          joinEtcdCluster(dup, { endpoints: [m1.clientUrl], ...(admin ? { tls: admin } : {}) }),
          (e) =>
            isTrivisorError(e) &&
            e.code === 'FailedPrecondition' &&
            new RegExp(`already has a member named m2-${mode}`).test(e.message),
        );

        // m3 is lost: its supervisor and its etcd die together (a host gone).
        m3.detach();
        const pid3 = m3.process()?.pid;
        assert.ok(pid3);
        process.kill(pid3, 'SIGKILL');
        await store.put('c/2', 'two of three');
        assert.equal((await store.get('c/2'))?.value, 'two of three');
        await waitFor(() => seen.length >= 2);
        assert.deepEqual(seen, ['three members', 'two of three']);

        // It comes back and catches up.
        const back = tracked(createEtcdMember(o3));
        assert.equal((await back.start()).adopted, false);
        const only3 = await storeOf([back.clientUrl], admin);
        try {
          await waitFor(
            async () => (await only3.get('c/2').catch(() => undefined))?.value === 'two of three',
          );
        } finally {
          await only3.close();
        }
      } finally {
        watcher.cancel();
        await store.close();
      }
    });
  });
}
