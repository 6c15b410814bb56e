import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { countingStore } from '../../test/fakes/counting-store.ts';
import { aGuestSpec, aGuestStatus } from '../../test/fakes/guest-records.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec } from '../core/types.ts';
import { silentLogger } from '../host/logger.ts';
import { createEventBus } from '../services/event-bus.ts';
import { createOperationService } from '../services/operation-service.ts';
import type { OperationService } from '../services/types.ts';
import type { KvEngine } from '../store/kv-engine.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { records, valuesOf } from '../store/records.ts';
import { firesIn } from './minute-clock.ts';
import { createSnapshotScheduler, nextSnapshotName } from './snapshot-scheduler.ts';

const spec = (name: string, config: Record<string, string>, location = 'h1') =>
  aGuestSpec({ name, config, location });
const status = (running: boolean) => aGuestStatus({ status: running ? 'Running' : 'Stopped' });

describe('schedules', () => {
  test('a cron fires in the minutes it names, and only those', () => {
    const at = (iso: string) => new Date(iso);
    assert.equal(firesIn('0 3 * * *', at('2026-12-05T03:00:00')), true);
    assert.equal(firesIn('0 3 * * *', at('2026-12-05T03:01:00')), false);
    assert.equal(firesIn('*/15 * * * *', at('2026-12-05T10:45:00')), true);
    assert.equal(firesIn('*/15 * * * *', at('2026-12-05T10:46:00')), false);
    assert.equal(firesIn('@hourly', at('2026-12-05T11:00:00')), true);
    assert.equal(firesIn('@daily', at('2026-12-05T11:00:00')), false);
  });

  test('a name is the pattern with the lowest free number', () => {
    assert.equal(nextSnapshotName('snap%d', new Set()), 'snap0');
    assert.equal(nextSnapshotName('snap%d', new Set(['snap0', 'snap1', 'snap3'])), 'snap2');
    assert.equal(nextSnapshotName('auto-%d-x', new Set(['auto-0-x'])), 'auto-1-x');
  });
});

describe('snapshot scheduler (fake clock)', () => {
  let store: KvEngine;
  let operations: OperationService;
  let made: string[];
  let deleted: string[];
  const scheduler = () =>
    createSnapshotScheduler({
      store,
      hostName: 'h1',
      operations,
      log: silentLogger(),
      storage: {
        async createSnapshot(guest, name, o = {}) {
          made.push(`${guest}/${name}`);
          return operations.start({
            project: 'default',
            description: 'snapshot',
            resources: {},
            run: async () => {
              await records.snapshot.at(guest, name).put(store, {
                name,
                guest,
                createdAt: new Date().toISOString(),
                wasRunning: true,
                location: 'h1',
                ...(o.expiresAt !== undefined && { expiresAt: o.expiresAt }),
              });
              return undefined;
            },
          });
        },
        async deleteSnapshot(guest, name) {
          deleted.push(`${guest}/${name}`);
          return operations.start({
            project: 'default',
            description: 'delete',
            resources: {},
            run: async () => {
              await store.delete(records.snapshot.key(guest, name));
              return undefined;
            },
          });
        },
      },
    });
  const names = async (guest: string) =>
    valuesOf(await records.snapshot.list(store, guest))
      .map((s) => `${s.name}${s.expiresAt ? ` until ${s.expiresAt}` : ''}`)
      .sort();

  beforeEach(async () => {
    store = createMemoryStore();
    operations = createOperationService(createEventBus());
    made = [];
    deleted = [];
    const guests: Array<[GuestSpec, boolean]> = [
      [spec('hourly', { 'snapshots.schedule': '0 * * * *', 'snapshots.expiry': '2h' }), true],
      [spec('named', { 'snapshots.schedule': '*/30 * * * *', 'snapshots.pattern': 'auto-%d' }), true],
      [spec('stopped', { 'snapshots.schedule': '0 * * * *' }), false],
      [
        spec('stopped-too', { 'snapshots.schedule': '0 * * * *', 'snapshots.schedule.stopped': 'true' }),
        false,
      ],
      [spec('theirs', { 'snapshots.schedule': '0 * * * *' }, 'h2'), true],
      [spec('plain', {}), true],
    ];
    for (const [s, up] of guests) {
      await records.guest.at(s.name).put(store, s);
      await records.guestStatus.at(s.name).put(store, status(up));
    }
    // One taken by hand: no expiry, never deleted by the scheduler.
    await records.snapshot.at('hourly', 'by-hand').put(store, {
      name: 'by-hand',
      guest: 'hourly',
      createdAt: '2026-12-01T00:00:00.000Z',
      wasRunning: true,
      location: 'h1',
    });
  });
  afterEach(async () => {
    await store.close();
  });

  test('over three hours: each schedule fires in its minutes, once; stopped guests only when asked; another member’s guests never; snapshots expire, those taken by hand stay', async () => {
    const s = scheduler();
    const t0 = Date.parse('2026-12-05T10:00:00.000Z');
    for (let m = 0; m <= 180; m++) {
      await s.pass(new Date(t0 + m * 60_000 + 2000));
      if (m === 0) await s.pass(new Date(t0 + 30_000)); // a second pass in the same minute takes nothing more
    }
    assert.deepEqual(
      made.filter((m) => m.startsWith('hourly/')),
      ['hourly/snap0', 'hourly/snap1', 'hourly/snap0', 'hourly/snap1'],
    );
    // 10:00's is kept until 12:00 and deleted at 12:00's pass, before 12:00's own is made under
    // the name it freed; 11:00's likewise at 13:00.
    assert.deepEqual(deleted, ['hourly/snap0', 'hourly/snap1']);
    assert.deepEqual(await names('hourly'), [
      'by-hand',
      'snap0 until 2026-12-05T14:00:00.000Z',
      'snap1 until 2026-12-05T15:00:00.000Z',
    ]);
    assert.equal(made.filter((m) => m.startsWith('named/')).length, 7);
    assert.deepEqual(await names('named'), [
      'auto-0',
      'auto-1',
      'auto-2',
      'auto-3',
      'auto-4',
      'auto-5',
      'auto-6',
    ]);
    assert.deepEqual(await names('stopped'), []);
    assert.equal((await names('stopped-too')).length, 4);
    assert.equal(
      made.some((m) => m.startsWith('theirs/') || m.startsWith('plain/')),
      false,
    );
  });
});

