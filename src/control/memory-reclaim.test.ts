import assert from 'node:assert/strict';
import { test } from 'node:test';
import { aGuestSpec } from '../../test/fakes/guest-records.ts';
import type { GuestSpec, ProcessIdentity } from '../core/types.ts';
import type { GuestDriver } from '../drivers/guest-driver.ts';
import type { KsmControl } from '../host/ksm.ts';
import { silentLogger } from '../host/logger.ts';
import { createMemoryReclaim, type RunningGuest } from './memory-reclaim.ts';

const run = (pid: number): ProcessIdentity => ({ pid, startTime: pid * 100 });

function world(guests: RunningGuest[]) {
  let clock = 1_000_000;
  const released: string[] = [];
  const runs: number[] = [];
  const ksmCalls: number[] = [];
  const pvm = {
    model: 'pvm',
    async releaseFreeMemory(spec: GuestSpec, run: ProcessIdentity) {
      released.push(spec.name);
      runs.push(run.pid);
      if (spec.name === 'broken') throw new Error('mconsole did not answer');
      return 1024;
    },
  } as unknown as GuestDriver;
  const vm = { model: 'vm' } as unknown as GuestDriver;
  const ksm: KsmControl = {
    async update(n) {
      ksmCalls.push(n);
    },
    async status() {
      throw new Error('not used');
    },
  };
  const reclaim = createMemoryReclaim({
    runningGuests: async () => [...guests],
    drivers: { pvm, vm },
    ksm,
    log: silentLogger(),
    now: () => clock,
    firstReleaseAfterMs: 20_000,
    releaseEveryMs: 300_000,
  });
  return {
    reclaim,
    released,
    runs,
    ksmCalls,
    advance: (ms: number) => (clock += ms),
    at: (ms: number) => new Date(ms),
  };
}

test('each pass tells KSM how many vm guests run on this member', async () => {
  const w = world([
    { spec: aGuestSpec({ name: 'a', model: 'vm' }) },
    { spec: aGuestSpec({ name: 'b', model: 'vm' }) },
    { spec: aGuestSpec({ name: 'c', model: 'pvm' }) },
    { spec: aGuestSpec({ name: 'd', model: 'ct' }) },
  ]);
  await w.reclaim.pass();
  assert.deepEqual(w.ksmCalls, [2]);
});

test('a pvm guest gives back its free memory once it has run a while, then every few minutes, and a failure stops no one', async () => {
  const started = new Date(1_000_000 - 5_000).toISOString();
  const w = world([
    { spec: aGuestSpec({ name: 'broken', model: 'pvm' }), startedAt: started, process: run(41) },
    { spec: aGuestSpec({ name: 'p', model: 'pvm' }), startedAt: started, process: run(42) },
    { spec: aGuestSpec({ name: 'v', model: 'vm' }), startedAt: started, process: run(43) },
  ]);
  await w.reclaim.pass();
  assert.deepEqual(w.released, [], 'not in its first 20 s');
  w.advance(15_000);
  await w.reclaim.pass();
  assert.deepEqual(w.released, ['broken', 'p']);
  assert.deepEqual(w.runs, [41, 42], 'each with the run its status knows');
  w.advance(60_000);
  await w.reclaim.pass();
  assert.deepEqual(w.released, ['broken', 'p'], 'not again within five minutes');
  w.advance(300_000);
  await w.reclaim.pass();
  assert.deepEqual(w.released, ['broken', 'p', 'broken', 'p']);
});

test('a guest started again waits its first interval again', async () => {
  const guests: RunningGuest[] = [
    { spec: aGuestSpec({ name: 'p', model: 'pvm' }), startedAt: new Date(0).toISOString(), process: run(7) },
  ];
  const w = world(guests);
  await w.reclaim.pass();
  assert.deepEqual(w.released, ['p']);
  guests[0] = { ...guests[0]!, startedAt: new Date(1_000_000).toISOString(), process: run(8) };
  await w.reclaim.pass();
  assert.deepEqual(w.released, ['p']);
  w.advance(20_000);
  await w.reclaim.pass();
  assert.deepEqual(w.released, ['p', 'p']);
  assert.deepEqual(w.runs, [7, 8]);
});

test('a guest whose run the controller does not know is left alone', async () => {
  const w = world([{ spec: aGuestSpec({ name: 'p', model: 'pvm' }), startedAt: new Date(0).toISOString() }]);
  await w.reclaim.pass();
  w.advance(600_000);
  await w.reclaim.pass();
  assert.deepEqual(w.released, []);
});

test('stop() puts KSM back when no vm guest runs any more, and leaves it to a loop never started', async () => {
  const guests: RunningGuest[] = [{ spec: aGuestSpec({ name: 'v', model: 'vm' }) }];
  const w = world(guests);
  await w.reclaim.stop();
  assert.deepEqual(w.ksmCalls, []);
  const w2 = world(guests);
  w2.reclaim.start();
  guests.length = 0;
  await w2.reclaim.stop();
  assert.deepEqual(w2.ksmCalls, [1, 0]);
});
