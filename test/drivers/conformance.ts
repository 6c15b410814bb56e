import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { after, before, describe, type TestContext, test } from 'node:test';
import { isTrivisorError } from '../../src/core/errors.ts';
import { formatInjectedFile } from '../../src/core/guest-files.ts';
import type { GuestSpec, ProcessIdentity } from '../../src/core/types.ts';
import type { GuestDriver, ImageHandle } from '../../src/drivers/guest-driver.ts';
import { withInit } from './busybox-image-handle.ts';
import { execIn } from './exec-helpers.ts';
import { testGuestSpec } from './guest-spec.ts';

/** A driver set up for the conformance suite, with what the suite needs to look behind it. */
export interface DriverUnderTest {
  driver: GuestDriver;
  /** A busybox image (init: busybox init, stop signal in its properties). */
  image: ImageHandle;
  /** Removes everything the setup made (state dir, image). */
  cleanup(): Promise<void>;
  /** Config every guest of this run gets (e.g. security.privileged=true). */
  guestConfig?: Record<string, string>;
  /** A second driver instance on the same state dir, as after a daemon restart. */
  reopen?(): GuestDriver;
  /**
   * Throws when anything of the guest is left on the host. With `runtimeOnly`
   * only what start made (mounts, cgroups, runtime state) counts: the guest's
   * files may stay.
   */
  assertNoLeftovers?(spec: GuestSpec, options?: { runtimeOnly?: boolean }): Promise<void>;
  /**
   * Set, to the reason, by a driver whose guests run no programs (the in-memory fake):
   * the checks that need the guest's shell, tools or init are skipped with it.
   */
  noGuestPrograms?: string;
  /** Kills the guest's init from outside, as a crash would; without it: SIGKILL to its pid. */
  killInit?(spec: GuestSpec, init: ProcessIdentity): void;
}

/** Every byte value, four times. */
const ALL_BYTES = Buffer.from(Array.from({ length: 1024 }, (_, i) => i % 256));
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** Runs `work`; a NotSupported error skips the test with its reason (the driver cannot do this). */
async function orSkip(t: TestContext, work: () => Promise<void>): Promise<void> {
  try {
    await work();
  } catch (e) {
    if (isTrivisorError(e) && e.code === 'NotSupported') {
      t.skip(e.message);
      return;
    }
    throw e;
  }
}