describe('snapshot scheduler reads (decision 0080)', () => {
  test('among 10,000 guests without a schedule, a pass after the first reads only the scheduled guests, and a schedule set later is seen', async () => {
    const memory = createMemoryStore();
    const store = countingStore(memory);
    const operations = createOperationService(createEventBus());
    const made: string[] = [];
    const s = createSnapshotScheduler({
      store,
      hostName: 'h1',
      operations,
      log: silentLogger(),
      storage: {
        async createSnapshot(guest, name) {
          made.push(`${guest}/${name}`);
          await records.snapshot.at(guest, name).put(memory, {
            name,
            guest,
            createdAt: new Date().toISOString(),
            wasRunning: true,
            location: 'h1',
          });
          return operations.start({
            project: 'default',
            description: 'snapshot',
            resources: {},
            run: async () => undefined,
          });
        },
        async deleteSnapshot() {
          throw new Error('nothing expires here');
        },
      },
    });
    try {
      for (let i = 0; i < 10_000; i++) {
        await records.guest.at(`g${i}`).put(memory, spec(`g${i}`, {}));
        await records.guestStatus.at(`g${i}`).put(memory, status(true));
        if (i % 100 === 0)
          await records.snapshot.at(`g${i}`, 'by-hand').put(memory, {
            name: 'by-hand',
            guest: `g${i}`,
            createdAt: '2026-12-01T00:00:00.000Z',
            wasRunning: true,
            location: 'h1',
          });
      }
      await records.guest.at('g1').put(memory, spec('g1', { 'snapshots.schedule': '* * * * *' }));
      const t0 = Date.parse('2026-12-05T10:00:00.000Z');
      await s.pass(new Date(t0 + 2000));
      assert.deepEqual(made, ['g1/snap0']);
      store.reset();
      for (let m = 1; m <= 5; m++) await s.pass(new Date(t0 + m * 60_000 + 2000));
      assert.equal(made.length, 6);
      // One list a pass: the scheduled guest's own snapshots, for the next free name.
      assert.deepEqual(store.reads.lists, Array(5).fill(keys.snapshots('g1')));
      assert.ok(store.reads.records <= 5 * 8, `five passes read ${store.reads.records} records`);
      // A schedule set now is seen by the next pass, through the watch.
      await records.guest.at('g2').put(memory, spec('g2', { 'snapshots.schedule': '* * * * *' }));
      await new Promise((r) => setTimeout(r, 50));
      await s.pass(new Date(t0 + 6 * 60_000 + 2000));
      assert.deepEqual(made.slice(-2), ['g1/snap6', 'g2/snap0']);
    } finally {
      s.stop();
      await memory.close();
    }
  });
});
