import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createClient } from '../../src/client/client.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, eventually, startDaemon } from './harness.ts';

// Daemons of storage tests need no network of their own.
process.env.TRIVISOR_DEFAULT_NETWORK = 'none';

/** Every regular file and link of the guest's root with owner, mode and content hash, sorted. */
const FINGERPRINT = [
  'sh',
  '-c',
  'cd / && find . -xdev \\( -type f -o -type l \\) | sort | while read -r f; do ' +
    'if [ -L "$f" ]; then echo "$f -> $(readlink "$f")"; else echo "$(stat -c "%u:%g %a" "$f") $(sha256sum < "$f" | cut -c1-64) $f"; fi; done',
];

describe('export and import of ct guests between two daemons', () => {
  let src: Daemon;
  let dst: Daemon;
  let dir: string;
  let token: string;
  before(async () => {
    [src, dst] = await Promise.all([startDaemon({ tcp: true }), startDaemon()]);
    dir = await makeRunDir('backups');
    token = readFileSync(path.join(src.stateDir, 'token'), 'utf8').trim();
  });
  after(async () => {
    await Promise.all([src?.destroy(), dst?.destroy()]);
    if (dir) await removeRunDir(dir);
  });

  const file = (name: string) => path.join(dir, name);
  const leftovers = (d: Daemon) =>
    ['imports', 'backups'].flatMap((sub) => {
      const p = path.join(d.stateDir, sub);
      return existsSync(p) ? readdirSync(p, { recursive: true }).map(String) : [];
    });
  const guests = (d: Daemon) =>
    (JSON.parse(d.ok(['list', '--format', 'json'])) as Array<{ name: string }>).map((g) => g.name);

  let before1: string;
  let snapContent: string;

  test('export (through --remote) writes one archive with a manifest of checksums', () => {
    src.ok(['launch', 'busybox', 'b1']);
    src.ok([
      'exec',
      'b1',
      '--',
      'sh',
      '-c',
      'mkdir -p /srv/data && echo old > /srv/data/v.txt && dd if=/dev/urandom of=/srv/data/blob bs=64k count=40 2>/dev/null ' +
        '&& chown 1234:2345 /srv/data/blob && chmod 640 /srv/data/blob && ln -s /srv/data/v.txt /srv/link && rm /bin/vi',
    ]);
    src.ok(['snapshot', 'create', 'b1', 'snap0']);
    snapContent = src.ok(['exec', 'b1', '--', 'sha256sum', '/srv/data/blob']);
    src.ok([
      'exec',
      'b1',
      '--',
      'sh',
      '-c',
      'echo new > /srv/data/v.txt && dd if=/dev/urandom of=/srv/data/blob bs=1k count=3 2>/dev/null',
    ]);
    before1 = src.ok(['exec', 'b1', '--', ...FINGERPRINT]);
    assert.match(before1, /1234:2345 640 [0-9a-f]{64} \.\/srv\/data\/blob/);
    assert.doesNotMatch(before1, /\.\/bin\/vi$/m);
    // Over HTTPS, its certificate pinned by remote add (decision 0022).
    src.ok(['remote', 'add', 'src', src.url ?? '', '--token', token, '--accept-certificate']);
    src.ok(['--remote', 'src', 'export', 'b1', file('b1.tar.zst'), '--with-snapshots']);
    const listing = spawnSync('tar', ['-tf', file('b1.tar.zst')], { encoding: 'utf8' }).stdout;
    // The index first: an import unpacks the rest while it is uploaded (issue 20 §1).
    assert.equal(listing.split('\n')[0], 'index.json');
    assert.match(listing, /^manifest\.json$/m);
    assert.match(listing, /^rootfs\.tar\.zst$/m);
    assert.match(listing, /^snapshots\/snap0\.tar\.zst$/m);
    assert.deepEqual(leftovers(src), ['b1'], 'the daemon keeps no archive after the download');
  });

  test('import on a fresh daemon gives identical files, owners and modes, and the snapshot', () => {
    assert.equal(dst.ok(['import', file('b1.tar.zst')]).trim(), 'Imported b1');
    dst.ok(['start', 'b1']);
    assert.equal(dst.ok(['exec', 'b1', '--', ...FINGERPRINT]), before1);
    const snaps = JSON.parse(dst.ok(['snapshot', 'list', 'b1', '--format', 'json'])) as Array<{
      name: string;
    }>;
    assert.deepEqual(
      snaps.map((s) => s.name),
      ['snap0'],
    );
    dst.ok(['snapshot', 'restore', 'b1', 'snap0']);
    assert.equal(dst.ok(['exec', 'b1', '--', 'cat', '/srv/data/v.txt']), 'old\n');
    assert.equal(dst.ok(['exec', 'b1', '--', 'sha256sum', '/srv/data/blob']), snapContent);
    assert.deepEqual(leftovers(dst), []);
  });

  test('import under another name; an existing name is refused', () => {
    dst.ok(['import', file('b1.tar.zst'), 'b2']);
    assert.deepEqual(guests(dst).sort(), ['b1', 'b2']);
    const again = dst.cli(['import', file('b1.tar.zst')]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^Error: Guest b1 already exists: give the import another name\n$/);
    dst.ok(['delete', 'b2']);
  });

  test('a download that follows the export while it is written ends with the finished archive, byte for byte', async () => {
    const client = createClient({ socketPath: src.socket });
    const backup = `backup-${randomBytes(8).toString('hex')}`;
    const op = await client.createBackup('b1', { name: backup, snapshots: true });
    const [, done] = await Promise.all([
      client.downloadBackup('b1', backup, file('followed.tar'), { follow: true }),
      client.waitOperation(op.id),
    ]);
    // The finished archive, downloaded the plain way once the export has ended.
    await client.downloadBackup('b1', backup, file('finished.tar'));
    await client.deleteBackup('b1', backup);
    const followed = readFileSync(file('followed.tar'));
    assert.equal(followed.length, done.metadata.sizeBytes);
    assert.ok(followed.equals(readFileSync(file('finished.tar'))), 'the followed download is the archive');
    assert.deepEqual(leftovers(src), ['b1']);
  });

  test("a download over plain TCP is the daemon's archive byte for byte; the CLI's export over the unix socket imports back over HTTPS", async () => {
    // The daemon's own TCP listener is HTTPS only (a remote's): a client given an http:// URL reads
    // a download over plain TCP (src/client/sink-request.ts), here through a forwarder to its socket.
    const client = createClient({ socketPath: src.socket });
    const backup = `backup-${randomBytes(8).toString('hex')}`;
    await client.waitOperation((await client.createBackup('b1', { name: backup, snapshots: true })).id);
    const sha256 = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
    const onDaemon = sha256(path.join(src.stateDir, 'backups', 'b1', `${backup}.tar`));
    const open = new Set<net.Socket>();
    const forwarder = net.createServer((c) => {
      const d = net.connect(src.socket);
      for (const s of [c, d]) {
        open.add(s);
        s.on('close', () => open.delete(s));
      }
      c.on('error', () => d.destroy());
      d.on('error', () => c.destroy());
      c.pipe(d).pipe(c);
    });
    try {
      await new Promise<void>((r) => forwarder.listen(0, '127.0.0.1', r));
      const port = (forwarder.address() as net.AddressInfo).port;
      const overTcp = createClient({ url: `http://127.0.0.1:${port}` });
      await overTcp.downloadBackup('b1', backup, file('tcp.tar'));
      await overTcp.downloadBackup('b1', backup, file('tcp-followed.tar'), { follow: true });
    } finally {
      for (const s of open) s.destroy();
      await new Promise((r) => forwarder.close(r));
      await client.deleteBackup('b1', backup);
    }
    assert.equal(sha256(file('tcp.tar')), onDaemon);
    assert.equal(sha256(file('tcp-followed.tar')), onDaemon);
    // The CLI's own path: its download over the unix socket, its upload over HTTPS (a remote).
    src.ok(['export', 'b1', file('cli.tar.zst'), '--with-snapshots']);
    assert.equal(
      src.ok(['--remote', 'src', 'import', file('cli.tar.zst'), 'b1cli']).trim(),
      'Imported b1cli',
    );
    src.ok(['start', 'b1cli']);
    assert.equal(src.ok(['exec', 'b1cli', '--', ...FINGERPRINT]), before1);
    src.ok(['delete', '--force', 'b1cli']);
    assert.deepEqual(leftovers(src), ['b1']);
  });

  test('an upload broken off in the middle of its streamed import leaves no guest and no file', async () => {
    const bytes = readFileSync(file('b1.tar.zst'));
    const req = http.request({
      socketPath: dst.socket,
      method: 'POST',
      path: '/1.0/backups',
      headers: {
        'content-type': 'application/octet-stream',
        'content-length': String(bytes.length),
        'x-trivisor-name': 'cut1',
      },
    });
    req.on('error', () => {});
    req.on('response', (res) => res.resume());
    // The index and part of the root file system: the import has made the guest and unpacks into it.
    req.write(bytes.subarray(0, Math.floor(bytes.length * 0.6)));
    await eventually('the streamed import makes the guest', () => guests(dst).includes('cut1'));
    req.destroy();
    await eventually('the guest of the broken-off upload is removed', () => !guests(dst).includes('cut1'));
    await eventually('no work files are left', () => leftovers(dst).length === 0);
    assert.deepEqual(
      readdirSync(dst.stateDir).filter((n) => n.startsWith('trivisor-import-')),
      [],
      'no upload spool',
    );
  });

  test('a corrupted archive is refused with one line and leaves nothing behind', () => {
    const bytes = readFileSync(file('b1.tar.zst'));
    const middle = Math.floor(bytes.length / 2);
    bytes.writeUInt8(bytes.readUInt8(middle) ^ 0xff, middle);
    writeFileSync(file('corrupt.tar.zst'), bytes);
    const r = dst.cli(['import', file('corrupt.tar.zst'), 'bad1']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^Error: The backup archive is corrupted.*\n$/);
    assert.ok(!guests(dst).includes('bad1'));
    assert.deepEqual(leftovers(dst), []);
  });

  test('a truncated archive is refused with one line and leaves nothing behind', () => {
    writeFileSync(file('short.tar.zst'), readFileSync(file('b1.tar.zst')));
    truncateSync(file('short.tar.zst'), Math.floor(statSync(file('short.tar.zst')).size * 0.7));
    const r = dst.cli(['import', file('short.tar.zst'), 'bad2']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^Error: The backup archive is corrupted or truncated.*\n$/);
    assert.ok(!guests(dst).includes('bad2'));
    assert.deepEqual(leftovers(dst), []);
  });

  test('a changed payload whose archive is intact fails its checksum', () => {
    const work = path.join(dir, 'tamper');
    spawnSync('mkdir', ['-p', work]);
    spawnSync('tar', ['-C', work, '-xf', file('b1.tar.zst')]);
    writeFileSync(path.join(work, 'snapshots/snap0.tar.zst'), Buffer.alloc(10240));
    spawnSync('tar', [
      '-C',
      work,
      '-cf',
      file('tampered.tar.zst'),
      'manifest.json',
      'rootfs.tar.zst',
      'snapshots',
    ]);
    const r = dst.cli(['import', file('tampered.tar.zst'), 'bad3']);
    assert.equal(r.code, 1);
    assert.equal(
      r.stderr,
      'Error: The backup archive is corrupted: snapshots/snap0.tar.zst does not match its checksum\n',
    );
    assert.ok(!guests(dst).includes('bad3'));
  });

  test('an archive of an image the host lacks names the missing image', () => {
    const work = path.join(dir, 'other-image');
    spawnSync('mkdir', ['-p', work]);
    spawnSync('tar', ['-C', work, '-xf', file('b1.tar.zst')]);
    const manifestPath = path.join(work, 'manifest.json');
    const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
    manifest.image = { fingerprint: 'ab'.repeat(32), alias: 'debian/trixie', description: '' };
    writeFileSync(manifestPath, JSON.stringify(manifest));
    spawnSync('tar', [
      '-C',
      work,
      '-cf',
      file('other.tar.zst'),
      'manifest.json',
      'rootfs.tar.zst',
      'snapshots',
    ]);
    const r = dst.cli(['import', file('other.tar.zst'), 'bad4']);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /^Error: The image debian\/trixie \(fingerprint abab.*\) .* is not on this host: import or build it first\n$/,
    );
    assert.ok(!guests(dst).includes('bad4'));
    assert.deepEqual(leftovers(dst), []);
  });

  test('a file that is no backup at all is refused', () => {
    writeFileSync(file('junk.tar.zst'), 'not an archive at all');
    const r = dst.cli(['import', file('junk.tar.zst')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^Error: The backup archive is corrupted or truncated/);
  });
});
