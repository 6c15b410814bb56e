import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { aGuestSpec, aGuestStatus } from '../../test/fakes/guest-records.ts';
import type { GuestSpec } from '../core/types.ts';
import { silentLogger } from '../host/logger.ts';
import { createEventBus } from '../services/event-bus.ts';
import { clearMoveMark, saveMoveMark } from '../services/move-marks.ts';
import { createOperationService } from '../services/operation-service.ts';
import type { OperationService } from '../services/types.ts';
import type { KvEngine } from '../store/kv-engine.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { type MemberRecord, records } from '../store/records.ts';
import {
  createEvacuationController,
  EVACUATION_MOVE_TIMEOUT_MS,
  evacuationProgress,
  RESTORE_RETRY_DELAYS_MS,
  retryFailedReturns,
} from './evacuation-controller.ts';

const spec = (name: string, more: Partial<GuestSpec> = {}) => aGuestSpec({ name, ...more });
const status = (running: boolean) => aGuestStatus({ status: running ? 'Running' : 'Stopped' });
const member = (name: string, evacuated = false): MemberRecord => ({
  name,
  address: '198.18.0.1:8444',
  roles: [],
  certificateFingerprint: 'x',
  version: 'test',
  joinedAt: new Date(0).toISOString(),
  evacuated,
});

