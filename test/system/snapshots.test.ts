import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Daemon, eventually, startDaemon } from './harness.ts';

// Daemons of storage tests need no network of their own.
process.env.TRIVISOR_DEFAULT_NETWORK = 'none';

describe('snapshots and copies of ct guests', () => {
  let d: Daemon;
  before(async () => {
    d = await startDaemon();
    // A schedule that fires every minute, kept a minute: checked by the last test, the others'
    // time spent waiting for it.
    d.ok([
      'launch',
      'busybox',
      'sched',
      '-c',
      'snapshots.schedule=* * * * *',
      '-c',
      'snapshots.expiry=1m',
      '-c',
      'snapshots.pattern=auto-%d',
      '-c',
      'backups.schedule=* * * * *',
      '-c',
      'backups.retention.count=1',
      '-c',
      // Every backup a full one: retention then replaces the first by the next (chains: cluster-recover).
      'backups.full_every=1',
    ]);
    d.ok(['exec', 'sched', '--', 'sh', '-c', 'echo shipped > /root/mark']);
    // Its backups cannot be shipped: a file stands where its directory in the backup directory goes.
    mkdirSync(path.join(d.stateDir, 'shipped-backups'), { recursive: true });
    writeFileSync(path.join(d.stateDir, 'shipped-backups', 'unshipped'), 'in the way');
    d.ok(['create', 'busybox', 'unshipped', '-c', 'backups.schedule=* * * * *']);
  });
  /** Every file of guest sched in the daemon's backup directory (the default one). */
  const shippedFiles = () => {
    const dir = path.join(d.stateDir, 'shipped-backups', 'sched');
    return existsSync(dir) ? readdirSync(dir).sort() : [];
  };
  /** Its scheduled backups' archives (each has its chain state file beside it: decision 0062). */
  const shipped = () => shippedFiles().filter((f) => f.endsWith('.tar'));
  /** What the backup directory holds for one archive: itself and the chain state after it. */
  const withState = (archive: string) => [archive.replace(/\.tar$/, '.chain.json'), archive].sort();
  let firstShipped: string | undefined;
  after(async () => {
    await d?.destroy();
  });

  const read = (guest: string, file: string) => d.ok(['exec', guest, '--', 'cat', file]);
  const write = (guest: string, file: string, text: string) =>
    d.ok(['exec', guest, '--', 'sh', '-c', `printf %s '${text}' > ${file}`]);
  /** One `Error:` line, exit code 1. */
  const refused = (r: { code: number; stderr: string }, pattern: RegExp) => {
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^Error: [^\n]+\n$/);
    assert.match(r.stderr, pattern);
  };
  const status = (guest: string) =>
    (JSON.parse(d.ok(['info', guest, '--format', 'json'])) as { status: string }).status;

  test('a snapshot of a running guest restores its old file content and the guest runs again', () => {
    d.ok(['launch', 'busybox', 's1']);
    write('s1', '/data.txt', 'one');
    assert.equal(d.ok(['snapshot', 'create', 's1', 'snap0']).trim(), 'snap0');
    write('s1', '/data.txt', 'two');
    write('s1', '/new.txt', 'made after the snapshot');
    assert.equal(read('s1', '/data.txt'), 'two');
    const list = JSON.parse(d.ok(['snapshot', 'list', 's1', '--format', 'json'])) as Array<{
      name: string;
      wasRunning: boolean;
    }>;
    assert.deepEqual(
      list.map((s) => [s.name, s.wasRunning]),
      [['snap0', true]],
    );
    d.ok(['snapshot', 'restore', 's1', 'snap0']);
    assert.equal(status('s1'), 'Running');
    assert.equal(read('s1', '/data.txt'), 'one');
    assert.notEqual(d.cli(['exec', 's1', '--', 'test', '-e', '/new.txt']).code, 0, 'file made later is gone');
  });

  test('a stopped guest is snapshotted and restored, and stays stopped', () => {
    d.ok(['stop', 's1', '--force']);
    const upper = path.join(d.stateDir, 'guests/s1/upper');
    d.ok(['snapshot', 'create', 's1']); // auto-named snap1
    writeFileSync(path.join(upper, 'data.txt'), 'changed while stopped');
    d.ok(['snapshot', 'restore', 's1', 'snap1']);
    assert.equal(status('s1'), 'Stopped');
    assert.equal(readFileSync(path.join(upper, 'data.txt'), 'utf8'), 'one');
    d.ok(['start', 's1']);
    assert.equal(read('s1', '/data.txt'), 'one');
  });

  test('delete removes the snapshot record and its files', () => {
    d.ok(['snapshot', 'delete', 's1', 'snap1']);
    const names = (
      JSON.parse(d.ok(['snapshot', 'list', 's1', '--format', 'json'])) as Array<{ name: string }>
    ).map((s) => s.name);
    assert.deepEqual(names, ['snap0']);
    assert.equal(existsSync(path.join(d.stateDir, 'guests/s1/snapshots/snap1')), false);
  });

  test('bad names, unknown snapshots and duplicates are refused with 4xx', async () => {
    const bad = await d.api('POST', '/1.0/guests/s1/snapshots', { name: 'Bad_Name' });
    assert.equal(bad.status, 400);
    assert.match(bad.body.error ?? '', /snapshot name/);
    const dup = await d.api('POST', '/1.0/guests/s1/snapshots', { name: 'snap0' });
    assert.equal(dup.status, 409);
    const unknown = await d.api('PUT', '/1.0/guests/s1', { restore: 'nope' });
    assert.equal(unknown.status, 404);
    assert.match(unknown.body.error ?? '', /no snapshot nope/);
    assert.equal((await d.api('GET', '/1.0/guests/s1/snapshots/nope')).status, 404);
    assert.equal((await d.api('DELETE', '/1.0/guests/s1/snapshots/nope')).status, 404);
    assert.equal((await d.api('POST', '/1.0/guests/ghost/snapshots', { name: 'x' })).status, 404);
    const r = d.cli(['snapshot', 'restore', 's1', 'nope']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^Error: Guest s1 has no snapshot nope\n$/);
  });

  test('a copy is independent of its source in both directions', () => {
    d.ok(['copy', 's1', 'c1', '--start']);
    assert.equal(status('c1'), 'Running');
    assert.equal(read('c1', '/data.txt'), 'one');
    write('c1', '/data.txt', 'copy');
    assert.equal(read('s1', '/data.txt'), 'one');
    write('s1', '/data.txt', 'source');
    write('s1', '/only-in-source.txt', 'x');
    assert.equal(read('c1', '/data.txt'), 'copy');
    assert.notEqual(d.cli(['exec', 'c1', '--', 'test', '-e', '/only-in-source.txt']).code, 0);
  });

  test('a copy of a snapshot has the snapshot content and no snapshots of its own', () => {
    write('s1', '/data.txt', 'later');
    d.ok(['copy', 's1/snap0', 'c2']);
    assert.equal(status('c2'), 'Stopped');
    d.ok(['start', 'c2']);
    assert.equal(read('c2', '/data.txt'), 'one');
    assert.deepEqual(JSON.parse(d.ok(['snapshot', 'list', 'c2', '--format', 'json'])), []);
    const taken = d.cli(['copy', 's1', 'c2']);
    assert.equal(taken.code, 1);
    assert.match(taken.stderr, /already exists/);
  });

  test('deleting a guest deletes its snapshots; a new guest of the same name starts with none', async () => {
    d.ok(['delete', '--force', 's1']);
    d.ok(['create', 'busybox', 's1']);
    assert.deepEqual(JSON.parse(d.ok(['snapshot', 'list', 's1', '--format', 'json'])), []);
    d.ok(['delete', 's1']);
  });

  test('a guest with backups.schedule is backed up into the backup directory each minute; the archive imports as a guest with its files', async () => {
    await eventually('a shipped backup', () => shipped().length > 0, 75_000);
    const [first, ...more] = shipped();
    assert.match(first ?? '', /^\d{8}T\d{4}00Z-full-[0-9a-f]{16}\.tar$/);
    assert.deepEqual(more, []);
    await eventually('its chain state shipped beside it', () => shippedFiles().length === 2, 10_000);
    assert.deepEqual(shippedFiles(), withState(first ?? ''));
    firstShipped = first;
    d.ok(['import', path.join(d.stateDir, 'shipped-backups', 'sched', first ?? ''), 'from-shipped']);
    d.ok(['start', 'from-shipped']);
    assert.equal(d.ok(['exec', 'from-shipped', '--', 'cat', '/root/mark']), 'shipped\n');
    d.ok(['delete', '--force', 'from-shipped']);
    refused(d.cli(['config', 'set', 'sched', 'backups.schedule=sometimes']), /is not a schedule/);
    refused(d.cli(['config', 'set', 'sched', 'backups.retention.count=0']), /from 1 to 1000/);
    refused(d.cli(['config', 'set', 'sched', 'backups.retention.age=long']), /is not a duration/);
    refused(d.cli(['config', 'set', 'sched', 'backups.full_every=0']), /from 1 to 1000/);
  });

  test('a failed scheduled backup is a warning of the guest in list and info until the next one succeeds', async () => {
    const failed = /The scheduled backup of \d{4}-\d{2}-\d{2}T\d{2}:\d{2}:00Z failed on \S+: .+/;
    await eventually(
      'the failure shown under the list',
      () => /^Warning: unshipped: /m.test(d.ok(['list'])),
      75_000,
    );
    assert.match(d.ok(['list']), new RegExp(`^Warning: unshipped: ${failed.source}$`, 'm'));
    assert.match(d.ok(['info', 'unshipped']), new RegExp(`^Warning: ${failed.source}$`, 'm'));
    // The way cleared: the next backup ships, and the warning goes.
    rmSync(path.join(d.stateDir, 'shipped-backups', 'unshipped'));
    await eventually(
      'the warning cleared by a shipped backup',
      () =>
        existsSync(path.join(d.stateDir, 'shipped-backups', 'unshipped')) &&
        !/Warning: unshipped/.test(d.ok(['list'])),
      75_000,
    );
    assert.ok(
      readdirSync(path.join(d.stateDir, 'shipped-backups', 'unshipped')).some((f) => f.includes('-full-')),
    );
    assert.doesNotMatch(d.ok(['info', 'unshipped']), /Warning/);
    d.ok(['delete', 'unshipped']);
  });

  test('a guest with snapshots.schedule gets a snapshot each minute, named by its pattern, and each is deleted when it expires', async () => {
    type Snap = { name: string; createdAt: string; expiresAt?: string };
    const snaps = () => JSON.parse(d.ok(['snapshot', 'list', 'sched', '--format', 'json'])) as Snap[];
    await eventually('a scheduled snapshot', () => snaps().length > 0, 75_000);
    const first = snaps()[0];
    assert.equal(first?.name, 'auto-0');
    assert.equal(
      Date.parse(first?.expiresAt ?? '') - Math.floor(Date.parse(first?.createdAt ?? '') / 60_000) * 60_000,
      60_000,
      'it expires a minute after the minute it was taken in',
    );
    // A minute later it has expired: deleted before the next one is taken under the name it freed.
    await eventually(
      'the first expired and the next taken',
      () => {
        const now = snaps();
        return now.length === 1 && now[0]?.createdAt !== first?.createdAt;
      },
      75_000,
    );
    assert.deepEqual(
      snaps().map((s) => s.name),
      ['auto-0'],
    );
    refused(d.cli(['config', 'set', 'sched', 'snapshots.schedule=now']), /is not a schedule/);
    refused(d.cli(['config', 'set', 'sched', 'snapshots.expiry=forever']), /is not a duration/);
    refused(d.cli(['config', 'set', 'sched', 'snapshots.pattern=snap']), /must hold %d once/);
    // backups.retention.count=1: a minute later the newer backup took the place of the first.
    await eventually(
      'a newer shipped backup, alone',
      () => {
        const now = shipped();
        return now.length === 1 && now[0] !== firstShipped;
      },
      75_000,
    );
    // The first archive's chain state file went with it.
    await eventually(
      'the first chain state removed with its archive',
      () => shippedFiles().length === 2,
      10_000,
    );
    assert.deepEqual(shippedFiles(), withState(shipped()[0] ?? ''));
    d.ok(['delete', '--force', 'sched']);
  });
});
