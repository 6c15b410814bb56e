import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { countingStore } from '../../test/fakes/counting-store.ts';
import { aGuestSpec, aGuestStatus } from '../../test/fakes/guest-records.ts';
import { invalidArgument } from '../core/errors.ts';
import type { TrivisorEvent } from '../core/types.ts';
import type { BackupChainLink } from '../drivers/guest-storage.ts';
import { silentLogger } from '../host/logger.ts';
import { createEventBus } from '../services/event-bus.ts';
import { createOperationService } from '../services/operation-service.ts';
import type { OperationService } from '../services/types.ts';
import { chainStateFileOf, writeChainState } from '../storage/chain-state-file.ts';
import {
  expiredBackups,
  listShipped,
  nextShippedLink,
  parseShippedName,
  restorePoint,
  type ShippedBackup,
  shippedName,
} from '../storage/shipped-backups.ts';
import type { KvStore } from '../store/kv.ts';
import type { KvEngine } from '../store/kv-engine.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { records } from '../store/records.ts';
import { createBackupScheduler } from './backup-scheduler.ts';

const at = (iso: string) => new Date(`${iso}Z`);

/** Shipped backups as their names say (oldest first): `T` a whole archive, `F:c` a full of chain c, `I:c:n` link n. */
function shippedOf(...specs: Array<[string, string]>): ShippedBackup[] {
  return specs.map(([iso, what]) => {
    const [kind, chain = '', seq = '0'] = what.split(':');
    const chainId = chain.padEnd(16, '0');
    const link =
      kind === 'T'
        ? undefined
        : {
            chain: chainId,
            sequence: Number(seq),
            kind: kind === 'F' ? ('full' as const) : ('incremental' as const),
          };
    const name = shippedName(at(iso), link);
    return { name, path: `/x/${name}`, takenAt: at(iso), sizeBytes: 1, ...(link && { link }) };
  });
}
const namesOf = (bs: readonly ShippedBackup[]) => bs.map((b) => b.name);

