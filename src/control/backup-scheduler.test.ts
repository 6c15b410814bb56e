import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { aGuestSpec, aGuestStatus } from '../../test/fakes/guest-records.ts';
import { invalidArgument } from '../core/errors.ts';
import { silentLogger } from '../host/logger.ts';
import { createEventBus } from '../services/event-bus.ts';
import { createOperationService } from '../services/operation-service.ts';
import type { OperationService } from '../services/types.ts';
import { expiredBackups, listShipped, shippedName } from '../storage/shipped-backups.ts';
import type { KvEngine } from '../store/kv-engine.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { records } from '../store/records.ts';
import { createBackupScheduler } from './backup-scheduler.ts';

const at = (iso: string) => new Date(`${iso}Z`);

describe('retention of shipped backups', () => {
  const taken = (...isos: string[]) => isos.map((iso) => ({ takenAt: at(iso), id: iso }));
  test('beyond the newest count, and older than the age; never the newest', () => {
    const six = taken(
      '2026-12-01T03:00:00',
      '2026-12-02T03:00:00',
      '2026-12-03T03:00:00',
      '2026-12-04T03:00:00',
    );
    const now = at('2026-12-04T03:00:00');
    assert.deepEqual(
      expiredBackups(six, { count: 2 }, now).map((b) => b.id),
      ['2026-12-02T03:00:00', '2026-12-01T03:00:00'],
    );
    assert.deepEqual(
      expiredBackups(six, { count: 10, maxAgeMs: 36 * 3600_000 }, now).map((b) => b.id),
      ['2026-12-02T03:00:00', '2026-12-01T03:00:00'],
    );
    // All older than the age: the newest stays all the same.
    assert.deepEqual(
      expiredBackups(six, { count: 10, maxAgeMs: 1000 }, at('2027-01-01T00:00:00')).map((b) => b.id),
      ['2026-12-03T03:00:00', '2026-12-02T03:00:00', '2026-12-01T03:00:00'],
    );
  });

  test('names sort as the times they were taken', () => {
    assert.equal(shippedName(at('2026-12-05T03:07:00')), '20261205T030700Z.tar');
  });
});

describe('backup scheduler (fake clock, real directory)', () => {
  let store: KvEngine;
  let operations: OperationService;
  let work: string;
  let dir: string;
  let made: string[];
  let deleted: string[];
  let failing: Set<string>;

  const scheduler = () =>
    createBackupScheduler({
      store,
      hostName: 'h1',
      operations,
      directory: dir,
      log: silentLogger(),
      storage: {
        async createBackup(guest) {
          const backup = `backup-${made.length}`;
          made.push(guest);
          return operations.start({
            project: 'default',
            description: 'backup',
            resources: {},
            run: async () => {
              if (failing.has(guest)) throw invalidArgument(`no room for ${guest}`);
              await writeFile(join(work, `${guest}-${backup}.tar`), `archive of ${guest} (${backup})`);
              return { backup };
            },
          });
        },
        async backupFile(guest, backup) {
          return { path: join(work, `${guest}-${backup}.tar`), sizeBytes: 1 };
        },
        async deleteBackup(guest, backup) {
          deleted.push(`${guest}-${backup}`);
          await rm(join(work, `${guest}-${backup}.tar`), { force: true });
        },
      },
    });
  const shipped = async (guest: string) => (await listShipped(dir, guest)).map((b) => b.name);

  beforeEach(async () => {
    store = createMemoryStore();
    operations = createOperationService(createEventBus());
    work = await mkdtemp(join(tmpdir(), 'backup-scheduler-'));
    dir = join(work, 'shipped');
    made = [];
    deleted = [];
    failing = new Set();
    const guests = [
      aGuestSpec({
        name: 'daily',
        config: { 'backups.schedule': '0 3 * * *', 'backups.retention.count': '2' },
      }),
      aGuestSpec({
        name: 'hourly',
        config: { 'backups.schedule': '0 * * * *', 'backups.retention.age': '90m' },
      }),
      aGuestSpec({ name: 'theirs', config: { 'backups.schedule': '0 * * * *' }, location: 'h2' }),
      aGuestSpec({ name: 'plain', config: {} }),
    ];
    for (const s of guests) {
      await records.guest.at(s.name).put(store, s);
      await records.guestStatus.at(s.name).put(store, aGuestStatus({ status: 'Stopped' }));
    }
  });
  afterEach(async () => {
    await rm(work, { recursive: true, force: true });
  });

  test('a guest of this member whose schedule fires is backed up, stopped or not, and the archive shipped; the local copy goes', async () => {
    const s = scheduler();
    await s.pass(at('2026-12-05T03:00:04'));
    assert.deepEqual(made.sort(), ['daily', 'hourly']);
    assert.deepEqual(await shipped('daily'), ['20261205T030000Z.tar']);
    assert.equal(
      await readFile(join(dir, 'daily', '20261205T030000Z.tar'), 'utf8'),
      made[0] === 'daily' ? 'archive of daily (backup-0)' : 'archive of daily (backup-1)',
    );
    assert.deepEqual(await readdir(dir), ['daily', 'hourly']);
    assert.equal((await stat(join(dir, 'daily'))).mode & 0o777, 0o700);
    assert.equal((await stat(join(dir, 'daily', '20261205T030000Z.tar'))).mode & 0o777, 0o600);
    assert.equal(deleted.length, 2, 'the local backups are deleted once shipped');
    // Once a minute only, however many passes run in it.
    await s.pass(at('2026-12-05T03:00:40'));
    assert.equal(made.length, 2);
    // Not in a minute the schedule does not name.
    await s.pass(at('2026-12-05T03:01:04'));
    assert.equal(made.length, 2);
  });

  test('retention: by count and by age, pruned after each shipping', async () => {
    const s = scheduler();
    for (const day of ['01', '02', '03', '04']) await s.pass(at(`2026-12-${day}T03:00:04`));
    assert.deepEqual(await shipped('daily'), ['20261203T030000Z.tar', '20261204T030000Z.tar']);
    for (const hour of ['04', '05', '06']) await s.pass(at(`2026-12-04T${hour}:00:04`));
    // 90 minutes: the backups of 05:00 and 06:00 are kept at 06:00, the older ones go.
    assert.deepEqual(await shipped('hourly'), ['20261204T050000Z.tar', '20261204T060000Z.tar']);
  });

  test('a failed backup ships nothing and leaves the others to be made', async () => {
    failing.add('daily');
    await scheduler().pass(at('2026-12-05T03:00:04'));
    assert.deepEqual(await shipped('daily'), []);
    assert.deepEqual(await shipped('hourly'), ['20261205T030000Z.tar']);
    // No partial file left in the guest's directory.
    assert.deepEqual(await readdir(join(dir, 'hourly')), ['20261205T030000Z.tar']);
  });

  test('a guest not yet made, or being deleted, is not backed up', async () => {
    await records.guestStatus.at('daily').put(store, aGuestStatus({ status: 'Stopped', provisioned: false }));
    const hourly = await records.guest.at('hourly').get(store);
    assert.ok(hourly);
    await records.guest.at('hourly').put(store, { ...hourly.value, deleting: true });
    await scheduler().pass(at('2026-12-05T03:00:04'));
    assert.deepEqual(made, []);
  });
});
