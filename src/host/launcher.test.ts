import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { createLauncher } from './launcher.ts';
import { hostRunner } from './runner.ts';

// The real helper (perl) and real commands: the protocol and the process handling are the point.
test('the launcher runs commands side by side with PATH alone, their output appended to a log, and reports each exit code', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'launcher-'));
  const launcher = createLauncher(hostRunner());
  try {
    const log = join(dir, 'console.log');
    const path = '/usr/bin:/bin';
    const [a, b, c] = await Promise.all([
      launcher.run(['sh', '-c', 'echo "one HOME=$HOME PATH=$PATH"; exit 3'], {
        path,
        logFile: log,
        timeoutMs: 10_000,
      }),
      launcher.run(['sh', '-c', 'sleep 0.2; echo two >&2'], { path, logFile: log, timeoutMs: 10_000 }),
      launcher.run(['/nonexistent/program', 'x\ny'], {
        path,
        logFile: join(dir, 'other.log'),
        timeoutMs: 10_000,
      }),
    ]);
    assert.deepEqual([a, b, c], [3, 0, 127]);
    const text = await readFile(log, 'utf8');
    assert.match(text, /^one HOME= PATH=\/usr\/bin:\/bin$/m, 'nothing of the daemon environment but PATH');
    assert.match(text, /^two$/m, 'stderr goes to the same log');
    assert.equal((await stat(log)).mode & 0o777, 0o600);
    assert.match(await readFile(join(dir, 'other.log'), 'utf8'), /cannot run \/nonexistent\/program/);
    // Its own session: setsid made it the leader (its session id is its pid).
    const sid = join(dir, 'sid.log');
    await launcher.run(
      ['sh', '-c', 'read -r _ _ _ _ _ s _ < /proc/$$/stat; [ "$s" = "$$" ] && echo leader'],
      {
        path,
        logFile: sid,
        timeoutMs: 10_000,
      },
    );
    assert.equal(await readFile(sid, 'utf8'), 'leader\n');
  } finally {
    launcher.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('the launcher kills a command past its timeout (137) and starts a new helper after one ended', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'launcher-'));
  const launcher = createLauncher(hostRunner());
  try {
    const logFile = join(dir, 'log');
    const t0 = Date.now();
    assert.equal(
      await launcher.run(['sleep', '30'], { path: '/usr/bin:/bin', logFile, timeoutMs: 300 }),
      137,
    );
    assert.ok(Date.now() - t0 < 10_000, 'killed at its timeout, not at its end');
    launcher.close();
    assert.equal(await launcher.run(['true'], { path: '/usr/bin:/bin', logFile, timeoutMs: 10_000 }), 0);
  } finally {
    launcher.close();
    await rm(dir, { recursive: true, force: true });
  }
});
