import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { access, readFile, stat, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createQgaClient, type QgaClient } from '../../src/host/qga-client.ts';
import { qgaExecSession, qgaPushFile } from '../../src/host/qga-exec-session.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';

const QEMU_GA = '/usr/sbin/qemu-ga';

async function waitForFile(path: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await access(path);
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`${path} did not appear within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

function connectSocket(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Collects a session's outputs and exit code. */
async function runSession(
  session: ReturnType<typeof qgaExecSession>,
  input?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  session.stdout.on('data', (d: Buffer) => out.push(d));
  session.stderr?.on('data', (d: Buffer) => err.push(d));
  if (input !== undefined) session.stdin.write(input);
  session.stdin.end();
  const code = await session.exit;
  return { code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
}

describe('QGA client against a real qemu-ga (unix-listen on the host)', {
  skip: process.getuid?.() !== 0,
}, () => {
  let dir: string;
  let agent: ChildProcess;
  let socket: Socket;
  let client: QgaClient;
  const sockPath = () => join(dir, 'qga.sock');

  before(async () => {
    await access(QEMU_GA);
    dir = await makeRunDir('qga');
    agent = spawn(QEMU_GA, ['-m', 'unix-listen', '-p', sockPath(), '-t', dir, '-f', join(dir, 'qga.pid')], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    agent.stderr?.resume();
    await waitForFile(sockPath(), 10_000);
    socket = await connectSocket(sockPath());
    client = createQgaClient(socket, { guestName: 'host-agent', requestTimeoutMs: 20_000 });
  });

  after(async () => {
    client?.close();
    if (agent && agent.exitCode === null) {
      const gone = new Promise((r) => agent.once('exit', r));
      agent.kill('SIGKILL');
      await gone;
    }
    if (dir) await removeRunDir(dir);
  });

  test('sync and ping get answers', async () => {
    await client.sync();
    await client.ping();
    const info = await client.osInfo();
    assert.equal(typeof info['kernel-release'], 'string');
  });

  test('exec passes the exit code, stdout, stderr and stdin through', async () => {
    const r = await client.exec(['/bin/sh', '-c', 'echo out; echo err >&2; cat; exit 7'], {
      input: 'from stdin\n',
      env: { PATH: '/usr/bin:/bin' },
    });
    assert.equal(r.exitCode, 7);
    assert.equal(r.stdout.toString(), 'out\nfrom stdin\n');
    assert.equal(r.stderr.toString(), 'err\n');
    assert.equal(r.truncated, false);
  });

  test('exec reports a command killed by a signal as 128+n', async () => {
    const r = await client.exec(['/bin/sh', '-c', 'kill -TERM $$'], { env: { PATH: '/usr/bin:/bin' } });
    assert.equal(r.exitCode, 143);
  });

  test('a command the agent cannot run is an error, and the client goes on working', async () => {
    await assert.rejects(client.exec([join(dir, 'no-such-program')]), /guest-exec/);
    await client.ping();
  });

  test('writeFile then readFile round-trips bytes larger than one chunk', async () => {
    const data = Buffer.alloc(2.5 * 1024 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
    const path = join(dir, 'pushed.bin');
    await client.writeFile(path, data);
    assert.ok((await readFile(path)).equals(data), 'the file on the host holds the bytes');
    assert.ok((await client.readFile(path)).equals(data), 'reading it back gives the same bytes');
    await writeFile(join(dir, 'empty'), '');
    assert.equal((await client.readFile(join(dir, 'empty'))).length, 0);
    await assert.rejects(client.readFile(join(dir, 'missing')), /guest-file-open/);
  });

  test('qgaPushFile sets the mode and owner the agent does not', async () => {
    const path = join(dir, 'owned');
    await qgaPushFile(client, path, 'secret\n', {
      mode: 0o600,
      uid: 65534,
      gid: 65534,
      busyboxPath: '/bin/busybox',
    });
    const s = await stat(path);
    assert.equal(s.mode & 0o777, 0o600);
    assert.equal(s.uid, 65534);
    assert.equal(s.gid, 65534);
    assert.equal(await readFile(path, 'utf8'), 'secret\n');
    await qgaPushFile(client, join(dir, 'plain'), 'x', { busyboxPath: '/bin/busybox' });
    assert.equal((await stat(join(dir, 'plain'))).mode & 0o777, 0o644);
  });

  test('sync discards a half request and unasked answers on the line', async () => {
    // A half-written request from an earlier client: the leading 0xFF of sync makes the agent drop it.
    socket.write('{"execute": "guest-exec", "arguments": {"path": "/bin/tr');
    // An answer nobody waits for, as a timed-out request would leave behind.
    socket.write('{"execute": "guest-info"}\n');
    await new Promise((r) => setTimeout(r, 200));
    await client.sync();
    const r = await client.exec(['/bin/echo', 'still in step'], { env: {} });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout.toString(), 'still in step\n');
  });

  test('a new client on a line with stale bytes resynchronises before its first request', async () => {
    client.close();
    socket = await connectSocket(sockPath());
    socket.write('garbage that is not JSON\n{"execute":');
    client = createQgaClient(socket, { requestTimeoutMs: 20_000 });
    await client.ping();
    const r = await client.exec(['/bin/true'], {});
    assert.equal(r.exitCode, 0);
  });

  test('qgaExecSession collects stdin until EOF and delivers output at the end', async () => {
    const text = 'line one\nline two\n'.repeat(500);
    // The host's busybox: the kit's (/.trivisor/busybox, the default) is only inside guests.
    const r = await runSession(
      qgaExecSession(client, { command: ['cat'], env: {}, tty: false, busyboxPath: '/bin/busybox' }),
      text,
    );
    assert.deepEqual(r, { code: 0, stdout: text, stderr: '' });
    const env = await runSession(
      qgaExecSession(client, {
        command: ['/bin/sh', '-c', 'echo "$GREETING"; pwd; echo err >&2; exit 3'],
        env: { GREETING: 'hello' },
        cwd: dir,
        tty: false,
        busyboxPath: '/bin/busybox',
      }),
    );
    assert.deepEqual(env, { code: 3, stdout: `hello\n${dir}\n`, stderr: 'err\n' });
  });

  test('qgaExecSession runs the command as another user', async () => {
    const r = await runSession(
      qgaExecSession(client, {
        command: ['/usr/bin/id', '-u'],
        env: {},
        tty: false,
        user: 65534,
        group: 65534,
        busyboxPath: '/bin/busybox',
      }),
    );
    assert.deepEqual(r, { code: 0, stdout: '65534\n', stderr: '' });
  });

  test('qgaExecSession signal() reaches the running command', async () => {
    const session = qgaExecSession(client, {
      command: ['sleep', '30'],
      env: {},
      tty: false,
      busyboxPath: '/bin/busybox',
    });
    session.stdin.end();
    session.stdout.resume();
    session.stderr?.resume();
    await new Promise((r) => setTimeout(r, 500));
    session.signal('SIGTERM');
    assert.equal(await session.exit, 143);
  });

  test('qgaExecSession refuses a terminal with a clear message', () => {
    assert.throws(
      () => qgaExecSession(client, { command: ['sh'], env: {}, tty: true }),
      /no terminal exec yet: run without -t/,
    );
  });
});