describe('evacuation controller', () => {
  let store: KvEngine;
  let operations: OperationService;
  let moves: string[];
  let failMoves: boolean;
  /** How many of the next moves fail (then they succeed again). */
  let failNext: number;
  let clock: number;
  /** Guests a port forward pins to their member, with the mover's reason. */
  let pins: Map<string, string>;
  /** Guests whose moves never end by themselves (until cancelled). */
  let hang: Set<string>;
  const controllerOf = (hostName: string, more: { moveTimeoutMs?: number } = {}) =>
    createEvacuationController({
      ...more,
      store,
      hostName,
      operations,
      log: silentLogger(),
      now: () => clock,
      members: async () =>
        (await records.member.list(store)).items.map((m) => ({
          name: m.value.name,
          status: m.value.evacuated ? 'Evacuated' : 'Online',
        })),
      mover: {
        pinned: async (s) => pins.get(s.name),
        async move(name, { target, live }) {
          moves.push(`${name}->${target}${live ? ' live' : ''}`);
          return operations.start({
            project: 'default',
            description: `move ${name}`,
            resources: {},
            mayCancel: true,
            run: async (ctx) => {
              if (hang.has(name)) {
                await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
                throw new Error('cancelled: the guest stays where it was');
              }
              if (failMoves) throw new Error('no room');
              if (failNext > 0) {
                failNext--;
                throw new Error('the destination is not ready');
              }
              const s = await records.guest.at(name).get(store);
              assert.ok(s);
              await records.guest.at(name).put(store, { ...s.value, location: target });
              await records.guestLocation.at(name).put(store, target);
              return undefined;
            },
          });
        },
      },
      guests: {
        async placementFor() {
          return { member: 'h2' };
        },
        async changeState(name, request) {
          return operations.start({
            project: 'default',
            description: `${request.action} ${name}`,
            resources: {},
            run: async () => {
              await records.guestStatus.at(name).put(store, status(request.action === 'start'));
              return undefined;
            },
          });
        },
      },
    });
  const where = async (name: string) => (await records.guest.at(name).get(store))?.value.location;
  const running = async (name: string) => (await records.guestStatus.at(name).get(store))?.value.status;

  beforeEach(async () => {
    store = createMemoryStore();
    operations = createOperationService(createEventBus());
    moves = [];
    failMoves = false;
    failNext = 0;
    clock = Date.parse('2026-12-06T06:00:00Z');
    pins = new Map();
    hang = new Set();
    await records.member.at('h1').put(store, member('h1'));
    await records.member.at('h2').put(store, member('h2'));
    for (const [name, config, up] of [
      ['a', {}, true],
      ['b', { 'cluster.evacuate': 'stop' }, true],
      ['c', { 'cluster.evacuate': 'stop' }, false],
    ] as const) {
      await records.guest.at(name).put(store, spec(name, { config }));
      await records.guestLocation.at(name).put(store, 'h1');
      await records.guestStatus.at(name).put(store, status(up));
    }
    await records.guest.at('elsewhere').put(store, spec('elsewhere', { location: 'h2' }));
  });
  afterEach(async () => {
    await store.close();
  });

  test('a guest a port forward pins to the evacuated member stays there with the reason in its record and in the progress; it is not placed nor moved', async () => {
    const why =
      "a is pinned to h1 by port forward lab 198.18.0.11:8080/tcp → 198.18.50.20:80 (a forward reaches only the guests of its listen address's member)";
    pins.set('a', why);
    await records.member.at('h1').put(store, { ...member('h1', true), evacuateMode: 'auto' });
    await controllerOf('h1').pass();
    assert.deepEqual(moves, []);
    assert.equal(await where('a'), 'h1');
    assert.equal((await records.evacuation.at('a').get(store))?.value.error, why);
    assert.deepEqual(await evacuationProgress(store, 'h1', 'evacuate'), {
      left: [],
      failed: [{ guest: 'a', error: why }],
    });
    // Not tried again by the next pass.
    await controllerOf('h1').pass();
    assert.deepEqual(moves, []);
  });

  test('an evacuated member moves its guests, stops those that say stop, and leaves a stopped one alone; a restore brings every one back as it was', async () => {
    await records.member.at('h1').put(store, { ...member('h1', true), evacuateMode: 'auto' });
    assert.deepEqual(await evacuationProgress(store, 'h1', 'evacuate'), { left: ['a', 'b'], failed: [] });
    await controllerOf('h1').pass();
    assert.deepEqual(moves, ['a->h2']);
    assert.equal(await where('a'), 'h2');
    assert.equal(await where('b'), 'h1');
    assert.equal(await running('b'), 'Stopped');
    assert.equal(await running('c'), 'Stopped');
    assert.deepEqual(
      (await records.evacuation.list(store)).items.map((r) => [
        records.evacuation.nameOf(r.key),
        r.value.action,
      ]),
      [
        ['a', 'migrate'],
        ['b', 'stop'],
      ],
    );
    assert.deepEqual(await evacuationProgress(store, 'h1', 'evacuate'), { left: [], failed: [] });
    // A move handed over but not ended (its mark is there: the source may still send or clean up)
    // has not left yet; another member's move is not this evacuation's.
    await saveMoveMark(store, { guest: 'a', from: 'h1', to: 'h2', reason: 'evacuation', startedAt: '' });
    await saveMoveMark(store, { guest: 'elsewhere', from: 'h2', to: 'h1', reason: 'x', startedAt: '' });
    assert.deepEqual(await evacuationProgress(store, 'h1', 'evacuate'), { left: ['a'], failed: [] });
    await clearMoveMark(store, 'a');
    await clearMoveMark(store, 'elsewhere');
    assert.deepEqual(await evacuationProgress(store, 'h1', 'evacuate'), { left: [], failed: [] });
    // Again: nothing more to do.
    await controllerOf('h1').pass();
    assert.deepEqual(moves, ['a->h2']);

    await records.member.at('h1').put(store, member('h1'));
    assert.deepEqual(await evacuationProgress(store, 'h1', 'restore'), { left: ['a', 'b'], failed: [] });
    await controllerOf('h1').pass();
    assert.equal(await running('b'), 'Running', 'what the evacuation stopped starts again');
    assert.equal(await running('c'), 'Stopped', 'what was stopped before stays stopped');
    await controllerOf('h2').pass();
    assert.deepEqual(moves, ['a->h2', 'a->h1']);
    assert.equal(await where('a'), 'h1');
    assert.equal(await where('elsewhere'), 'h2');
    assert.deepEqual(await evacuationProgress(store, 'h1', 'restore'), { left: [], failed: [] });
    assert.equal((await records.evacuation.list(store)).items.length, 0);
  });

  test('a guest that cannot move keeps its reason and is not tried again until the next evacuation; the progress names it', async () => {
    failMoves = true;
    await records.member.at('h1').put(store, member('h1', true));
    await controllerOf('h1').pass();
    await controllerOf('h1').pass();
    assert.deepEqual(moves, ['a->h2']);
    const progress = await evacuationProgress(store, 'h1', 'evacuate');
    assert.deepEqual(progress.left, []);
    assert.deepEqual(progress.failed, [{ guest: 'a', error: 'no room' }]);
    // Restored, then evacuated again: tried again.
    await records.member.at('h1').put(store, member('h1'));
    await controllerOf('h1').pass();
    assert.equal(await records.evacuation.at('a').get(store), undefined, 'a never left: its record goes');
    failMoves = false;
    pins = new Map();
    await records.member.at('h1').put(store, member('h1', true));
    await controllerOf('h1').pass();
    assert.deepEqual(moves, ['a->h2', 'a->h2']);
    assert.equal(await where('a'), 'h2');
  });

  test('a move back that fails is tried again after each delay, then kept with its reason; a restore asked again tries it again', async () => {
    await records.member.at('h1').put(store, { ...member('h1', true), evacuateMode: 'auto' });
    await controllerOf('h1').pass();
    assert.equal(await where('a'), 'h2');
    await records.member.at('h1').put(store, member('h1'));
    await controllerOf('h1').pass();
    const back = () => moves.filter((m) => m === 'a->h1').length;
    // The first try back fails: the record says when the next comes, and the restore still waits for it.
    failNext = 1;
    await controllerOf('h2').pass();
    assert.equal(back(), 1);
    const r1 = (await records.evacuation.at('a').get(store))?.value;
    assert.equal(r1?.error, undefined);
    assert.deepEqual(r1?.retry, {
      tries: 1,
      at: new Date(clock + (RESTORE_RETRY_DELAYS_MS[0] ?? 0)).toISOString(),
      error: 'the destination is not ready',
    });
    assert.deepEqual(await evacuationProgress(store, 'h1', 'restore'), { left: ['a'], failed: [] });
    // Not before its time; at its time, tried again, and it comes back.
    await controllerOf('h2').pass();
    assert.equal(back(), 1);
    clock += RESTORE_RETRY_DELAYS_MS[0] ?? 0;
    await controllerOf('h2').pass();
    assert.equal(back(), 2);
    assert.equal(await where('a'), 'h1');
    assert.equal(await records.evacuation.at('a').get(store), undefined);

    // Away again; every try back fails: after the last delay the reason is final.
    await records.member.at('h1').put(store, { ...member('h1', true), evacuateMode: 'auto' });
    await controllerOf('h1').pass();
    await records.member.at('h1').put(store, member('h1'));
    await controllerOf('h1').pass();
    failNext = RESTORE_RETRY_DELAYS_MS.length + 1;
    for (const delay of [...RESTORE_RETRY_DELAYS_MS, 0]) {
      await controllerOf('h2').pass();
      clock += delay;
    }
    assert.equal(back(), 2 + RESTORE_RETRY_DELAYS_MS.length + 1);
    assert.equal(await where('a'), 'h2');
    assert.deepEqual(await evacuationProgress(store, 'h1', 'restore'), {
      left: [],
      failed: [{ guest: 'a', error: 'the destination is not ready' }],
    });
    assert.equal((await records.evacuation.at('a').get(store))?.value.retry, undefined);
    clock += 3_600_000;
    await controllerOf('h2').pass();
    assert.equal(back(), 2 + RESTORE_RETRY_DELAYS_MS.length + 1, 'not tried again by itself');
    // `cluster restore` again: tried again, and back.
    await retryFailedReturns(store, 'h1');
    assert.deepEqual(await evacuationProgress(store, 'h1', 'restore'), { left: ['a'], failed: [] });
    await controllerOf('h2').pass();
    assert.equal(await where('a'), 'h1');
    assert.equal(await records.evacuation.at('a').get(store), undefined);
  });

  test('auto moves a running vm live and any other guest cold; live-migrate asks every guest to move live; migrate moves a vm cold', async () => {
    for (const [name, model, config, up] of [
      ['v-run', 'vm', {}, true],
      ['v-off', 'vm', {}, false],
      ['v-cold', 'vm', { 'cluster.evacuate': 'migrate' }, true],
      ['ct-live', 'ct', { 'cluster.evacuate': 'live-migrate' }, true],
    ] as const) {
      await records.guest.at(name).put(store, spec(name, { model, config }));
      await records.guestLocation.at(name).put(store, 'h1');
      await records.guestStatus.at(name).put(store, status(up));
    }
    await records.member.at('h1').put(store, { ...member('h1', true), evacuateMode: 'auto' });
    await controllerOf('h1').pass();
    assert.deepEqual(moves.sort(), [
      'a->h2',
      'ct-live->h2 live',
      'v-cold->h2',
      'v-off->h2',
      'v-run->h2 live',
    ]);
    // Restored: the running vm comes back live too.
    moves = [];
    await records.member.at('h1').put(store, member('h1'));
    await controllerOf('h2').pass();
    assert.deepEqual(moves.sort(), [
      'a->h1',
      'ct-live->h1 live',
      'v-cold->h1',
      'v-off->h1',
      'v-run->h1 live',
    ]);
  });

  test('a move that does not end within the bound is asked to stop, its guest counts as failed with the reason, and the evacuation goes on with the next guest', async () => {
    await records.guest.at('d').put(store, spec('d'));
    await records.guestLocation.at('d').put(store, 'h1');
    await records.guestStatus.at('d').put(store, status(true));
    hang.add('a');
    await records.member.at('h1').put(store, { ...member('h1', true), evacuateMode: 'auto' });
    await controllerOf('h1', { moveTimeoutMs: 50 }).pass();
    assert.deepEqual(moves, ['a->h2', 'd->h2']);
    assert.equal(await where('a'), 'h1');
    assert.equal(await where('d'), 'h2', 'the next guest left');
    const why = 'its move to h2 did not end within 1 s';
    assert.equal((await records.evacuation.at('a').get(store))?.value.error, why);
    const moveOfA = operations.list().find((o) => o.description === 'move a');
    assert.equal(moveOfA?.status, 'Cancelled', 'the move was asked to stop');
    assert.deepEqual(await evacuationProgress(store, 'h1', 'evacuate'), {
      left: [],
      failed: [{ guest: 'a', error: why }],
    });
    // Not tried again by the next pass.
    await controllerOf('h1', { moveTimeoutMs: 50 }).pass();
    assert.deepEqual(moves, ['a->h2', 'd->h2']);
  });

  test("a move away whose mark outlives the bound (left unfinished, its resume failing) counts as failed with the reason, and the evacuation's progress no longer waits for it", async () => {
    await records.member.at('h1').put(store, { ...member('h1', true), evacuateMode: 'auto' });
    await controllerOf('h1').pass();
    assert.deepEqual(moves, ['a->h2']);
    // Its records name the destination; its source never finished the move (its mark stays).
    const startedAt = new Date(clock).toISOString();
    await saveMoveMark(store, {
      guest: 'a',
      from: 'h1',
      to: 'h2',
      reason: 'evacuation',
      startedAt,
      phase: 'handed-over',
    });
    assert.deepEqual(await evacuationProgress(store, 'h1', 'evacuate'), { left: ['a'], failed: [] });
    clock += EVACUATION_MOVE_TIMEOUT_MS;
    await controllerOf('h1').pass();
    assert.deepEqual(
      await evacuationProgress(store, 'h1', 'evacuate'),
      { left: ['a'], failed: [] },
      'within the bound it is still waited for',
    );
    clock += 1;
    await controllerOf('h1').pass();
    assert.deepEqual(await evacuationProgress(store, 'h1', 'evacuate'), {
      left: [],
      failed: [{ guest: 'a', error: 'its move to h2 did not end within 15 min (left at handed-over)' }],
    });
    assert.deepEqual(moves, ['a->h2'], 'nothing is moved again');
  });

  test('a member that is not evacuated and holds no records does nothing', async () => {
    await controllerOf('h1').pass();
    await controllerOf('h2').pass();
    assert.deepEqual(moves, []);
    assert.equal(await running('a'), 'Running');
  });
});
