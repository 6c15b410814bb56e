import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { QgaClient, QgaExecOptions, QgaExecResult } from './qga-client.ts';
import { GUEST_BUSYBOX, killArgv, qgaExecArgv, qgaExecSession } from './qga-exec-session.ts';

/** A client whose exec records the call and answers with `result` (or fails with it). */
function fakeClient(result: QgaExecResult | Error) {
  const calls: Array<{ argv: readonly string[]; options: QgaExecOptions }> = [];
  const client = {
    async exec(argv: readonly string[], options: QgaExecOptions = {}) {
      calls.push({ argv, options });
      options.onStart?.(99);
      if (result instanceof Error) throw result;
      return result;
    },
  } as unknown as QgaClient;
  return { client, calls };
}

async function drain(session: ReturnType<typeof qgaExecSession>) {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  session.stdout.on('data', (d: Buffer) => out.push(d));
  session.stderr?.on('data', (d: Buffer) => err.push(d));
  const code = await session.exit;
  return { code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
}

describe('qgaExecArgv', () => {
  test("runs the command in its own session, and as is with a guest's own tools", () => {
    assert.deepEqual(qgaExecArgv({ command: ['ls', '-l'], env: {}, tty: false, cwd: '/' }), [
      GUEST_BUSYBOX,
      'setsid',
      'ls',
      '-l',
    ]);
    assert.deepEqual(
      qgaExecArgv({ command: ['ls', '-l'], env: {}, tty: false, busyboxPath: '/usr/bin/env' }),
      ['ls', '-l'],
    );
  });

  test('wraps the command in the guest busybox for a cwd and a user', () => {
    assert.deepEqual(qgaExecArgv({ command: ['id'], env: {}, tty: false, cwd: '/tmp', user: 1000 }), [
      GUEST_BUSYBOX,
      'setsid',
      GUEST_BUSYBOX,
      'sh',
      '-c',
      'cd -- "$1" || exit 126; shift; exec "$@"',
      'trivisor-exec',
      '/tmp',
      GUEST_BUSYBOX,
      'start-stop-daemon',
      '-S',
      '-p',
      '/nonexistent',
      '-c',
      '1000:1000',
      '-x',
      'id',
      '--',
    ]);
  });
});

describe('killArgv', () => {
  test("SIGKILL goes to the command's process group, other signals to the command", () => {
    assert.deepEqual(killArgv(GUEST_BUSYBOX, 9, 42), [GUEST_BUSYBOX, 'kill', '-9', '-42']);
    assert.deepEqual(killArgv(GUEST_BUSYBOX, 15, 42), [GUEST_BUSYBOX, 'kill', '-15', '42']);
  });

  test('a guest with its own tools (no setsid wrapper) gets it to the command alone', () => {
    assert.deepEqual(killArgv('/usr/bin/env', 9, 42), ['/usr/bin/env', 'kill', '-9', '42']);
  });
});

describe('qgaExecSession', () => {
  test('passes collected stdin, a default PATH and the env to the agent, and the output back', async () => {
    const { client, calls } = fakeClient({
      exitCode: 3,
      stdout: Buffer.from('o'),
      stderr: Buffer.from('e'),
      truncated: false,
    });
    const session = qgaExecSession(client, { command: ['cat'], env: { A: 'b' }, tty: false });
    session.stdin.write('one ');
    session.stdin.end('two');
    assert.deepEqual(await drain(session), { code: 3, stdout: 'o', stderr: 'e' });
    assert.equal(calls.length, 1);
    assert.equal(String(calls[0]?.options.input), 'one two');
    assert.equal(calls[0]?.options.env?.A, 'b');
    assert.match(calls[0]?.options.env?.PATH ?? '', /\/usr\/bin/);
    assert.equal(calls[0]?.options.env?.HOME, '/root');
  });

  test('a signal before stdin ended cancels the command without running it', async () => {
    const { client, calls } = fakeClient(new Error('not reached'));
    const session = qgaExecSession(client, { command: ['sleep', '9'], env: {}, tty: false });
    session.signal('SIGKILL');
    assert.equal((await drain(session)).code, 137);
    assert.equal(calls.length, 0);
  });

  test('an agent failure ends the session with 255 and the reason on stderr', async () => {
    const { client } = fakeClient(new Error('The guest agent of guest v1 did not answer'));
    const session = qgaExecSession(client, { command: ['true'], env: {}, tty: false });
    session.stdin.end();
    const r = await drain(session);
    assert.equal(r.code, 255);
    assert.match(r.stderr, /did not answer/);
  });

  test('a terminal and an empty command are refused', () => {
    const { client } = fakeClient(new Error('x'));
    assert.throws(() => qgaExecSession(client, { command: ['sh'], env: {}, tty: true }), {
      code: 'NotSupported',
    });
    assert.throws(() => qgaExecSession(client, { command: [], env: {}, tty: false }), {
      code: 'InvalidArgument',
    });
  });
});
