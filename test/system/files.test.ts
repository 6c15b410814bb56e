import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, startDaemon } from './harness.ts';

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

describe('trivisor file push|pull and injected files through the daemon and CLI', () => {
  let d: Daemon;
  let dir: string;
  const local = (name: string) => path.join(dir, name);
  /** A CLI run that must fail with one line on stderr matching `pattern`. */
  const fails = (args: string[], pattern: RegExp) => {
    const r = d.cli(args);
    assert.notEqual(r.code, 0, `${args.join(' ')} succeeded: ${r.stdout}`);
    assert.match(r.stderr, pattern);
    assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  };

  before(async () => {
    d = await startDaemon();
    dir = await makeRunDir('files');
    await writeFile(local('motd'), 'welcome to c1\n', { mode: 0o644 });
    await writeFile(local('motd2'), 'second version\n');
    await writeFile(local('all-bytes'), Buffer.from(Array.from({ length: 1024 }, (_, i) => i % 256)));
    await writeFile(local('big'), randomBytes(300 * 1024 + 7));
  });
  after(async () => {
    await d?.destroy();
    if (dir) await removeRunDir(dir);
  });

  test('ct: a file injected at launch is there with its mode; config and info show it', () => {
    d.ok(['launch', 'busybox', 'c1', '--file', `/etc/motd=${local('motd')},mode=0600`]);
    assert.equal(d.ok(['exec', 'c1', '--', 'cat', '/etc/motd']), 'welcome to c1\n');
    assert.equal(d.ok(['exec', 'c1', '--', 'stat', '-c', '%a %u %g', '/etc/motd']), '600 0 0\n');
    assert.match(d.ok(['config', 'show', 'c1']), /files\.\/etc\/motd: mode=0600,uid=0,gid=0,content=/);
    assert.match(d.ok(['info', 'c1']), /files\.\/etc\/motd: 0600 0:0, 14B/);
  });

  test('ct: push and pull round-trip bytes, mode and owner', async () => {
    d.ok([
      'file',
      'push',
      local('all-bytes'),
      'c1/root/all-bytes',
      '--mode',
      '0640',
      '--uid',
      '1000',
      '--gid',
      '1000',
    ]);
    d.ok(['file', 'pull', 'c1/root/all-bytes', local('back')]);
    assert.equal(sha256(await readFile(local('back'))), sha256(await readFile(local('all-bytes'))));
    assert.equal((await stat(local('back'))).mode & 0o777, 0o640);
    assert.equal(d.ok(['exec', 'c1', '--', 'stat', '-c', '%a %u %g', '/root/all-bytes']), '640 1000 1000\n');
    d.ok(['file', 'push', '-p', local('big'), 'c1/srv/new/big']);
    d.ok(['file', 'pull', 'c1/srv/new/big', dir]);
    assert.equal(sha256(await readFile(path.join(dir, 'big'))), sha256(await readFile(local('big'))));
    assert.equal(d.ok(['file', 'pull', 'c1/etc/motd', '-']), 'welcome to c1\n');
  });

  test('ct: errors a user can cause are one-line 4xx errors', () => {
    fails(['file', 'pull', 'c1/no/such/file', local('x')], /does not exist/);
    fails(['file', 'push', local('motd'), 'c1/etc'], /directory/);
    fails(['file', 'push', local('motd'), 'c1/no/such/dir/f'], /does not exist/);
    fails(['file', 'push', local('motd'), 'c1'], /NAME\/PATH/);
    fails(['file', 'pull', 'c1/etc/../etc/motd', local('x')], /normalized/);
    fails(['file', 'pull', 'ghost/etc/motd', local('x')], /not found/);
    fails(['file', 'push', local('nope'), 'c1/etc/x'], /does not exist/);
    fails(['launch', 'busybox', 'bad', '--file', `/proc/x=${local('motd')}`], /cannot be injected/);
  });

  test('ct: kernel file systems, a link to /proc/self/root and overlong names are one-line 4xx naming no host path', async () => {
    d.ok(['exec', 'c1', '--', 'ln', '-s', '/proc/self/root', '/tmp/to-self-root']);
    const long = 'n'.repeat(300);
    for (const [method, guestPath] of [
      ['GET', '/proc/mounts'],
      ['GET', '/proc/self/root/etc/hostname'],
      ['GET', '/tmp/to-self-root/etc/passwd'],
      ['GET', `/${long}`],
      ['GET', `/tmp/${long}/x`],
      ['POST', '/sys/fs/cgroup/x'],
      ['POST', '/proc/sys/kernel/hostname'],
      ['POST', `/tmp/${long}`],
    ] as const) {
      const r = await d.api(
        method,
        `/1.0/guests/c1/files?path=${encodeURIComponent(guestPath)}`,
        method === 'POST' ? 'x' : undefined,
        method === 'POST' ? { 'content-type': 'application/octet-stream' } : {},
      );
      const what = `${method} ${guestPath.slice(0, 40)}: ${r.text.slice(0, 200)}`;
      assert.ok(r.status >= 400 && r.status < 500, what);
      assert.equal(r.body.type, 'error', what);
      assert.ok(typeof r.body.error === 'string' && !r.body.error.includes('\n'), what);
      assert.doesNotMatch(
        r.body.error as string,
        /\/proc\/self\/fd|\/var\/lib|trivisor-test|E[A-Z]{4,}:/,
        what,
      );
    }
    fails(['file', 'pull', 'c1/proc/mounts', local('x')], /kernel file system/);
    assert.equal(d.ok(['exec', 'c1', '--', 'hostname']).trim(), 'c1', 'the guest was not changed');
  });

  test('ct: a changed injected file waits for the next start; stopped guests refuse copies', () => {
    const r = d.cli(['config', 'set-file', 'c1', `/etc/motd=${local('motd2')}`]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /next restart: files\.\/etc\/motd/);
    assert.equal(d.ok(['exec', 'c1', '--', 'cat', '/etc/motd']), 'welcome to c1\n');
    d.ok(['stop', 'c1', '--timeout', '10']);
    fails(['file', 'pull', 'c1/etc/motd', local('x')], /stopped: start it first/);
    d.ok(['start', 'c1']);
    assert.equal(d.ok(['exec', 'c1', '--', 'cat', '/etc/motd']), 'second version\n');
    d.ok(['delete', '--force', 'c1']);
  });

  test('pvm: injected at launch, pushed and pulled through the agent on the serial line', async () => {
    d.ok(['launch', 'busybox', 'p1', '--model', 'pvm', '--file', `/etc/motd=${local('motd')},uid=5,gid=6`]);
    assert.equal(d.ok(['exec', 'p1', '--', 'cat', '/etc/motd']), 'welcome to c1\n');
    assert.equal(d.ok(['exec', 'p1', '--', 'stat', '-c', '%a %u %g', '/etc/motd']), '644 5 6\n');
    d.ok(['file', 'push', local('big'), 'p1/root/big', '--mode', '0600']);
    d.ok(['file', 'pull', 'p1/root/big', local('p1-big')]);
    assert.equal(sha256(await readFile(local('p1-big'))), sha256(await readFile(local('big'))));
    assert.equal((await stat(local('p1-big'))).mode & 0o777, 0o600);
    fails(['file', 'pull', 'p1/root', local('x')], /directory/);
    d.ok(['stop', 'p1', '--timeout', '20']);
    fails(['file', 'push', local('motd'), 'p1/etc/motd'], /stopped: start it first/);
    d.ok(['delete', 'p1']);
  });
});