describe('retention of shipped backups', () => {
  test('whole archives: beyond the newest count, and older than the age; never the newest', () => {
    const four = shippedOf(
      ['2026-12-01T03:00:00', 'T'],
      ['2026-12-02T03:00:00', 'T'],
      ['2026-12-03T03:00:00', 'T'],
      ['2026-12-04T03:00:00', 'T'],
    );
    const now = at('2026-12-04T03:00:00');
    assert.deepEqual(namesOf(expiredBackups(four, { count: 2 }, now)), [
      '20261201T030000Z.tar',
      '20261202T030000Z.tar',
    ]);
    assert.deepEqual(namesOf(expiredBackups(four, { count: 10, maxAgeMs: 36 * 3600_000 }, now)), [
      '20261201T030000Z.tar',
      '20261202T030000Z.tar',
    ]);
    // All older than the age: the newest stays all the same.
    assert.deepEqual(
      namesOf(expiredBackups(four, { count: 10, maxAgeMs: 1000 }, at('2027-01-01T00:00:00'))),
      ['20261201T030000Z.tar', '20261202T030000Z.tar', '20261203T030000Z.tar'],
    );
  });

  test('a chain goes only whole, once every link is past: its incrementals newest first, its full last', () => {
    const two = shippedOf(
      ['2026-12-01T00:00:00', 'F:a'],
      ['2026-12-01T01:00:00', 'I:a:1'],
      ['2026-12-01T02:00:00', 'I:a:2'],
      ['2026-12-01T03:00:00', 'F:b'],
      ['2026-12-01T04:00:00', 'I:b:1'],
    );
    const now = at('2026-12-01T04:00:00');
    // Count 3 keeps b's two links and a's newest: a stays whole (its full is needed by that link).
    assert.deepEqual(namesOf(expiredBackups(two, { count: 3 }, now)), []);
    // Count 2: every link of a is past.
    assert.deepEqual(namesOf(expiredBackups(two, { count: 2 }, now)), [
      '20261201T020000Z-incr-a000000000000000-2.tar',
      '20261201T010000Z-incr-a000000000000000-1.tar',
      '20261201T000000Z-full-a000000000000000.tar',
    ]);
    // Count 1 still keeps b whole: its full is what its newest link is restored from.
    assert.deepEqual(namesOf(expiredBackups(two, { count: 1 }, now)).length, 3);
    // By age: a's newest link is 120 minutes old, b's full 60.
    assert.deepEqual(namesOf(expiredBackups(two, { count: 100, maxAgeMs: 150 * 60_000 }, now)), []);
    assert.equal(expiredBackups(two, { count: 100, maxAgeMs: 90 * 60_000 }, now).length, 3);
    assert.equal(expiredBackups(two, { count: 100, maxAgeMs: 30 * 60_000 }, now).length, 3);
  });

  test('the chain of the newest restorable backup is kept, however old, when a newer chain is broken', () => {
    // Chain b lost its full (removed by hand): a is what a recovery would use.
    const broken = shippedOf(
      ['2026-12-01T00:00:00', 'F:a'],
      ['2026-12-01T01:00:00', 'I:a:1'],
      ['2026-12-01T03:00:00', 'I:b:1'],
      ['2026-12-01T04:00:00', 'I:b:2'],
    );
    const expired = expiredBackups(broken, { count: 1, maxAgeMs: 1000 }, at('2026-12-09T00:00:00'));
    assert.deepEqual(namesOf(expired), [
      '20261201T040000Z-incr-b000000000000000-2.tar',
      '20261201T030000Z-incr-b000000000000000-1.tar',
    ]);
  });

  test('names sort as the times they were taken, and say the link', () => {
    assert.equal(shippedName(at('2026-12-05T03:07:00')), '20261205T030700Z.tar');
    const link = { chain: '3f9a1c2b4d5e6f70', sequence: 2, kind: 'incremental' as const };
    assert.equal(
      shippedName(at('2026-12-05T03:07:00'), link),
      '20261205T030700Z-incr-3f9a1c2b4d5e6f70-2.tar',
    );
    assert.deepEqual(parseShippedName('20261205T030700Z-incr-3f9a1c2b4d5e6f70-2.tar'), {
      takenAt: at('2026-12-05T03:07:00'),
      link,
    });
    assert.deepEqual(parseShippedName('20261205T030700Z-full-3f9a1c2b4d5e6f70.tar')?.link?.sequence, 0);
    for (const other of [
      '20261205T030700Z-incr-3f9a1c2b4d5e6f70-0.tar',
      'x.tar',
      '20261205T030700Z-full-X.tar',
    ]) {
      assert.equal(parseShippedName(other), undefined, other);
    }
  });
});

describe('restore point and next link', () => {
  test('the newest chain whole: its full and every incremental in order', () => {
    const b = shippedOf(
      ['2026-12-01T00:00:00', 'T'],
      ['2026-12-01T01:00:00', 'F:a'],
      ['2026-12-01T02:00:00', 'I:a:1'],
    );
    assert.deepEqual(restorePoint(b), { links: b.slice(1), problems: [] });
  });

  test('a missing link is named, and the links before it are used', () => {
    const b = shippedOf(
      ['2026-12-01T00:00:00', 'F:a'],
      ['2026-12-01T01:00:00', 'I:a:1'],
      ['2026-12-01T03:00:00', 'I:a:3'],
    );
    const point = restorePoint(b);
    assert.deepEqual(namesOf(point.links), namesOf(b.slice(0, 2)));
    assert.deepEqual(point.problems, [
      'Link 2 of chain a000000000000000 is missing: the chain ends at 20261201T010000Z-incr-a000000000000000-1.tar',
    ]);
  });

  test('a chain without its full falls back to the chain before; a damaged link counts as missing', () => {
    const b = shippedOf(
      ['2026-12-01T00:00:00', 'F:a'],
      ['2026-12-01T01:00:00', 'I:a:1'],
      ['2026-12-01T03:00:00', 'I:b:1'],
    );
    const point = restorePoint(b);
    assert.deepEqual(namesOf(point.links), namesOf(b.slice(0, 2)));
    assert.match(
      point.problems[0] ?? '',
      /^The full backup of chain b0+ is missing: 20261201T030000Z-incr-b0+-1\.tar cannot be restored$/,
    );
    const damaged = restorePoint(b, new Set([b[0]?.name ?? '']));
    assert.deepEqual(damaged.links, []);
    assert.equal(damaged.problems.length, 2);
  });

  test('the next link follows a whole chain until it has full_every links; else a new chain', () => {
    const b = shippedOf(['2026-12-01T00:00:00', 'F:a'], ['2026-12-01T01:00:00', 'I:a:1']);
    assert.deepEqual(nextShippedLink(b, 3), { newChain: false, after: b[1]?.link });
    assert.deepEqual(nextShippedLink(b, 2), { newChain: true });
    assert.deepEqual(nextShippedLink([], 3), { newChain: true });
    assert.deepEqual(nextShippedLink(shippedOf(['2026-12-01T00:00:00', 'T']), 3), { newChain: true });
    const gap = shippedOf(['2026-12-01T00:00:00', 'F:a'], ['2026-12-01T02:00:00', 'I:a:2']);
    assert.deepEqual(nextShippedLink(gap, 7), { newChain: true });
  });
});

