import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { silentLogger } from '../host/logger.ts';
import { createEventBus } from '../services/event-bus.ts';
import type { GuestMover } from '../services/guest-move.ts';
import { createOperationService } from '../services/operation-service.ts';
import type { OperationService } from '../services/types.ts';
import type { KvEngine } from '../store/kv-engine.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { records } from '../store/records.ts';
import {
  copyOf,
  MOVE_BANDWIDTH_WEIGHT,
  measuringMover,
  readLinks,
  recordMoveBandwidth,
} from './move-bandwidth.ts';

const MB = 1_000_000;

describe('move bandwidth', () => {
  let store: KvEngine;
  let operations: OperationService;
  beforeEach(() => {
    store = createMemoryStore();
    operations = createOperationService(createEventBus());
  });
  afterEach(async () => {
    await store.close();
  });

  test("each finished move folds into its pair's moving average; copies too small or too short to measure are left out", async () => {
    const at = Date.parse('2026-12-05T12:00:00Z');
    assert.equal(
      await recordMoveBandwidth(store, { from: 'h1', to: 'h2', bytes: 1000 * MB, seconds: 10, atMs: at }),
      true,
    );
    let links = await readLinks(store);
    assert.deepEqual(links.get('h1'), { h2: { bytesPerSecond: 100 * MB, moves: 1 } });
    await recordMoveBandwidth(store, { from: 'h1', to: 'h2', bytes: 2000 * MB, seconds: 10, atMs: at + 1 });
    links = await readLinks(store);
    const expected = MOVE_BANDWIDTH_WEIGHT * 200 * MB + (1 - MOVE_BANDWIDTH_WEIGHT) * 100 * MB;
    assert.deepEqual(links.get('h1'), { h2: { bytesPerSecond: expected, moves: 2 } });
    // Not measurements: a tiny archive, an instant copy, a move to itself.
    for (const s of [
      { bytes: 1000, seconds: 1 },
      { bytes: 1000 * MB, seconds: 0 },
    ]) {
      assert.equal(await recordMoveBandwidth(store, { from: 'h1', to: 'h2', ...s, atMs: at }), false);
    }
    assert.equal(
      await recordMoveBandwidth(store, { from: 'h1', to: 'h1', bytes: 1000 * MB, seconds: 1, atMs: at }),
      false,
    );
    // Each direction is its own link.
    await recordMoveBandwidth(store, { from: 'h2', to: 'h1', bytes: 500 * MB, seconds: 10, atMs: at });
    links = await readLinks(store);
    assert.equal(links.get('h1')?.h2?.moves, 2);
    assert.deepEqual(links.get('h2'), { h1: { bytesPerSecond: 50 * MB, moves: 1 } });
    assert.equal(
      (await records.moveBandwidth.at('h1', 'h2').get(store))?.value.lastAt,
      new Date(at + 1).toISOString(),
    );
  });

  test("a move's copy is read from the mover's result: a live move's disk and RAM, a cold move's archive, a shared pool's RAM only", () => {
    assert.deepEqual(
      copyOf({
        live: true,
        diskMirroredBytes: 300 * MB,
        ramTransferredBytes: 100 * MB,
        mirrorMs: 3000,
        ramMs: 1000,
      }),
      { bytes: 400 * MB, seconds: 4 },
    );
    assert.deepEqual(copyOf({ location: 'h2', copiedBytes: 50 * MB, copyMs: 500 }), {
      bytes: 50 * MB,
      seconds: 0.5,
    });
    assert.deepEqual(
      copyOf({
        live: true,
        sharedDisk: true,
        diskMirroredBytes: 0,
        ramTransferredBytes: 100 * MB,
        ramMs: 2000,
        mirrorMs: 0,
      }),
      { bytes: 100 * MB, seconds: 2 },
    );
    // A cold move on a shared pool copies nothing; an old mover's result says nothing.
    assert.equal(copyOf({ location: 'h2', shared: true }), undefined);
    assert.equal(copyOf({ location: 'h2' }), undefined);
  });

  test("the measuring mover records a successful move's copy for this member → its target, and nothing for a failed one", async () => {
    const results: Array<Record<string, unknown> | Error> = [
      { location: 'h2', copiedBytes: 400 * MB, copyMs: 2000 },
      new Error('the destination refused'),
    ];
    const inner: GuestMover = {
      pinned: async () => undefined,
      async move(name) {
        const outcome = results.shift();
        return operations.start({
          project: 'default',
          description: `move ${name}`,
          resources: {},
          run: async () => {
            if (outcome instanceof Error) throw outcome;
            return outcome;
          },
        });
      },
    };
    const mover = measuringMover(inner, {
      store,
      operations,
      hostName: 'h1',
      log: silentLogger(),
      now: () => 0,
    });
    const ok = await mover.move('g', { target: 'h2' });
    await operations.wait(ok.id);
    const failed = await mover.move('g', { target: 'h3' });
    await operations.wait(failed.id);
    // The recording follows the operation's end.
    for (let i = 0; i < 50 && (await readLinks(store)).size === 0; i++)
      await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 50));
    const links = await readLinks(store);
    assert.deepEqual([...links.keys()], ['h1']);
    assert.deepEqual(links.get('h1'), { h2: { bytesPerSecond: 200 * MB, moves: 1 } });
  });
});
