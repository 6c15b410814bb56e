import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Daemon, eventually, startDaemon } from './harness.ts';

const CLI = path.resolve(import.meta.dirname, '../../bin/trivisor');

/** `trivisor ARGS` running in the background, with its input piped and its output collected. */
interface RunningCli {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  exit: Promise<number>;
}

describe('trivisor console through the daemon', () => {
  let d: Daemon;
  const running: ChildProcess[] = [];
  const start = (args: string[]): RunningCli => {
    const child = spawn(CLI, args, {
      env: { ...process.env, TRIVISOR_DIR: d.stateDir },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    running.push(child);
    let out = '';
    let err = '';
    child.stdout?.on('data', (c: Buffer) => {
      out += c.toString('latin1');
    });
    child.stderr?.on('data', (c: Buffer) => {
      err += c.toString('latin1');
    });
    const exit = once(child, 'exit').then(([code, signal]) => code ?? 128 + (signal === 'SIGINT' ? 2 : 9));
    return { child, stdout: () => out, stderr: () => err, exit };
  };

  before(async () => {
    d = await startDaemon();
  });
  after(async () => {
    for (const c of running) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await d?.destroy();
  });

  test('a pvm guest: type a command, see its answer, Ctrl-a q detaches; the guest runs on and logs it; again after kill -9 of the daemon; a stop ends the session', async () => {
    d.ok(['launch', 'busybox', 'p1', '--model', 'pvm']);
    const marker = `sys-${process.pid}`;
    const attached = start(['console', 'p1']);
    attached.child.stdin?.write(`echo $((6*7))${marker}\n`);
    await eventually(
      `42${marker} on the CLI's output`,
      () => attached.stdout().includes(`42${marker}`),
      60_000,
    );

    // One attachment at a time.
    const second = d.cli(['console', 'p1'], { input: '' });
    assert.notEqual(second.code, 0);
    assert.match(second.stderr, /already attached/);

    attached.child.stdin?.write('\x01q');
    assert.equal(await attached.exit, 0, attached.stderr());
    const guests = JSON.parse(d.ok(['list', '--format', 'json'])) as Array<{ name: string; status: string }>;
    assert.equal(guests.find((g) => g.name === 'p1')?.status, 'Running');
    assert.match(d.ok(['console', 'p1', '--show-log']), new RegExp(`^42${marker}`, 'm'));
    // The attachment was an operation, over now.
    const ops = JSON.parse(d.ok(['operation', 'list', '--format', 'json'])) as Array<{
      description: string;
      status: string;
    }>;
    const consoleOps = ops.filter((o) => o.description.includes('console of guest p1'));
    assert.ok(consoleOps.length >= 1 && consoleOps.every((o) => o.status === 'Success'), JSON.stringify(ops));

    // The console is found again by a daemon that never saw the guest start.
    await d.kill9();
    await d.restart();
    const again = start(['console', 'p1']);
    again.child.stdin?.write(`echo $((7*6))again-${marker}\n`);
    await eventually(
      'the answer after the restart',
      () => again.stdout().includes(`42again-${marker}`),
      60_000,
    );
    again.child.stdin?.end(); // end of piped input detaches too
    assert.equal(await again.exit, 0, again.stderr());

    // A guest that stops under an attached console ends the session, saying why.
    const last = start(['console', 'p1']);
    await eventually('attached', () =>
      (
        JSON.parse(d.ok(['operation', 'list', '--format', 'json'])) as Array<{
          description: string;
          status: string;
        }>
      ).some((o) => o.description.includes('console of guest p1') && o.status === 'Running'),
    );
    d.ok(['stop', 'p1', '--timeout', '10']);
    assert.equal(await last.exit, 0, last.stderr());
    assert.match(last.stderr(), /The console of p1 closed: the guest stopped/);
  });

  test('a ct guest: the console takes no input, so the CLI says so and follows the log', async () => {
    d.ok(['launch', 'busybox', 'c1']);
    const follow = start(['console', 'c1']);
    await eventually(
      'the fallback message',
      () => /take no input/.test(follow.stderr()) && /Following the console log of c1/.test(follow.stderr()),
      30_000,
    );
    follow.child.kill('SIGINT');
    assert.equal(await follow.exit, 0, follow.stderr());
  });
});