describe('backup scheduler (fake clock, real directory)', () => {
  let store: KvEngine;
  let operations: OperationService;
  let work: string;
  let dir: string;
  let made: Array<{ guest: string; incremental: boolean; newChain: boolean; continueChain?: string }>;
  let deleted: string[];
  let failing: Set<string>;
  let events: TrivisorEvent[];
  /** The chain each guest's storage is at, as a driver keeps it (decision 0048). */
  let chainOf: Map<string, BackupChainLink>;
  let chains: number;
  /** Guests whose model has a portable chain state (pvm's checksums): the fake leaves one beside each archive. */
  let carrying: Set<string>;

  const scheduler = (on: KvStore = store, hostName = 'h1') =>
    createBackupScheduler({
      store: on,
      hostName,
      operations,
      events: { publish: (e) => events.push({ ...e, timestamp: '' }) },
      directory: dir,
      log: silentLogger(),
      storage: {
        async createBackup(guest, options) {
          const backup = `backup-${made.length}`;
          made.push({
            guest,
            incremental: options.incremental === true,
            newChain: options.newChain === true,
            ...(options.continueChain && {
              continueChain: `${options.continueChain.chain}:${options.continueChain.sequence}:${options.continueChain.data}`,
            }),
          });
          return operations.start({
            project: 'default',
            description: 'backup',
            resources: {},
            run: async () => {
              if (failing.has(guest)) throw invalidArgument(`no room for ${guest}`);
              const carried = options.continueChain;
              // As a driver whose state is about content (pvm) takes over a state another member left.
              if (carried && carrying.has(guest)) {
                chainOf.set(guest, { chain: carried.chain, sequence: carried.sequence, kind: 'incremental' });
              }
              const before = options.newChain ? undefined : chainOf.get(guest);
              const link: BackupChainLink = before
                ? { chain: before.chain, sequence: before.sequence + 1, kind: 'incremental' }
                : { chain: String(++chains).padStart(16, '0'), sequence: 0, kind: 'full' };
              chainOf.set(guest, link);
              const archive = join(work, `${guest}-${backup}.tar`);
              await writeFile(archive, `archive of ${guest} (${backup})`);
              if (carrying.has(guest)) {
                const data = Buffer.from(`sums of ${guest} at ${link.chain}:${link.sequence}`);
                await writeChainState(chainStateFileOf(archive), { guest, model: 'ct' }, { ...link, data });
              }
              return { backup, incremental: link };
            },
          });
        },
        async backupFile(guest, backup) {
          return { path: join(work, `${guest}-${backup}.tar`), sizeBytes: 1 };
        },
        async deleteBackup(guest, backup) {
          deleted.push(`${guest}-${backup}`);
          await rm(join(work, `${guest}-${backup}.tar`), { force: true });
          await rm(chainStateFileOf(join(work, `${guest}-${backup}.tar`)), { force: true });
        },
      },
    });
  const shipped = async (guest: string) => (await listShipped(dir, guest)).map((b) => b.name);
  /** The shipped backups as kind and sequence: `F0 I1 I2 F0`. */
  const links = async (guest: string) =>
    (await listShipped(dir, guest))
      .map((b) => `${b.link?.kind === 'full' ? 'F' : 'I'}${b.link?.sequence}`)
      .join(' ');

  beforeEach(async () => {
    store = createMemoryStore();
    operations = createOperationService(createEventBus());
    work = await mkdtemp(join(tmpdir(), 'backup-scheduler-'));
    dir = join(work, 'shipped');
    made = [];
    deleted = [];
    failing = new Set();
    events = [];
    chainOf = new Map();
    chains = 0;
    carrying = new Set();
    const guests = [
      aGuestSpec({
        name: 'daily',
        config: {
          'backups.schedule': '0 3 * * *',
          'backups.retention.count': '2',
          'backups.full_every': '1',
        },
      }),
      aGuestSpec({
        name: 'hourly',
        config: {
          'backups.schedule': '0 * * * *',
          'backups.retention.age': '90m',
          'backups.full_every': '1',
        },
      }),
      aGuestSpec({ name: 'theirs', config: { 'backups.schedule': '0 * * * *' }, location: 'h2' }),
      aGuestSpec({ name: 'plain', config: {} }),
      aGuestSpec({
        name: 'chained',
        config: {
          'backups.schedule': '*/10 * * * *',
          'backups.full_every': '3',
          'backups.retention.count': '4',
        },
      }),
    ];
    for (const s of guests) {
      await records.guest.at(s.name).put(store, s);
      await records.guestStatus.at(s.name).put(store, aGuestStatus({ status: 'Stopped' }));
    }
  });
  afterEach(async () => {
    await rm(work, { recursive: true, force: true });
  });

  test('among 10,000 guests without a schedule, a pass after the first reads the failures on record and the guests whose schedule fires, nothing else (decision 0080)', async () => {
    for (let i = 0; i < 10_000; i++) {
      await records.guest.at(`g${i}`).put(store, aGuestSpec({ name: `g${i}` }));
      await records.guestStatus.at(`g${i}`).put(store, aGuestStatus());
    }
    // A failure whose guest is gone goes at the next pass; one of a guest with a schedule stays.
    const failure = { at: '2026-12-05T02:00:00Z', member: 'h1', error: 'no room' };
    await records.backupFailure.at('gone').put(store, failure);
    await records.backupFailure.at('daily').put(store, failure);
    const counted = countingStore(store);
    const s = scheduler(counted);
    try {
      await s.pass(at('2026-12-05T02:58:04'));
      assert.equal(await store.get(records.backupFailure.at('gone').key), undefined);
      counted.reset();
      // 03:00: daily, hourly and chained fire; 03:01 and 03:02: none.
      for (const minute of ['00', '01', '02']) await s.pass(at(`2026-12-05T03:${minute}:04`));
      assert.deepEqual(made.map((m) => m.guest).sort(), ['chained', 'daily', 'hourly']);
      assert.deepEqual(counted.reads.lists, Array(3).fill(records.backupFailure.prefix));
      assert.ok(counted.reads.records <= 12, `three passes read ${counted.reads.records} records`);
      // A schedule set now is seen by the next pass, through the watch.
      await records.guest
        .at('g5')
        .put(store, aGuestSpec({ name: 'g5', config: { 'backups.schedule': '* * * * *' } }));
      await new Promise((r) => setTimeout(r, 50));
      await s.pass(at('2026-12-05T03:03:04'));
      assert.deepEqual(made.at(-1)?.guest, 'g5');
    } finally {
      s.stop();
    }
  });

  test('a guest of this member whose schedule fires is backed up, stopped or not, and the archive shipped; the local copy goes', async () => {
    const s = scheduler();
    await s.pass(at('2026-12-05T03:00:04'));
    assert.deepEqual(made.map((m) => m.guest).sort(), ['chained', 'daily', 'hourly']);
    const [daily] = await shipped('daily');
    assert.match(daily ?? '', /^20261205T030000Z-full-0{15}\d\.tar$/);
    const backup = made.findIndex((m) => m.guest === 'daily');
    assert.equal(
      await readFile(join(dir, 'daily', daily ?? ''), 'utf8'),
      `archive of daily (backup-${backup})`,
    );
    assert.deepEqual(await readdir(dir), ['chained', 'daily', 'hourly']);
    assert.equal((await stat(join(dir, 'daily'))).mode & 0o777, 0o700);
    assert.equal((await stat(join(dir, 'daily', daily ?? ''))).mode & 0o777, 0o600);
    assert.equal(deleted.length, 3, 'the local backups are deleted once shipped');
    // Once a minute only, however many passes run in it.
    await s.pass(at('2026-12-05T03:00:40'));
    assert.equal(made.length, 3);
    // Not in a minute the schedule does not name.
    await s.pass(at('2026-12-05T03:01:04'));
    assert.equal(made.length, 3);
  });

  test('a full backup, then incrementals after it, a new full every full_every backups', async () => {
    const s = scheduler();
    for (const minute of ['00', '10', '20', '30', '40']) await s.pass(at(`2026-12-05T04:${minute}:04`));
    assert.equal(await links('chained'), 'F0 I1 I2 F0 I1');
    const asked = made.filter((m) => m.guest === 'chained');
    assert.deepEqual(
      asked.map((m) => m.newChain),
      [true, false, false, true, false],
    );
    assert.ok(asked.every((m) => m.incremental));
    const [first, , , fourth] = await listShipped(dir, 'chained');
    assert.notEqual(first?.link?.chain, fourth?.link?.chain);
  });

  test('retention: by count and by age, pruned after each shipping, chains only whole', async () => {
    const s = scheduler();
    for (const day of ['01', '02', '03', '04']) await s.pass(at(`2026-12-${day}T03:00:04`));
    assert.deepEqual(
      (await shipped('daily')).map((n) => n.slice(0, 16)),
      ['20261203T030000Z', '20261204T030000Z'],
    );
    for (const hour of ['04', '05', '06']) await s.pass(at(`2026-12-04T${hour}:00:04`));
    // 90 minutes: the backups of 05:00 and 06:00 are kept at 06:00, the older ones go.
    assert.deepEqual(
      (await shipped('hourly')).map((n) => n.slice(0, 16)),
      ['20261204T050000Z', '20261204T060000Z'],
    );
  });

  test('retention by count keeps chains whole: the first chain goes once its newest link is past', async () => {
    const s = scheduler();
    // count 4 over chains of 3: the first chain goes only once its newest link is past (the 7th
    // backup), never in part.
    const chained: string[] = [];
    for (const minute of ['00', '10', '20', '30', '40', '50']) {
      await s.pass(at(`2026-12-05T05:${minute}:04`));
      chained.push(await links('chained'));
    }
    await s.pass(at('2026-12-05T06:00:04'));
    chained.push(await links('chained'));
    assert.deepEqual(chained, [
      'F0',
      'F0 I1',
      'F0 I1 I2',
      'F0 I1 I2 F0',
      'F0 I1 I2 F0 I1',
      'F0 I1 I2 F0 I1 I2',
      'F0 I1 I2 F0',
    ]);
  });

  test('a failed backup ships nothing, is a warning on the guest and an event until the next one succeeds', async () => {
    failing.add('daily');
    const s = scheduler();
    await s.pass(at('2026-12-05T03:00:04'));
    assert.deepEqual(await shipped('daily'), []);
    assert.equal((await shipped('hourly')).length, 1);
    // No partial file left in the guest's directory.
    assert.equal((await readdir(join(dir, 'hourly'))).length, 1);
    const failure = await records.backupFailure.at('daily').get(store);
    assert.deepEqual(failure?.value, {
      at: '2026-12-05T03:00:00Z',
      member: 'h1',
      error: 'no room for daily',
    });
    assert.deepEqual(
      events.map((e) => [e.action, e.metadata.name, e.metadata.error]),
      [['guest-backup-failed', 'daily', 'no room for daily']],
    );
    failing.clear();
    await s.pass(at('2026-12-06T03:00:04'));
    assert.equal(await records.backupFailure.at('daily').get(store), undefined);
    assert.deepEqual(events.at(-1)?.action, 'guest-backup-recovered');
  });

  test('a link the shipped chain lacks is never shipped after it: a new full at once', async () => {
    const s = scheduler();
    await s.pass(at('2026-12-05T04:00:04'));
    await s.pass(at('2026-12-05T04:10:04'));
    assert.equal(await links('chained'), 'F0 I1');
    // The directory could not take link 2 (made, then lost): the guest's chain is at 2.
    failing.add('x');
    const link = chainOf.get('chained');
    assert.ok(link);
    chainOf.set('chained', { ...link, sequence: link.sequence + 1 });
    await s.pass(at('2026-12-05T04:20:04'));
    assert.equal(await links('chained'), 'F0 I1 F0');
    const asked = made.filter((m) => m.guest === 'chained').map((m) => m.newChain);
    assert.deepEqual(asked, [true, false, false, true]);
  });

  test('a guest that moved goes on with the shipped chain from the state shipped beside its newest link (decision 0062 amended)', async () => {
    carrying.add('chained');
    await scheduler().pass(at('2026-12-05T04:00:04'));
    await scheduler().pass(at('2026-12-05T04:10:04'));
    assert.equal(await links('chained'), 'F0 I1');
    const [, i1] = await listShipped(dir, 'chained');
    assert.ok(i1?.link);
    // Only the newest link's state is in the directory.
    assert.deepEqual(
      (await readdir(join(dir, 'chained'))).filter((n) => n.endsWith('.chain.json')),
      [i1.name.replace(/\.tar$/, '.chain.json')],
    );
    // Moved to h2: the guest's storage there has no chain of its own (the move's import ended it).
    const spec = (await records.guest.at('chained').get(store))?.value;
    assert.ok(spec);
    await records.guest.at('chained').put(store, { ...spec, location: 'h2' });
    chainOf.delete('chained');
    await scheduler(store, 'h2').pass(at('2026-12-05T04:20:04'));
    assert.equal(await links('chained'), 'F0 I1 I2');
    const last = made.at(-1);
    assert.equal(last?.continueChain, `${i1.link.chain}:1:sums of chained at ${i1.link.chain}:1`);
    assert.equal(last?.newChain, false);
    // A state that is not that link's (damaged by hand): a full one, as before.
    const [, , i2] = await listShipped(dir, 'chained');
    assert.ok(i2);
    const statePath = chainStateFileOf(i2.path);
    const text = await readFile(statePath, 'utf8');
    await writeFile(statePath, text.replace('"sequence":2', '"sequence":1'));
    chainOf.delete('chained');
    await scheduler(store, 'h2').pass(at('2026-12-05T04:30:04'));
    assert.equal(await links('chained'), 'F0 I1 I2 F0');
    assert.equal(made.at(-1)?.continueChain, undefined);
  });

  test('a guest whose model leaves no state starts a new chain after a move, as before', async () => {
    await scheduler().pass(at('2026-12-05T04:00:04'));
    await scheduler().pass(at('2026-12-05T04:10:04'));
    const spec = (await records.guest.at('chained').get(store))?.value;
    assert.ok(spec);
    await records.guest.at('chained').put(store, { ...spec, location: 'h2' });
    chainOf.delete('chained');
    await scheduler(store, 'h2').pass(at('2026-12-05T04:20:04'));
    assert.equal(await links('chained'), 'F0 I1 F0');
    assert.deepEqual(
      (await readdir(join(dir, 'chained'))).filter((n) => n.endsWith('.chain.json')),
      [],
    );
  });

  test('a guest not yet made, or being deleted, is not backed up; a failure outlives neither guest nor schedule', async () => {
    await records.guestStatus.at('daily').put(store, aGuestStatus({ status: 'Stopped', provisioned: false }));
    const hourly = await records.guest.at('hourly').get(store);
    assert.ok(hourly);
    await records.guest.at('hourly').put(store, { ...hourly.value, deleting: true });
    await records.backupFailure.at('gone').put(store, { at: 'x', member: 'h1', error: 'e' });
    await records.backupFailure.at('plain').put(store, { at: 'x', member: 'h1', error: 'e' });
    await scheduler().pass(at('2026-12-05T03:00:04'));
    assert.deepEqual(
      made.map((m) => m.guest),
      ['chained'],
    );
    assert.deepEqual((await records.backupFailure.list(store)).items, []);
  });
});