/** Polls `check` until it holds; fails with `what` after `timeoutMs`. */
async function waitUntil(
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Whatever state the guest is in, gets rid of it (after a failed test). */
async function forceDelete(driver: GuestDriver, spec: GuestSpec): Promise<void> {
  await driver.stop(spec, { timeoutMs: 0, force: true }).catch(() => {});
  await driver.delete(spec).catch(() => {});
}

/**
 * The lifecycle suite every guest driver runs (containerd's snapshotter
 * testsuite, Incus's driver tests): create, start, exec, freeze, stop, restart,
 * limits, re-adoption, delete, failure rollback.
 */
export function runDriverConformance(name: string, makeDriver: () => Promise<DriverUnderTest>): void {
  describe(`${name}: guest driver conformance`, () => {
    let dut: DriverUnderTest;
    let driver: GuestDriver;
    let spec: GuestSpec;
    let identity: ProcessIdentity | undefined;
    const made: GuestSpec[] = [];
    const guest = (guestName: string, config: Record<string, string> = {}): GuestSpec => {
      const s = testGuestSpec(guestName, driver.model, { ...dut.guestConfig, ...config });
      made.push(s);
      return s;
    };
    const needRunning = (t: TestContext): boolean => {
      if (identity) return true;
      t.skip('the guest did not start');
      return false;
    };
    /** False, with the test skipped for the driver's reason, when its guests run no programs. */
    const needPrograms = (t: TestContext): boolean => {
      if (dut.noGuestPrograms === undefined) return true;
      t.skip(dut.noGuestPrograms);
      return false;
    };
    // Larger than one agent chunk of every model (1 MiB for vm, 1 KiB on pvm's serial line).
    const big = randomBytes(1024 * 1024 + 4099);
    const pushed = [
      ['/root/all-bytes.bin', ALL_BYTES, 0o751, 0, 0],
      ['/tmp/big.bin', big, 0o600, 1000, 1001],
      ['/empty', Buffer.alloc(0), 0o644, 0, 0],
    ] as const;

    before(async () => {
      dut = await makeDriver();
      driver = dut.driver;
      // Injected files: written into the guest at every start, before its init runs.
      spec = guest('conf-main', {
        'files./etc/trivisor-motd': formatInjectedFile({
          mode: 0o640,
          uid: 0,
          gid: 0,
          content: Buffer.from('injected\n'),
        }),
        'files./opt/injected/deep/secret': formatInjectedFile({
          mode: 0o600,
          uid: 1000,
          gid: 1000,
          content: ALL_BYTES,
        }),
      });
    });

    after(async () => {
      for (const s of made) await forceDelete(driver, s);
      await dut?.cleanup();
    });

    test('probe() says the driver is supported on this host', async () => {
      const probe = await driver.probe();
      assert.equal(probe.model, driver.model);
      assert.equal(probe.supported, true, probe.warnings.join('; '));
    });

    test('create() then start() runs the guest, and inspect() reports it running', async () => {
      assert.equal((await driver.inspect(spec, undefined)).state, 'absent');
      await driver.create(spec, dut.image);
      assert.equal((await driver.inspect(spec, undefined)).state, 'stopped');
      identity = await driver.start(spec, dut.image);
      assert.ok(identity.pid > 0);
      const state = await driver.inspect(spec, identity);
      assert.equal(state.state, 'running');
      assert.deepEqual(state.process, identity);
    });

    test('start() on a running guest returns the same init', async (t) => {
      if (!needRunning(t)) return;
      assert.deepEqual(await driver.start(spec, dut.image), identity);
    });

    test('exec passes stdout, stderr and the exit code through', async (t) => {
      if (!needRunning(t) || !needPrograms(t)) return;
      await orSkip(t, async () => {
        const ok = await execIn(driver, spec, ['/bin/sh', '-c', 'echo out; echo err >&2']);
        assert.deepEqual(ok, { code: 0, stdout: 'out\n', stderr: 'err\n' });
        const seven = await execIn(driver, spec, ['/bin/sh', '-c', 'exit 7']);
        assert.equal(seven.code, 7);
        const env = await execIn(driver, spec, ['/bin/sh', '-c', 'echo "$GREETING"; pwd'], {
          env: { GREETING: 'hello' },
        });
        assert.equal(env.stdout, 'hello\n/\n');
      });
    });

    test('files injected at create are there at first boot, with content, mode and owner', async (t) => {
      if (!needRunning(t)) return;
      const motd = await driver.pullFile(spec, '/etc/trivisor-motd');
      assert.equal(motd.data.toString(), 'injected\n');
      assert.deepEqual([motd.mode, motd.uid, motd.gid], [0o640, 0, 0]);
      const secret = await driver.pullFile(spec, '/opt/injected/deep/secret');
      assert.equal(sha256(secret.data), sha256(ALL_BYTES));
      assert.deepEqual([secret.mode, secret.uid, secret.gid], [0o600, 1000, 1000]);
    });

    test("the guest's own tools see the injected files", async (t) => {
      if (!needRunning(t) || !needPrograms(t)) return;
      const r = await execIn(driver, spec, [
        '/bin/sh',
        '-c',
        'cat /etc/trivisor-motd; stat -c "%a %u %g" /etc/trivisor-motd /opt/injected/deep/secret',
      ]);
      assert.equal(r.stdout, 'injected\n640 0 0\n600 1000 1000\n', r.stderr);
    });

    test('pushFile/pullFile round-trip binary and multi-chunk files (sha256) and honour the mode', async (t) => {
      if (!needRunning(t)) return;
      for (const [path, data, mode, uid, gid] of pushed) {
        await driver.pushFile(spec, { path, data, mode, uid, gid });
        const back = await driver.pullFile(spec, path);
        assert.equal(back.data.length, data.length, path);
        assert.equal(sha256(back.data), sha256(data), path);
        assert.deepEqual([back.mode, back.uid, back.gid], [mode, uid, gid], path);
      }
      // A push replaces the file whole; the injected one is written again at the next start.
      await driver.pushFile(spec, {
        path: '/etc/trivisor-motd',
        data: Buffer.from('changed'),
        mode: 0o644,
        uid: 0,
        gid: 0,
      });
      assert.equal((await driver.pullFile(spec, '/etc/trivisor-motd')).data.toString(), 'changed');
      await driver.pushFile(spec, {
        path: '/new/dirs/file',
        data: Buffer.from('x'),
        mode: 0o644,
        uid: 0,
        gid: 0,
        createDirs: true,
      });
      assert.equal((await driver.pullFile(spec, '/new/dirs/file')).data.toString(), 'x');
    });

    test("the guest's own tools see pushed files whole, with their mode and owner", async (t) => {
      if (!needRunning(t) || !needPrograms(t)) return;
      for (const [path, data, mode, uid, gid] of pushed) {
        const inside = await execIn(driver, spec, [
          '/bin/sh',
          '-c',
          'sha256sum "$0" | cut -d" " -f1; stat -c "%a %u %g" "$0"',
          path,
        ]);
        assert.equal(
          inside.stdout,
          `${sha256(data)}\n${mode.toString(8)} ${uid} ${gid}\n`,
          `${path}: ${inside.stderr}`,
        );
      }
    });

    test('file errors a user can cause are typed: missing, directory, missing parent', async (t) => {
      if (!needRunning(t)) return;
      const code = (c: string) => (e: unknown) => isTrivisorError(e) && e.code === c;
      await assert.rejects(driver.pullFile(spec, '/no/such/file'), code('NotFound'));
      await assert.rejects(driver.pullFile(spec, '/etc'), code('InvalidArgument'));
      const push = (path: string) =>
        driver.pushFile(spec, { path, data: Buffer.from('x'), mode: 0o644, uid: 0, gid: 0 });
      await assert.rejects(push('/no/such/dir/file'), code('NotFound'));
      await assert.rejects(push('/etc'), code('InvalidArgument'));
    });

    test('exec pipes stdin through', async (t) => {
      if (!needRunning(t) || !needPrograms(t)) return;
      await orSkip(t, async () => {
        const text = 'line one\nline two\n'.repeat(1000);
        const r = await execIn(driver, spec, ['cat'], { input: text });
        assert.equal(r.code, 0);
        assert.equal(r.stdout, text);
      });
    });

    test('exec with a tty gives the command a terminal and passes the exit code', async (t) => {
      if (!needRunning(t) || !needPrograms(t)) return;
      await orSkip(t, async () => {
        const r = await execIn(
          driver,
          spec,
          ['/bin/sh', '-c', 'test -t 0 && test -t 1 && tty && stty size; exit 5'],
          {
            tty: true,
          },
        );
        assert.equal(r.code, 5, r.stdout);
        assert.match(r.stdout, /\/dev\/pts\/\d+/);
        assert.match(r.stdout, /30 100/, 'the initial size reaches the terminal');
        assert.equal(r.stderr, '');
      });
    });

    test('resize() of a tty session reaches the terminal in the guest', async (t) => {
      if (!needRunning(t) || !needPrograms(t)) return;
      await orSkip(t, async () => {
        const session = await driver.exec(spec, {
          command: ['/bin/sh', '-c', 'sleep 1; stty size'],
          env: {},
          tty: true,
          columns: 80,
          rows: 24,
        });
        const out: Buffer[] = [];
        session.stdout.on('data', (d: Buffer) => out.push(d));
        await new Promise((r) => setTimeout(r, 300));
        session.resize(132, 43);
        assert.equal(await session.exit, 0);
        assert.match(Buffer.concat(out).toString('utf8'), /43 132/);
        session.stdin.destroy();
      });
    });

    test('signal() reaches the command and the exit code says which signal killed it', async (t) => {
      if (!needRunning(t) || !needPrograms(t)) return;
      await orSkip(t, async () => {
        const session = await driver.exec(spec, { command: ['sleep', '30'], env: {}, tty: false });
        session.stdin.end();
        session.stdout.resume();
        session.stderr?.resume();
        await new Promise((r) => setTimeout(r, 300));
        const t0 = Date.now();
        session.signal('SIGTERM');
        assert.equal(await session.exit, 143);
        assert.ok(Date.now() - t0 < 5000);
      });
    });

    test('the console takes a command line and shows its output; detached, the guest runs on and the log has it', async (t) => {
      if (!needRunning(t) || !needPrograms(t)) return;
      await orSkip(t, async () => {
        const marker = `console-${process.pid}-${Date.now()}`;
        const first = await driver.attachConsole(spec);
        let seen = '';
        first.on('data', (d: Buffer) => {
          seen += d.toString('latin1');
        });
        try {
          // The typed line echoes as `$((6*7))marker`: only the shell's answer holds `42marker`.
          first.write(`echo $((6*7))${marker}\n`);
          await waitUntil(() => seen.includes(`42${marker}`), 60_000, `42${marker} on the console`);
          await assert.rejects(
            driver.attachConsole(spec),
            (e) => isTrivisorError(e) && e.code === 'Conflict',
          );
        } finally {
          first.destroy();
        }
        await once(first, 'close');
        assert.equal((await driver.inspect(spec, identity)).state, 'running');
        // Nobody reads the console now: a burst of output must not hold the guest up, and all of it is logged.
        const burst = await execIn(
          driver,
          spec,
          [
            '/bin/sh',
            '-c',
            `for i in $(seq 1 500); do echo "burst-$i-${marker}" > /dev/console; done; echo done`,
          ],
          { timeoutMs: 60_000 },
        );
        assert.equal(burst.stdout, 'done\n');
        await waitUntil(
          async () => (await readFile(driver.consoleLogPath(spec), 'latin1')).includes(`burst-500-${marker}`),
          10_000,
          'the burst in the console log',
        );
        const log = await readFile(driver.consoleLogPath(spec), 'latin1');
        assert.ok(log.includes(`42${marker}`), 'the answer is in the console log');
        // A second driver on the same state (a restarted daemon) finds the console again.
        const again = dut.reopen?.() ?? driver;
        const second = await again.attachConsole(spec);
        let later = '';
        second.on('data', (d: Buffer) => {
          later += d.toString('latin1');
        });
        try {
          second.write(`echo $((7*6))again-${marker}\n`);
          await waitUntil(() => later.includes(`42again-${marker}`), 30_000, 'the answer after re-attaching');
          assert.ok(!later.includes(`42${marker}`), 'a new attachment starts at the end of the output');
        } finally {
          second.destroy();
        }
      });
    });

    test('freeze() makes inspect() say frozen and holds the guest; unfreeze() resumes it', async (t) => {
      if (!needRunning(t)) return;
      await orSkip(t, async () => {
        await driver.freeze(spec);
        try {
          assert.equal((await driver.inspect(spec, identity)).state, 'frozen');
          // A frozen guest runs nothing: an exec is refused or does not finish.
          const r = await execIn(driver, spec, ['true'], { timeoutMs: 1500 }).catch(() => undefined);
          assert.ok(r === undefined || r.code !== 0, 'exec in a frozen guest must not succeed');
        } finally {
          await driver.unfreeze(spec);
        }
        assert.equal((await driver.inspect(spec, identity)).state, 'running');
        assert.equal((await execIn(driver, spec, ['true'])).code, 0);
      });
    });

    test('usage() reports memory, cpu and processes of a running guest', async (t) => {
      if (!needRunning(t)) return;
      await orSkip(t, async () => {
        const u = await driver.usage(spec);
        assert.ok(u.memoryBytes > 0, 'memory in use');
        assert.ok(u.processes >= 1, 'at least init');
        assert.ok(u.cpuSeconds >= 0);
      });
    });

    test('a second driver on the same state re-adopts the running guest, and refuses a reused pid', async (t) => {
      if (!needRunning(t) || !identity) return;
      if (!dut.reopen) return t.skip('this setup cannot open a second driver');
      const again = dut.reopen();
      const state = await again.inspect(spec, identity);
      assert.equal(state.state, 'running');
      assert.deepEqual(state.process, identity);
      const reused = await again.inspect(spec, { pid: identity.pid, startTime: identity.startTime + 1 });
      assert.notEqual(reused.state, 'running');
      assert.notEqual(reused.state, 'frozen');
    });

    test('stop() asks init to power off and the guest stops', async (t) => {
      if (!needRunning(t)) return;
      await driver.stop(spec, { timeoutMs: 20_000, force: false });
      assert.equal((await driver.inspect(spec, identity)).state, 'stopped');
      await dut.assertNoLeftovers?.(spec, { runtimeOnly: true });
      await driver.stop(spec, { timeoutMs: 1000, force: false });
      // Files are copied through the running guest.
      await assert.rejects(
        driver.pullFile(spec, '/etc/trivisor-motd'),
        (e) => isTrivisorError(e) && e.code === 'FailedPrecondition',
      );
    });

    test('start() after stop() boots the guest again with a new init', async (t) => {
      if (!needRunning(t) || !identity) return;
      const old = identity;
      identity = await driver.start(spec, dut.image);
      assert.notDeepEqual(identity, old);
      assert.equal((await driver.inspect(spec, identity)).state, 'running');
      assert.notEqual((await driver.inspect(spec, old)).state, 'running');
      await orSkip(t, async () => {
        assert.equal((await execIn(driver, spec, ['/bin/sh', '-c', 'exit 0'])).code, 0);
      });
      // The injected file the guest's copy replaced is written again at every start.
      assert.equal((await driver.pullFile(spec, '/etc/trivisor-motd')).data.toString(), 'injected\n');
    });

    test('delete() leaves nothing behind and can be repeated', async (t) => {
      if (!needRunning(t)) return;
      await driver.stop(spec, { timeoutMs: 0, force: true });
      assert.equal((await driver.inspect(spec, identity)).state, 'stopped');
      await driver.delete(spec);
      assert.equal((await driver.inspect(spec, undefined)).state, 'absent');
      await dut.assertNoLeftovers?.(spec);
      await driver.delete(spec);
    });

    test('stop() kills the guest after the timeout when init ignores the stop signal', async (t) => {
      if (!needPrograms(t)) return;
      const stubborn = guest('conf-stubborn');
      const image = withInit(dut.image, [
        '/bin/sh',
        '-c',
        "trap '' TERM INT USR1 USR2 PWR; while :; do sleep 1; done",
      ]);
      await driver.create(stubborn, image);
      const id = await driver.start(stubborn, image);
      assert.equal((await driver.inspect(stubborn, id)).state, 'running');
      const t0 = Date.now();
      await driver.stop(stubborn, { timeoutMs: 1500, force: false });
      const took = Date.now() - t0;
      assert.ok(took >= 1400, `stop waited ${took}ms, less than the timeout`);
      assert.ok(took < 15_000, `stop took ${took}ms`);
      assert.equal((await driver.inspect(stubborn, id)).state, 'stopped');
      await driver.delete(stubborn);
      await dut.assertNoLeftovers?.(stubborn);
    });

    test('stop() stops a frozen guest', async (t) => {
      const frozen = guest('conf-frozen');
      await driver.create(frozen, dut.image);
      const id = await driver.start(frozen, dut.image);
      await orSkip(t, async () => {
        await driver.freeze(frozen);
        assert.equal((await driver.inspect(frozen, id)).state, 'frozen');
      });
      await driver.stop(frozen, { timeoutMs: 5000, force: false });
      assert.equal((await driver.inspect(frozen, id)).state, 'stopped');
      await driver.delete(frozen);
      await dut.assertNoLeftovers?.(frozen);
    });

    test('when init dies unasked, inspect() says stopped and stop() only cleans up', async () => {
      const victim = guest('conf-victim');
      await driver.create(victim, dut.image);
      const id = await driver.start(victim, dut.image);
      if (dut.killInit) dut.killInit(victim, id);
      else process.kill(id.pid, 'SIGKILL');
      const t0 = Date.now();
      while ((await driver.inspect(victim, id)).state !== 'stopped') {
        assert.ok(Date.now() - t0 < 5000, 'the dead guest still looks alive');
        await new Promise((r) => setTimeout(r, 50));
      }
      await driver.stop(victim, { timeoutMs: 10_000, force: false });
      assert.ok(Date.now() - t0 < 5000, 'stop must not wait for a dead init');
      await dut.assertNoLeftovers?.(victim, { runtimeOnly: true });
      await driver.start(victim, dut.image).then((again) => assert.notDeepEqual(again, id));
      await driver.stop(victim, { timeoutMs: 0, force: true });
      await driver.delete(victim);
    });

    test('stop() with force kills at once', async () => {
      const stubborn = guest('conf-forced');
      const image = withInit(dut.image, [
        '/bin/sh',
        '-c',
        "trap '' TERM INT USR1 USR2 PWR; while :; do sleep 1; done",
      ]);
      await driver.create(stubborn, image);
      const id = await driver.start(stubborn, image);
      const t0 = Date.now();
      await driver.stop(stubborn, { timeoutMs: 60_000, force: true });
      assert.ok(Date.now() - t0 < 10_000);
      assert.equal((await driver.inspect(stubborn, id)).state, 'stopped');
      await driver.delete(stubborn);
    });

    test('limits are visible inside the guest', async (t) => {
      const limited = guest('conf-limits', {
        'limits.memory': '96MiB',
        'limits.processes': '64',
        'limits.cpu': '0.5',
      });
      await driver.create(limited, dut.image);
      const id = await driver.start(limited, dut.image);
      if (needPrograms(t))
        await orSkip(t, async () => {
          const mem = await execIn(driver, limited, [
            '/bin/sh',
            '-c',
            'cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max 2>/dev/null; grep MemTotal /proc/meminfo',
          ]);
          const limit = 96 * 2 ** 20;
          const lines = mem.stdout.trim().split('\n');
          const cgroupLimit = Number(lines[0]);
          const memTotalKiB = Number(/MemTotal:\s+(\d+)/.exec(mem.stdout)?.[1]);
          const seen =
            cgroupLimit === limit || (memTotalKiB * 1024 <= limit && memTotalKiB * 1024 > limit / 2);
          assert.ok(
            seen,
            `the guest sees neither a ${limit}-byte cgroup limit nor a matching MemTotal: ${mem.stdout}`,
          );
          const pids = await execIn(driver, limited, [
            '/bin/sh',
            '-c',
            'cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max 2>/dev/null || echo none',
          ]);
          if (pids.stdout.trim() !== 'none') assert.equal(pids.stdout.trim(), '64');
          const usage = await driver.usage(limited);
          if (usage.memoryLimitBytes !== undefined) assert.equal(usage.memoryLimitBytes, limit);
        });
      await driver.stop(limited, { timeoutMs: 0, force: true });
      assert.equal((await driver.inspect(limited, id)).state, 'stopped');
      await driver.delete(limited);
    });

    test('a start that fails (init does not exist) leaves nothing running behind', async () => {
      const broken = guest('conf-broken');
      const image = withInit(dut.image, ['/no/such/init']);
      await driver.create(broken, image);
      await assert.rejects(driver.start(broken, image));
      const state = await driver.inspect(broken, undefined);
      assert.ok(state.state === 'stopped' || state.state === 'absent', state.state);
      await dut.assertNoLeftovers?.(broken, { runtimeOnly: true });
      await driver.delete(broken);
      assert.equal((await driver.inspect(broken, undefined)).state, 'absent');
      await dut.assertNoLeftovers?.(broken);
    });
  });
}
