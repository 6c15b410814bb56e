import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createFakeServices, type FakeServices } from '../../test/fakes/fake-services.ts';
import { buildServer } from '../server/build-server.ts';
import { listenUnix } from '../server/listen.ts';

const BIN = new URL('../../bin/trivisor', import.meta.url).pathname;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

describe('bin/trivisor against a fake daemon on a unix socket', () => {
  let dir: string;
  let app: FastifyInstance;
  let fake: FakeServices;

  // The server runs in this process, so the CLI must run asynchronously beside it.
  const trivisor = (args: string[], input?: string): Promise<Run> =>
    new Promise((resolve, reject) => {
      const child = spawn(BIN, args, {
        env: { ...process.env, TRIVISOR_DIR: dir, TRIVISOR_REMOTE: '', TRIVISOR_TOKEN: '' },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => {
        stdout += c;
      });
      child.stderr.on('data', (c: Buffer) => {
        stderr += c;
      });
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout, stderr }));
      child.stdin.end(input ?? '');
    });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'trivisor-cli-'));
    fake = createFakeServices();
    app = await buildServer(fake, { auth: { type: 'none' } });
    await listenUnix(app, join(dir, 'trivisor.sock'));
  });
  after(async () => {
    await app.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('list prints a table for people', async () => {
    const run = await trivisor(['list']);
    assert.equal(run.code, 0, run.stderr);
    const lines = run.stdout.trimEnd().split('\n');
    assert.match(lines[0] ?? '', /^NAME\s+MODEL\s+STATUS\s+IMAGE\s+PID\s+MEMORY\s+PROCESSES\s+IPV4$/);
    assert.match(lines[1] ?? '', /^web1\s+ct\s+Running\s+busybox\s+4242\s+3MiB\s+2\s+-$/);
    assert.equal(run.stderr, '');
  });

  test('list --format json prints the API objects', async () => {
    const run = await trivisor(['list', '--format', 'json']);
    assert.equal(run.code, 0, run.stderr);
    const guests = JSON.parse(run.stdout);
    assert.equal(guests[0].name, 'web1');
    assert.equal(guests[0].state.pid, 4242);
    assert.deepEqual(guests[0].state.usage, { memoryBytes: 3 * 1024 * 1024, cpuSeconds: 0.25, processes: 2 });
  });

  test('a server error prints exactly one line and exits 1', async () => {
    const run = await trivisor(['info', 'nope']);
    assert.equal(run.code, 1);
    assert.equal(run.stdout, '');
    assert.match(run.stderr, /^Error: Guest "nope" not found[^\n]*\n$/);
  });

  test('usage errors print exactly one line and exit 1', async () => {
    for (const args of [['bogus'], ['start'], ['list', '--format', 'xml'], ['list', '--nope']]) {
      const run = await trivisor(args);
      assert.equal(run.code, 1, args.join(' '));
      assert.match(run.stderr, /^Error: [^\n]+\n$/, `${args.join(' ')}: ${run.stderr}`);
    }
  });

  test('a local file that cannot be read or written is one line naming it, never a stack', async () => {
    for (const [args, pattern] of [
      [
        ['image', 'import', '/no/such.tar', '--alias', 'x'],
        /^Error: \/no\/such\.tar: no such file or directory\n$/,
      ],
      [['import', '/no/such.backup'], /^Error: \/no\/such\.backup: no such file or directory\n$/],
      [
        ['export', 'web1', '/no/such/dir/x.backup'],
        /^Error: Cannot write \/no\/such\/dir\/x\.backup: \/no\/such\/dir is not an existing directory\n$/,
      ],
    ] as const) {
      const run = await trivisor([...args]);
      assert.equal(run.code, 1, args.join(' '));
      assert.match(run.stderr, pattern, `${args.join(' ')}: ${run.stderr}`);
    }
  });

  test('an unreachable daemon is one clear line', async () => {
    const run = await new Promise<Run>((resolve) => {
      const child = spawn(BIN, ['list'], { env: { ...process.env, TRIVISOR_DIR: join(dir, 'none') } });
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => {
        stderr += c;
      });
      child.on('close', (code) => resolve({ code, stdout: '', stderr }));
    });
    assert.equal(run.code, 1);
    assert.match(
      run.stderr,
      /^Error: Cannot reach the Trivisor daemon at unix:.*trivisor\.sock: is the daemon running\?/,
    );
  });

  test("exec passes the command's exit code, stdout, stderr and stdin through", async () => {
    const echo = await trivisor(['exec', 'web1', '--', 'echo', 'hello', 'there']);
    assert.deepEqual([echo.code, echo.stdout], [0, 'hello there\n']);
    const exit = await trivisor(['exec', 'web1', '--', 'exit', '42']);
    assert.equal(exit.code, 42);
    const err = await trivisor(['exec', 'web1', '--', 'stderr', 'bad thing']);
    assert.deepEqual([err.code, err.stdout, err.stderr], [1, '', 'bad thing']);
    const cat = await trivisor(['exec', 'web1', '-T', '--', 'cat'], 'piped input\n');
    assert.deepEqual([cat.code, cat.stdout], [0, 'piped input\n']);
    assert.equal(fake.execs.at(-1)?.request.interactive, false, 'no tty when stdin is not a terminal');
    const env = await trivisor(['exec', 'web1', '--env', 'A=1', '--env', 'B=two', '--', 'env']);
    assert.equal(env.stdout, 'A=1\nB=two\n');
  });

  test('launch, config set/get/unset, stop and delete drive the API', async () => {
    const launch = await trivisor(['launch', 'busybox', 'c9', '-c', 'limits.memory=64MiB']);
    assert.equal(launch.code, 0, launch.stderr);
    assert.equal(fake.guestMap.get('c9')?.status, 'Running');
    assert.equal(fake.guestMap.get('c9')?.config['limits.memory'], '64MiB');
    const set = await trivisor(['config', 'set', 'c9', 'limits.cpu=1', 'limits.disk=1GiB']);
    assert.equal(set.code, 0, set.stderr);
    assert.match(set.stderr, /next restart: limits\.disk/);
    assert.equal((await trivisor(['config', 'get', 'c9', 'limits.cpu'])).stdout, '1\n');
    assert.equal((await trivisor(['config', 'unset', 'c9', 'limits.cpu'])).code, 0);
    assert.equal((await trivisor(['config', 'get', 'c9', 'limits.cpu'])).stdout, '\n');
    assert.equal((await trivisor(['stop', 'c9', '--timeout', '5'])).code, 0);
    assert.equal(fake.guestMap.get('c9')?.status, 'Stopped');
    assert.equal((await trivisor(['delete', 'c9'])).code, 0);
    assert.equal(fake.guestMap.has('c9'), false);
  });
});
