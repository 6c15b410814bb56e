import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { helperRunner } from './helper-runner.ts';
import { createLauncher } from './launcher.ts';
import { CommandError, hostRunner } from './runner.ts';

// The real helper (perl) and real commands, side by side with hostRunner where both must agree.
const withRunner = async (
  body: (r: ReturnType<typeof helperRunner>, dir: string) => Promise<void>,
  options: { killGraceMs?: number } = {},
) => {
  const dir = await mkdtemp(join(tmpdir(), 'helper-runner-'));
  const launcher = createLauncher(hostRunner(), undefined, { dir: join(dir, 'run'), ...options });
  try {
    await body(helperRunner(launcher, hostRunner()), join(dir, 'run'));
  } finally {
    launcher.close();
    await rm(dir, { recursive: true, force: true });
  }
};

test('run() answers as hostRunner does: stdout, stderr, exit codes, stdin, env, cwd', async () => {
  await withRunner(async (r, dir) => {
    const host = hostRunner();
    const cases: Array<[string[], Parameters<typeof r.run>[1]]> = [
      [
        ['sh', '-c', 'echo out; echo err >&2; echo "FOO=$FOO"; pwd; exit 3'],
        { env: { FOO: 'b a\nr' }, cwd: '/tmp', allowFailure: true },
      ],
      [['sh', '-c', 'cat; printf "\\n%s" "$HOME"'], { input: 'line one\nline two' }],
      [['cat'], { input: Buffer.from([0xe2, 0x82, 0xac, 0x0a]) }],
      [['sh', '-c', 'exit 0'], {}],
      [['sh', '-c', 'kill -TERM $$'], { allowFailure: true }],
    ];
    for (const [argv, options] of cases)
      assert.deepEqual(await r.run(argv, options), await host.run(argv, options), argv.join(' '));
    // A non-zero exit throws the same CommandError.
    const [mine, theirs] = await Promise.all(
      [r, host].map((x) => x.run(['sh', '-c', 'echo why >&2; exit 4']).catch((e: unknown) => e)),
    );
    assert.ok(mine instanceof CommandError && theirs instanceof CommandError);
    assert.equal(mine.message, theirs.message);
    assert.equal(mine.exitCode, 4);
    // What cannot be run is an error even with allowFailure, as with hostRunner.
    await assert.rejects(
      r.run(['/nonexistent/program'], { allowFailure: true }),
      /cannot run \/nonexistent\/program/,
    );
    await assert.rejects(r.run(['ls'], { cwd: '/nonexistent/dir' }), /cannot run ls: \/nonexistent\/dir/);
    assert.deepEqual(await readdir(dir), [], 'no file is left in the capture directory');
  });
});

test('run() keeps large outputs whole and in order, and 200 runs at once each get their own', async () => {
  await withRunner(async (r, dir) => {
    // 8 MiB of numbered lines on stdout, 1 MiB on stderr, and 4 MiB of stdin echoed back.
    const big = await r.run(['sh', '-c', 'seq 1 1000000; head -c 1048576 /dev/zero | tr "\\0" e >&2']);
    const lines = big.stdout.split('\n');
    assert.equal(lines.length, 1_000_001);
    assert.equal(lines[0], '1');
    assert.equal(lines[999_999], '1000000');
    assert.ok(
      lines.slice(0, -1).every((l, i) => l === String(i + 1)),
      'every line in order',
    );
    assert.equal(big.stderr, 'e'.repeat(1_048_576));
    const input = Buffer.alloc(4 << 20, 'abcdefgh');
    assert.equal((await r.run(['cat'], { input })).stdout, input.toString());

    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        r.run(['sh', '-c', `cat; echo " $1" >&2; exit $(($1 % 7))`, 'sh', String(i)], {
          input: `in-${i}`,
          allowFailure: true,
        }),
      ),
    );
    results.forEach((res, i) => {
      assert.deepEqual(res, { code: i % 7, stdout: `in-${i}`, stderr: ` ${i}\n` });
    });
    assert.deepEqual(await readdir(dir), []);
  });
});

test('run() kills at timeoutMs and on abort, as hostRunner does', async () => {
  await withRunner(async (r) => {
    const t0 = Date.now();
    const killed = await r.run(['sh', '-c', 'echo before; exec sleep 30'], {
      timeoutMs: 300,
      allowFailure: true,
    });
    assert.ok(Date.now() - t0 < 10_000, 'killed at its timeout, not at its end');
    assert.deepEqual(killed, { code: 128, stdout: 'before\n', stderr: '\nkilled by SIGKILL' });
    await assert.rejects(
      r.run(['sleep', '30'], { timeoutMs: 300 }),
      /sleep failed \(exit 128\): killed by SIGKILL/,
    );
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 200);
    const t1 = Date.now();
    await assert.rejects(
      r.run(['sleep', '30'], { signal: ac.signal }),
      /cannot run sleep: The operation was aborted/,
    );
    assert.ok(Date.now() - t1 < 10_000);
    await assert.rejects(r.run(['true'], { signal: ac.signal }), /aborted/, 'an aborted signal runs nothing');
  });
});

test('a killed helper fails its requests with a clear error, and the next request starts a new one', async () => {
  await withRunner(async (r, dir) => {
    // The helper is the parent of what it runs.
    const helperPid = Number((await r.run(['sh', '-c', 'echo $PPID'])).stdout);
    assert.ok(helperPid > 1);
    const pidFile = join(dir, '..', 'sleep.pid');
    const inFlight = r.run(['sh', '-c', `echo $$ > ${pidFile}; exec sleep 30`]);
    for (let i = 0; i < 100 && !(await readFile(pidFile, 'utf8').catch(() => '')); i++)
      await new Promise((ok) => setTimeout(ok, 50));
    const sleepPid = Number(await readFile(pidFile, 'utf8'));
    try {
      process.kill(helperPid, 'SIGKILL');
      await assert.rejects(inFlight, /The launcher ended before its command did/);
    } finally {
      process.kill(sleepPid, 'SIGKILL');
    }
    const again = await r.run(['sh', '-c', 'echo $PPID']);
    assert.notEqual(Number(again.stdout), helperPid, 'a new helper');
    assert.deepEqual(await readdir(dir), [], "the ended request's files are removed");
  });
});

test('a helper that does not answer a kill is ended after the grace, never hangs its requests', async () => {
  await withRunner(
    async (r) => {
      const helperPid = Number((await r.run(['sh', '-c', 'echo $PPID'])).stdout);
      process.kill(helperPid, 'SIGSTOP');
      try {
        const t0 = Date.now();
        await assert.rejects(
          r.run(['true'], { timeoutMs: 200 }),
          /The launcher ended before its command did/,
        );
        assert.ok(Date.now() - t0 < 10_000);
      } finally {
        // Killed already by the runner; a stopped process that is still there gets its SIGKILL here.
        try {
          process.kill(helperPid, 'SIGKILL');
        } catch {}
      }
      assert.equal((await r.run(['echo', 'ok'])).stdout, 'ok\n');
    },
    { killGraceMs: 500 },
  );
});
