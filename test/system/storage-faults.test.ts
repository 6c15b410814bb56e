import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, eventually, sleep, startDaemon } from './harness.ts';

const CLI = path.resolve(import.meta.dirname, '../../bin/trivisor');

// Daemons of storage tests need no network of their own.
process.env.TRIVISOR_DEFAULT_NETWORK = 'none';

/** Polls fast for a path: the windows these tests aim at last about a second. */
async function waitForPath(what: string, find: () => boolean, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (find()) return;
    await sleep(5);
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('storage faults: a daemon killed mid-way and full disks leave nothing half-made', () => {
  let d: Daemon;
  let dir: string;
  const mounts: string[] = [];
  before(async () => {
    d = await startDaemon();
    dir = await makeRunDir('faults');
  });
  after(async () => {
    for (const m of mounts.reverse()) spawnSync('umount', ['-l', m]);
    await d?.destroy();
    if (dir) await removeRunDir(dir);
  });

  const guestDir = (name: string) => path.join(d.stateDir, 'guests', name);
  const tmpEntries = (p: string) =>
    existsSync(p) ? readdirSync(p).filter((n) => n.startsWith('.tmp-')) : [];
  const names = () =>
    (JSON.parse(d.ok(['list', '--format', 'json'])) as Array<{ name: string }>).map((g) => g.name);
  const status = (name: string) =>
    (JSON.parse(d.ok(['info', name, '--format', 'json'])) as { status: string }).status;
  const tmpfs = (at: string, size: string) => {
    mkdirSync(at, { recursive: true });
    const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', at]);
    assert.equal(r.status, 0, String(r.stderr));
    mounts.push(at);
  };
  const unmount = (at: string) => {
    spawnSync('umount', [at]);
    mounts.splice(mounts.indexOf(at), 1);
  };

  test('kill -9 during a snapshot of a running guest: no half snapshot, the guest runs unfrozen', async () => {
    d.ok(['launch', 'busybox', 'f1']);
    d.ok([
      'exec',
      'f1',
      '--',
      'sh',
      '-c',
      'dd if=/dev/zero of=/big bs=1M count=600 2>/dev/null && dd if=/dev/urandom of=/rand bs=1M count=4 2>/dev/null',
    ]);
    const r = await d.api('POST', '/1.0/guests/f1/snapshots', { name: 's1' });
    assert.equal(r.status, 202);
    await waitForPath(
      'the snapshot copy to start',
      () => tmpEntries(path.join(guestDir('f1'), 'snapshots')).length > 0,
    );
    await d.kill9();
    await d.restart();
    await eventually('f1 runs again', () => status('f1') === 'Running');
    assert.deepEqual(tmpEntries(path.join(guestDir('f1'), 'snapshots')), []);
    assert.equal(existsSync(path.join(guestDir('f1'), 'snapshots/s1')), false);
    assert.deepEqual(JSON.parse(d.ok(['snapshot', 'list', 'f1', '--format', 'json'])), []);
    assert.equal(d.ok(['exec', 'f1', '--', 'echo', 'thawed']), 'thawed\n');
    d.ok(['snapshot', 'create', 'f1', 's1']);
  });

  test('kill -9 during an import: the half-imported guest is deleted at the next start', async () => {
    d.ok(['export', 'f1', path.join(dir, 'f1.tar.zst')]);
    const importer = spawn(CLI, ['import', path.join(dir, 'f1.tar.zst'), 'f2'], {
      env: { ...process.env, TRIVISOR_DIR: d.stateDir },
      stdio: 'ignore',
    });
    try {
      await waitForPath('the import to fill the new guest', () => tmpEntries(guestDir('f2')).length > 0);
      await d.kill9();
    } finally {
      importer.kill('SIGKILL');
    }
    await d.restart();
    await eventually(
      'the half-imported f2 is deleted',
      () => !names().includes('f2') && !existsSync(guestDir('f2')),
    );
    assert.deepEqual(tmpEntries(path.join(d.stateDir, 'imports')), []);
    assert.deepEqual(
      readdirSync(d.stateDir).filter((n) => n.startsWith('trivisor-import-')),
      [],
      'no upload spool left',
    );
    // The same import runs to the end now.
    d.ok(['import', path.join(dir, 'f1.tar.zst'), 'f2']);
    assert.deepEqual(
      (JSON.parse(d.ok(['snapshot', 'list', 'f2', '--format', 'json'])) as unknown[]).length,
      0,
    );
    d.ok(['delete', 'f2']);
  });

  test('a full disk on the daemon during an export is one clear error; guest and snapshots stay intact', () => {
    const backups = path.join(d.stateDir, 'backups');
    tmpfs(backups, '2m');
    try {
      const r = d.cli(['export', 'f1', path.join(dir, 'never.tar.zst'), '--with-snapshots']);
      assert.equal(r.code, 1);
      assert.equal(
        r.stderr,
        'Error: Cannot back up guest f1: the disk is full; free some space and try again\n',
      );
      assert.equal(existsSync(path.join(dir, 'never.tar.zst')), false);
      assert.deepEqual(readdirSync(path.join(backups, 'f1')), []);
    } finally {
      unmount(backups);
    }
    assert.equal(status('f1'), 'Running');
    assert.equal(d.ok(['exec', 'f1', '--', 'echo', 'fine']), 'fine\n');
    assert.deepEqual(
      (JSON.parse(d.ok(['snapshot', 'list', 'f1', '--format', 'json'])) as Array<{ name: string }>).map(
        (s) => s.name,
      ),
      ['s1'],
    );
  });

  test('a full disk where the client writes the archive is one clear error and leaves no partial file', () => {
    const small = path.join(dir, 'small');
    tmpfs(small, '1m');
    try {
      const target = path.join(small, 'f1.tar.zst');
      const r = d.cli(['export', 'f1', target]);
      assert.equal(r.code, 1);
      assert.equal(r.stderr, `Error: Cannot write ${target}: the disk is full\n`);
      assert.deepEqual(readdirSync(small), []);
    } finally {
      unmount(small);
    }
    assert.deepEqual(readdirSync(path.join(d.stateDir, 'backups', 'f1')), [], 'the daemon dropped its copy');
    assert.equal(status('f1'), 'Running');
  });

  test('an export can be cancelled through its operation, leaving no archive behind', async () => {
    const r = await d.api('POST', '/1.0/guests/f1/backups', {});
    assert.equal(r.status, 202);
    const id = String((r.body.metadata as { id: string }).id);
    await waitForPath(
      'the backup to start writing',
      () => tmpEntries(path.join(d.stateDir, 'backups/f1')).length > 0,
    );
    assert.equal((await d.api('DELETE', `/1.0/operations/${id}`)).status, 200);
    const done = await d.api('GET', `/1.0/operations/${id}/wait?timeout=60`);
    const op = done.body.metadata as { status: string; error: string };
    assert.equal(op.status, 'Cancelled');
    assert.match(op.error, /cancelled/);
    await eventually(
      'the work dir is gone',
      () => readdirSync(path.join(d.stateDir, 'backups/f1')).length === 0,
    );
    assert.equal(status('f1'), 'Running');
    assert.equal(d.ok(['exec', 'f1', '--', 'echo', 'thawed']), 'thawed\n');
  });

  test('a cancelled export fails the download that follows it (issue 20 §1): no file, no archive', async () => {
    const target = path.join(dir, 'cancelled.tar.zst');
    const exporter = spawn(CLI, ['export', 'f1', target], {
      env: { ...process.env, TRIVISOR_DIR: d.stateDir },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    exporter.stderr.on('data', (c: Buffer) => {
      stderr += String(c);
    });
    try {
      await waitForPath(
        'the backup to start writing while the CLI downloads it',
        () => tmpEntries(path.join(d.stateDir, 'backups/f1')).length > 0 && existsSync(`${target}.partial`),
      );
      const list = await d.api('GET', '/1.0/operations?recursion=1');
      const ops = list.body.metadata as Array<{ id: string; description: string; status: string }>;
      const op = ops.find((o) => o.description === 'Backing up guest f1' && o.status === 'Running');
      assert.ok(op, `an export operation runs: ${JSON.stringify(list.body.metadata)}`);
      assert.equal((await d.api('DELETE', `/1.0/operations/${op.id}`)).status, 200);
      if (exporter.exitCode === null && exporter.signalCode === null) await once(exporter, 'exit');
      assert.equal(exporter.exitCode, 1);
      assert.equal(stderr, 'Error: The backup of guest f1 was cancelled\n');
    } finally {
      exporter.kill('SIGKILL');
    }
    assert.equal(existsSync(target), false);
    assert.equal(existsSync(`${target}.partial`), false);
    await eventually(
      'the daemon drops the partial archive',
      () => readdirSync(path.join(d.stateDir, 'backups/f1')).length === 0,
    );
    assert.equal(status('f1'), 'Running');
  });

  test('an import can be cancelled through its operation, leaving no guest, no spool and no work dir', async () => {
    const importer = spawn(CLI, ['import', path.join(dir, 'f1.tar.zst'), 'f3'], {
      env: { ...process.env, TRIVISOR_DIR: d.stateDir },
      stdio: 'ignore',
    });
    try {
      await waitForPath('the import to fill the new guest', () => tmpEntries(guestDir('f3')).length > 0);
      const list = await d.api('GET', '/1.0/operations?recursion=1');
      const ops = list.body.metadata as Array<{ id: string; description: string; status: string }>;
      const op = ops.find((o) => o.description === 'Importing a guest backup' && o.status === 'Running');
      assert.ok(op, `an import operation runs: ${JSON.stringify(list.body.metadata)}`);
      assert.equal((await d.api('DELETE', `/1.0/operations/${op.id}`)).status, 200);
      const done = await d.api('GET', `/1.0/operations/${op.id}/wait?timeout=60`);
      const end = done.body.metadata as { status: string; error: string };
      assert.equal(end.status, 'Cancelled');
      assert.match(end.error, /cancelled/);
      if (importer.exitCode === null && importer.signalCode === null) await once(importer, 'exit');
      assert.notEqual(importer.exitCode, 0);
    } finally {
      importer.kill('SIGKILL');
    }
    await eventually('f3 is deleted', () => !names().includes('f3') && !existsSync(guestDir('f3')));
    assert.deepEqual(readdirSync(path.join(d.stateDir, 'imports')), []);
    assert.deepEqual(
      readdirSync(d.stateDir).filter((n) => n.startsWith('trivisor-import-')),
      [],
      'no upload spool left',
    );
  });

  test('an import whose client stops sending mid-upload is cancelled at once: no guest, no spool, its connection closed', async () => {
    const archive = path.join(dir, 'f1.tar.zst');
    if (!existsSync(archive)) d.ok(['export', 'f1', archive]);
    // The index, the root file system's header and 2 MiB of it: less than one of the daemon's 4 MiB
    // batches (decision 0106), so that no batch is complete when the upload stops.
    const sent = Buffer.alloc(2 << 20);
    const fd = openSync(archive, 'r');
    try {
      assert.equal(readSync(fd, sent, 0, sent.length, 0), sent.length);
    } finally {
      closeSync(fd);
    }
    // A raw client: the headers and part of the body, then nothing, its connection open.
    const req = http.request({
      socketPath: d.socket,
      method: 'POST',
      path: '/1.0/backups',
      headers: { 'content-type': 'application/octet-stream', 'x-trivisor-name': 'stalled' },
    });
    req.on('error', () => {});
    const answered = new Promise<{ status: number; text: string }>((resolve) => {
      req.on('response', (res) => {
        let text = '';
        res.on('data', (c: Buffer) => {
          text += String(c);
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        res.on('error', () => resolve({ status: res.statusCode ?? 0, text }));
      });
    });
    const closed = new Promise<void>((resolve) => {
      req.on('socket', (socket) => socket.once('close', () => resolve()));
    });
    try {
      await new Promise<void>((resolve, reject) => req.write(sent, (e) => (e ? reject(e) : resolve())));
      await waitForPath('the import to make the guest', () => existsSync(guestDir('stalled')), 30_000);
      let op: { id: string } | undefined;
      await eventually('the import operation runs', async () => {
        const list = await d.api('GET', '/1.0/operations?recursion=1');
        const ops = list.body.metadata as Array<{ id: string; description: string; status: string }>;
        op = ops.find((o) => o.description === 'Importing a guest backup' && o.status === 'Running');
        return op !== undefined;
      });
      assert.ok(op);
      // What was sent has been read: the daemon waits on the client for the rest of the batch.
      await sleep(1000);
      const cancelled = Date.now();
      assert.equal((await d.api('DELETE', `/1.0/operations/${op.id}`)).status, 200);
      const done = await d.api('GET', `/1.0/operations/${op.id}/wait?timeout=30`);
      const end = done.body.metadata as { status: string; error: string };
      assert.equal(end.status, 'Cancelled', JSON.stringify(end));
      assert.match(end.error, /cancelled/);
      // The upload's request is answered and its connection closed, though the body never ended.
      const bounded = <T>(what: string, p: Promise<T>) =>
        Promise.race([
          p,
          sleep(10_000).then(() => {
            throw new Error(`${what}: not within 10 s of the cancel`);
          }),
        ]);
      const answer = await bounded('the answer', answered);
      assert.equal(answer.status, 409);
      assert.match(answer.text, /cancelled/);
      await bounded('the connection closed', closed);
      assert.ok(Date.now() - cancelled < 10_000, `ended ${Date.now() - cancelled} ms after the cancel`);
    } finally {
      req.destroy();
    }
    await eventually(
      'no guest stalled',
      () => !names().includes('stalled') && !existsSync(guestDir('stalled')),
    );
    assert.deepEqual(readdirSync(path.join(d.stateDir, 'imports')), [], 'no work dir left');
    assert.deepEqual(
      readdirSync(d.stateDir).filter((n) => n.startsWith('trivisor-import-')),
      [],
      'no upload spool left',
    );
    // The daemon serves on.
    assert.equal((await d.api('GET', '/1.0')).status, 200);
    assert.equal(status('f1'), 'Running');
  });
});
