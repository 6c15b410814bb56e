import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { lstat, mkdir, mkdtemp, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { vmGuestPaths } from './qemu-command.ts';
import { adoptLegacyRuntime, removeRuntimeDir, removeRuntimeFiles, socketListens } from './vm-runtime-dir.ts';

const listen = (path: string): Promise<Server> =>
  new Promise((resolve, reject) => {
    // A client that hangs up at once (socketListens) is no error of the server's.
    const server = createServer((s) => s.on('error', () => {}).end('hello\n'));
    server.once('error', reject);
    server.listen(path, () => resolve(server));
  });

const greeting = (path: string): Promise<string> =>
  new Promise((resolve, reject) => {
    let text = '';
    const s = connect(path);
    s.setEncoding('utf8');
    s.on('data', (d) => {
      text += d;
    });
    s.once('end', () => resolve(text));
    s.once('error', reject);
  });

const present = (path: string) =>
  lstat(path).then(
    () => true,
    () => false,
  );

describe("a vm guest's runtime directory (decision 0061)", () => {
  let dir: string;
  let server: Server | undefined;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'trivisor-vm-run-'));
  });
  after(async () => {
    server?.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('its files are in STATE/run/vm/NAME; the disk, console log, uid and UEFI variables stay in the guest dir', () => {
    const p = vmGuestPaths('/s', 'web');
    assert.equal(p.runDir, '/s/run/vm/web');
    for (const f of [
      p.qmpSocket,
      p.consoleSocket,
      p.agentSocket,
      p.pidFile,
      p.qemuLog,
      p.bootRecord,
      p.configDisk,
    ]) {
      assert.ok(f.startsWith('/s/run/vm/web/'), f);
    }
    for (const f of [p.disk, p.consoleLog, p.uidFile, p.uefiVars])
      assert.ok(f.startsWith('/s/guests/web/'), f);
  });

  test('a QEMU started before it had one is adopted: its sockets linked (and reached through the links), its boot record, pid and log moved over, once', async () => {
    const p = vmGuestPaths(dir, 'old');
    await mkdir(p.dir, { recursive: true });
    const boot = `${JSON.stringify({ identity: { pid: 1, startTime: 2 }, boot: 'kit' })}\n`;
    await writeFile(join(p.dir, 'boot.json'), boot);
    await writeFile(join(p.dir, 'qemu.pid'), '1\n');
    await writeFile(join(p.dir, 'qemu.log'), 'warning: something\n');
    server = await listen(join(p.dir, 'qmp.sock'));

    assert.equal(await adoptLegacyRuntime(p), true);
    assert.equal(await readFile(p.bootRecord, 'utf8'), boot);
    assert.equal(await readFile(p.pidFile, 'utf8'), '1\n');
    assert.equal(await readFile(p.qemuLog, 'utf8'), 'warning: something\n');
    assert.equal(await readlink(p.qmpSocket), join(p.dir, 'qmp.sock'));
    assert.equal(await greeting(p.qmpSocket), 'hello\n', 'the running QEMU answers through the link');
    assert.equal(await present(p.agentSocket), false, 'no link to a socket that was not there');
    for (const f of ['boot.json', 'qemu.pid', 'qemu.log']) {
      assert.equal(await present(join(p.dir, f)), false, `the old ${f} went`);
    }
    assert.equal(await present(join(p.dir, 'qmp.sock')), true, 'the bound socket stays where QEMU bound it');
    assert.equal(await adoptLegacyRuntime(p), false, 'done once');

    // Once that QEMU is gone, its links and the old sockets they name go with the runtime files.
    server.close();
    server = undefined;
    await removeRuntimeFiles(p);
    assert.equal(await present(p.qmpSocket), false);
    assert.equal(await present(join(p.dir, 'qmp.sock')), false);
    assert.equal(await present(p.bootRecord), true, 'the boot record stays until the runtime directory goes');
    await removeRuntimeDir(p);
    assert.equal(await present(p.runDir), false);
  });

  test("the files of a QEMU something still listens on are kept, whatever its boot record says (issue 13); a gone QEMU's go", async () => {
    const p = vmGuestPaths(dir, 'busy');
    await mkdir(p.runDir, { recursive: true });
    await writeFile(p.pidFile, '7\n');
    await writeFile(p.bootRecord, '{}\n');
    // A socket file whose process is gone (bound and listened on by a process that exited): stale.
    const stale = spawnSync(
      'perl',
      [
        '-MIO::Socket::UNIX',
        '-e',
        'IO::Socket::UNIX->new(Local => $ARGV[0], Listen => 1) or die "$!"',
        p.agentSocket,
      ],
      { encoding: 'utf8' },
    );
    assert.equal(stale.status, 0, stale.stderr);
    assert.equal((await lstat(p.agentSocket)).isSocket(), true);
    assert.equal(await socketListens(p.agentSocket), false);
    const qmp = await listen(p.qmpSocket);
    try {
      assert.equal(await socketListens(p.qmpSocket), true);
      assert.deepEqual(await removeRuntimeFiles(p, { settleMs: 200 }), [p.qmpSocket]);
      assert.deepEqual(await removeRuntimeDir(p, { settleMs: 0 }), [p.qmpSocket]);
      for (const f of [p.qmpSocket, p.agentSocket, p.pidFile, p.bootRecord]) {
        assert.equal(await present(f), true, `${f} kept while a QEMU listens`);
      }
      assert.equal(await greeting(p.qmpSocket), 'hello\n', 'still reached');
    } finally {
      await new Promise((resolve) => qmp.close(resolve));
    }
    // One that stops listening within the wait (a QEMU whose last threads are ending): it all goes.
    await writeFile(p.pidFile, '7\n');
    const ending = await listen(p.consoleSocket);
    setTimeout(() => ending.close(), 150);
    assert.deepEqual(await removeRuntimeFiles(p, { settleMs: 5000 }), []);
    for (const f of [p.consoleSocket, p.agentSocket, p.pidFile]) assert.equal(await present(f), false, f);
    // Gone (a listener's close removes its own path; the stale one is another's): all of it goes.
    assert.deepEqual(await removeRuntimeFiles(p), []);
    assert.equal(await present(p.agentSocket), false);
    assert.equal(await present(p.pidFile), false);
    assert.deepEqual(await removeRuntimeDir(p), []);
    assert.equal(await present(p.runDir), false);
  });

  test('a guest that never ran, or one whose runtime directory has its boot record, is left alone', async () => {
    const p = vmGuestPaths(dir, 'new');
    await mkdir(p.dir, { recursive: true });
    assert.equal(await adoptLegacyRuntime(p), false);
    assert.equal(await present(p.runDir), false);
    await mkdir(p.runDir, { recursive: true });
    await writeFile(p.bootRecord, '{}\n');
    await writeFile(join(p.dir, 'boot.json'), '{"stale":true}\n');
    assert.equal(await adoptLegacyRuntime(p), false);
    assert.equal(await readFile(p.bootRecord, 'utf8'), '{}\n');
  });
});
