import assert from 'node:assert/strict';
import { test } from 'node:test';
import { aGuestSpec } from '../../../test/fakes/guest-records.ts';
import { isTrivisorError } from '../../core/errors.ts';
import type { KvStore } from '../../store/kv.ts';
import { createMemoryStore } from '../../store/memory-store.ts';
import { records } from '../../store/records.ts';
import {
  beginHaMove,
  endHaMove,
  haDecidedSinceSwitchOver,
  haGiveBackPart,
  haSwitchOverPart,
} from './ha-move.ts';
import { readHaWorld, recordUpkeep, type StoredHa } from './ha-store.ts';
import { haKeys } from './types.ts';

/** A cluster of m1 and m2 with HA agents (heartbeats), m1's CRM elected, and guest web on m1 made HA. */
async function cluster(store: KvStore, agents: string[] = ['m1', 'm2']) {
  const lease = await store.grantLease(60);
  for (const m of agents) {
    await store.put(haKeys.heartbeat(m), JSON.stringify({ member: m }), { lease: lease.id });
  }
  await store.put(haKeys.crm, JSON.stringify({ member: 'm1', token: 1 }), { lease: lease.id });
  await records.guest
    .at('web')
    .put(store, aGuestSpec({ name: 'web', location: 'm1', config: { 'ha.enabled': 'true' }, generation: 3 }));
  const token = async (m: string) => (await store.get(haKeys.heartbeat(m)))?.createRevision;
  return { m1: await token('m1'), m2: await token('m2') };
}

const recordOf = async (store: KvStore): Promise<StoredHa | undefined> => {
  const kv = await store.get(haKeys.guest('web'));
  return kv ? (JSON.parse(kv.value) as StoredHa) : undefined;
};

/** The CRM's bookkeeping pass (crm-loop.ts) as the elected CRM makes it: answers how many writes it made. */
async function crmUpkeep(store: KvStore): Promise<number> {
  const read = await readHaWorld(store);
  const spec = await records.guest.at('web').get(store);
  assert.ok(read.lock && spec);
  const world = { ...read, specs: new Map([...read.specs, ['web', spec]]) };
  let made = 0;
  for (const t of recordUpkeep(world, read.lock)) if ((await store.txn(t)).succeeded) made++;
  return made;
}

test("a guest made HA whose HA record the CRM has not written yet begins its move recorded and marked moving, and the CRM's late creation of the record is refused", async () => {
  const store = createMemoryStore();
  try {
    const tokens = await cluster(store);
    assert.equal(await recordOf(store), undefined);
    const ticket = await beginHaMove(store, { guest: 'web', from: 'm1', to: 'm2', reason: 'migration' });
    assert.deepEqual(ticket, {
      guest: 'web',
      from: 'm1',
      to: 'm2',
      reason: 'migration',
      fromToken: tokens.m1,
      toToken: tokens.m2,
    });
    const r = await recordOf(store);
    assert.equal(r?.owner, 'm1');
    assert.equal(r?.token, tokens.m1);
    assert.deepEqual(r?.moving, { to: 'm2', token: tokens.m2, reason: 'migration' });
    // The CRM's pass after it finds the record made: it writes nothing (no unmarked record).
    assert.equal(await crmUpkeep(store), 0);
    assert.ok((await recordOf(store))?.moving);
    // The switch-over hands the record to the destination, as for a guest recorded before.
    assert.ok(ticket);
    const part = await haSwitchOverPart(store, ticket);
    assert.equal((await store.txn({ compare: part.compare, success: part.success })).succeeded, true);
    const done = await recordOf(store);
    assert.equal(done?.owner, 'm2');
    assert.equal(done?.token, tokens.m2);
    assert.equal(done?.moving, undefined);
  } finally {
    await store.close();
  }
});

test("a cold move's mark says the guest ran (decision 0108); a live move's and a stopped guest's do not", async () => {
  const store = createMemoryStore();
  try {
    const tokens = await cluster(store);
    assert.equal(await crmUpkeep(store), 1);
    const t = await beginHaMove(store, {
      guest: 'web',
      from: 'm1',
      to: 'm2',
      reason: 'migration',
      wasRunning: true,
    });
    assert.equal(t?.wasRunning, true);
    assert.deepEqual((await recordOf(store))?.moving, {
      to: 'm2',
      token: tokens.m2,
      reason: 'migration',
      wasRunning: true,
    });
    assert.ok(t);
    assert.deepEqual(await endHaMove(store, t, tokens.m1), { ended: true });
    await beginHaMove(store, { guest: 'web', from: 'm1', to: 'm2', reason: 'migration', wasRunning: false });
    assert.deepEqual((await recordOf(store))?.moving, { to: 'm2', token: tokens.m2, reason: 'migration' });
  } finally {
    await store.close();
  }
});

test('a move that begins after the CRM recorded a guest just made HA marks that record', async () => {
  const store = createMemoryStore();
  try {
    const tokens = await cluster(store);
    assert.equal(await crmUpkeep(store), 1);
    const before = await store.get(haKeys.guest('web'));
    await beginHaMove(store, { guest: 'web', from: 'm1', to: 'm2', reason: 'evacuation' });
    const after = await store.get(haKeys.guest('web'));
    assert.equal(after?.createRevision, before?.createRevision);
    assert.deepEqual((await recordOf(store))?.moving, { to: 'm2', token: tokens.m2, reason: 'evacuation' });
  } finally {
    await store.close();
  }
});

test("the CRM records a guest just made HA between the mover's read and its write: the mover's creation loses and it marks the CRM's record", async () => {
  const store = createMemoryStore();
  try {
    const tokens = await cluster(store);
    let raced = false;
    // The CRM's pass lands just before the mover's first write (its reads are transactions too).
    const racing = new Proxy(store, {
      get(target, prop, receiver) {
        if (prop !== 'txn') return Reflect.get(target, prop, receiver);
        return async (...args: Parameters<KvStore['txn']>) => {
          if (!raced && args[0].success.some((op) => op.type === 'put')) {
            raced = true;
            assert.equal(await crmUpkeep(target), 1);
          }
          return target.txn(...args);
        };
      },
    });
    const created = (await store.get(haKeys.guest('web')))?.createRevision;
    assert.equal(created, undefined);
    await beginHaMove(racing, { guest: 'web', from: 'm1', to: 'm2', reason: 'migration' });
    assert.ok(raced);
    const r = await recordOf(store);
    assert.equal(r?.owner, 'm1');
    assert.deepEqual(r?.moving, { to: 'm2', token: tokens.m2, reason: 'migration' });
    // One record, the CRM's (version 2: created, then marked).
    assert.equal((await store.get(haKeys.guest('web')))?.version, 2);
  } finally {
    await store.close();
  }
});

test('a guest made HA on a member without an HA agent is refused a move in one line, with nothing written', async () => {
  const store = createMemoryStore();
  try {
    await cluster(store, ['m2']);
    await assert.rejects(
      beginHaMove(store, { guest: 'web', from: 'm1', to: 'm2', reason: 'migration' }),
      (e: unknown) =>
        isTrivisorError(e) &&
        e.code === 'FailedPrecondition' &&
        e.message ===
          'Member m1 has no HA agent running (no HA heartbeat) to record guest web under, made HA a moment ago: it cannot move until that agent runs',
    );
    await assert.rejects(
      beginHaMove(store, { guest: 'web', from: 'm1', to: 'm3', reason: 'migration' }),
      (e: unknown) => isTrivisorError(e) && e.code === 'FailedPrecondition',
    );
    assert.equal(await recordOf(store), undefined);
  } finally {
    await store.close();
  }
});

test('a guest that is not HA moves without an HA record', async () => {
  const store = createMemoryStore();
  try {
    await cluster(store);
    await records.guest.at('plain').put(store, aGuestSpec({ name: 'plain', location: 'm1', generation: 1 }));
    assert.equal(
      await beginHaMove(store, { guest: 'plain', from: 'm1', to: 'm2', reason: 'migration' }),
      undefined,
    );
    assert.equal(await store.get(haKeys.guest('plain')), undefined);
  } finally {
    await store.close();
  }
});

/**
 * Web moved from m1 to m2 up to its switch-over (the record and the spec name m2), then m1's HA
 * lease renewed: a member restarted, or its agent fenced, has a new heartbeat, hence a new token.
 */
async function handedOverThenSourceRenewed(store: KvStore) {
  const tokens = await cluster(store);
  const ticket = await beginHaMove(store, { guest: 'web', from: 'm1', to: 'm2', reason: 'migration' });
  assert.ok(ticket);
  const part = await haSwitchOverPart(store, ticket);
  const spec = records.guest.at('web');
  const now = await spec.get(store);
  assert.ok(now);
  const flip = await store.txn({
    compare: part.compare,
    success: [...part.success, spec.putOp({ ...now.value, location: 'm2', desired: 'Stopped' })],
  });
  assert.equal(flip.succeeded, true);
  await store.delete(haKeys.heartbeat('m1'));
  const lease = await store.grantLease(60);
  await store.put(haKeys.heartbeat('m1'), JSON.stringify({ member: 'm1' }), { lease: lease.id });
  const m1Now = (await store.get(haKeys.heartbeat('m1')))?.createRevision;
  assert.ok(m1Now !== undefined && m1Now !== tokens.m1);
  return { tokens, ticket, m1Now };
}

/** The undoing's transaction as the mover makes it: the HA part with the spec back on m1. */
async function giveBack(store: KvStore, part: Awaited<ReturnType<typeof haGiveBackPart>>) {
  const spec = records.guest.at('web');
  const now = await spec.get(store);
  assert.ok(now);
  return store.txn({
    compare: [...part.compare, spec.unchanged(now.modRevision)],
    success: [...part.success, spec.putOp({ ...now.value, location: 'm1' })],
  });
}

test("a move undone after its switch-over gives the HA record back under the source's token now, after the source's HA lease was renewed; the CRM's bookkeeping then has nothing to change", async () => {
  const store = createMemoryStore();
  try {
    const { ticket, m1Now } = await handedOverThenSourceRenewed(store);
    for (const neverRanThere of [true, false]) {
      assert.equal(await haDecidedSinceSwitchOver(store, ticket), false);
      const r = await giveBack(store, await haGiveBackPart(store, ticket, { neverRanThere }));
      assert.equal(r.succeeded, true);
      const back = await recordOf(store);
      assert.deepEqual([back?.owner, back?.token, back?.moving, back?.failures], ['m1', m1Now, undefined, 0]);
      assert.equal(await crmUpkeep(store), 0);
      // Once more from the switch-over, for the other kind of destination.
      const spec = records.guest.at('web');
      const now = await spec.get(store);
      assert.ok(now);
      await store.put(haKeys.guest('web'), JSON.stringify({ ...back, owner: 'm2', token: ticket.toToken }));
      await spec.put(store, { ...now.value, location: 'm2' });
    }
  } finally {
    await store.close();
  }
});

test("the give-back loses to a CRM decision written between its read and its write: the record's revision is compared, and nothing of the undoing is written", async () => {
  const store = createMemoryStore();
  try {
    const { ticket } = await handedOverThenSourceRenewed(store);
    const part = await haGiveBackPart(store, ticket, { neverRanThere: true });
    // The CRM records a failed start, say (any decision rewrites the record).
    const kv = await store.get(haKeys.guest('web'));
    assert.ok(kv);
    await store.put(haKeys.guest('web'), JSON.stringify({ ...JSON.parse(kv.value), failures: 1 }));
    assert.equal((await giveBack(store, part)).succeeded, false);
    assert.deepEqual(
      [(await recordOf(store))?.owner, (await records.guest.at('web').get(store))?.value.location],
      ['m2', 'm2'],
    );
  } finally {
    await store.close();
  }
});

test('a destination that lost its HA lease refuses the give-back while it may have run the guest (the CRM recovers it), not when it was never asked to; a source without an HA lease, and a record HA gave away since, refuse it', async () => {
  const store = createMemoryStore();
  try {
    const { ticket, m1Now } = await handedOverThenSourceRenewed(store);
    await store.delete(haKeys.heartbeat('m2'));
    await assert.rejects(
      haGiveBackPart(store, ticket, { neverRanThere: false }),
      (e: unknown) =>
        isTrivisorError(e) &&
        e.code === 'Conflict' &&
        e.message === 'Member m2 lost the HA lease guest web was given under: HA recovers it',
    );
    assert.equal(
      (await giveBack(store, await haGiveBackPart(store, ticket, { neverRanThere: true }))).succeeded,
      true,
    );
    assert.deepEqual([(await recordOf(store))?.owner, (await recordOf(store))?.token], ['m1', m1Now]);

    // Handed over again; now the source has no HA lease at all.
    const kv = await store.get(haKeys.guest('web'));
    assert.ok(kv);
    await store.put(
      haKeys.guest('web'),
      JSON.stringify({ ...JSON.parse(kv.value), owner: 'm2', token: ticket.toToken }),
    );
    await store.delete(haKeys.heartbeat('m1'));
    await assert.rejects(
      haGiveBackPart(store, ticket, { neverRanThere: true }),
      (e: unknown) =>
        isTrivisorError(e) && e.code === 'Conflict' && e.message.startsWith('Member m1 has no HA lease now'),
    );
    assert.equal(await haDecidedSinceSwitchOver(store, ticket), false);
    // HA gave it to m2 again under a new lease of m2's: the move is no longer the mover's to undo.
    await store.put(
      haKeys.guest('web'),
      JSON.stringify({ ...JSON.parse(kv.value), owner: 'm2', token: 999 }),
    );
    assert.equal(await haDecidedSinceSwitchOver(store, ticket), true);
    await assert.rejects(
      haGiveBackPart(store, ticket, { neverRanThere: true }),
      (e: unknown) => isTrivisorError(e) && e.message === 'HA gave guest web to m2 meanwhile',
    );
  } finally {
    await store.close();
  }
});

/**
 * Web marked moving from m1 to m2 (before its switch-over), then m1's HA lease renewed: its member
 * restarted, or its agent fenced, and its agent holds a new token.
 */
async function markedThenSourceRenewed(store: KvStore) {
  const tokens = await cluster(store);
  const ticket = await beginHaMove(store, { guest: 'web', from: 'm1', to: 'm2', reason: 'migration' });
  assert.ok(ticket);
  await store.delete(haKeys.heartbeat('m1'));
  const lease = await store.grantLease(60);
  await store.put(haKeys.heartbeat('m1'), JSON.stringify({ member: 'm1' }), { lease: lease.id });
  const m1Now = (await store.get(haKeys.heartbeat('m1')))?.createRevision;
  assert.ok(m1Now !== undefined && m1Now !== tokens.m1);
  return { tokens, ticket, m1Now };
}

test("a move given up before its switch-over ends its mark under the token the source's agent holds now, after that lease was renewed; the CRM's bookkeeping then has nothing to change", async () => {
  const store = createMemoryStore();
  try {
    const { ticket, m1Now } = await markedThenSourceRenewed(store);
    const kv = await store.get(haKeys.guest('web'));
    assert.ok(kv);
    await store.put(
      haKeys.guest('web'),
      JSON.stringify({ ...JSON.parse(kv.value), failures: 2, failedOn: ['m3'] }),
    );
    assert.deepEqual(await endHaMove(store, ticket, m1Now), { ended: true });
    const r = await recordOf(store);
    assert.deepEqual(
      [r?.owner, r?.token, r?.moving, r?.failures, r?.failedOn],
      ['m1', m1Now, undefined, 0, []],
    );
    assert.equal(await crmUpkeep(store), 0);
  } finally {
    await store.close();
  }
});

test('a move given up before its switch-over, under the same lease it began with, only loses its mark', async () => {
  const store = createMemoryStore();
  try {
    const tokens = await cluster(store);
    assert.equal(await crmUpkeep(store), 1);
    const kv = await store.get(haKeys.guest('web'));
    assert.ok(kv);
    const before = { ...JSON.parse(kv.value), failures: 1 };
    await store.put(haKeys.guest('web'), JSON.stringify(before));
    const ticket = await beginHaMove(store, { guest: 'web', from: 'm1', to: 'm2', reason: 'migration' });
    assert.ok(ticket);
    assert.deepEqual(await endHaMove(store, ticket, tokens.m1), { ended: true });
    assert.deepEqual(await recordOf(store), before);
  } finally {
    await store.close();
  }
});

test("the end of a move's mark is refused while the source's agent holds no live lease, or one the store's heartbeat does not hold, and is final once HA decided; nothing is written", async () => {
  const store = createMemoryStore();
  try {
    const { tokens, ticket, m1Now } = await markedThenSourceRenewed(store);
    const marked = await store.get(haKeys.guest('web'));
    assert.ok(marked);
    const notYet = { ended: false, final: false };
    const refusal = async (token: number | undefined) => {
      const end = await endHaMove(store, ticket, token);
      assert.equal(
        (await store.get(haKeys.guest('web')))?.modRevision,
        marked.modRevision,
        'nothing written',
      );
      return end;
    };
    assert.deepEqual(await refusal(undefined), {
      ...notYet,
      reason:
        "Member m1's HA agent holds no live lease now (it takes one within seconds): guest web's move to m2 cannot be ended yet",
    });
    // A token the store's heartbeat does not hold (the lease the move began under, gone; one never granted).
    assert.deepEqual((await refusal(tokens.m1)).ended, false);
    assert.deepEqual(await refusal(tokens.m1), await refusal((m1Now ?? 0) + 100));
    assert.deepEqual({ ...(await refusal(tokens.m1)), reason: '' }, { ...notYet, reason: '' });
    // The CRM gave the guest to the move's destination meanwhile (its source was lost).
    await store.put(
      haKeys.guest('web'),
      JSON.stringify({ ...JSON.parse(marked.value), owner: 'm2', token: tokens.m2, moving: undefined }),
    );
    assert.deepEqual(await endHaMove(store, ticket, m1Now), {
      ended: false,
      final: true,
      reason: "HA ended guest web's move to m2 meanwhile (its record names m2)",
    });
    assert.equal((await recordOf(store))?.owner, 'm2');
  } finally {
    await store.close();
  }
});

test("the end of a move's mark loses to a CRM decision written between its read and its write, and, read again, is final", async () => {
  const store = createMemoryStore();
  try {
    const { tokens, ticket, m1Now } = await markedThenSourceRenewed(store);
    let raced = false;
    const racing = new Proxy(store, {
      get(target, prop, receiver) {
        if (prop !== 'txn') return Reflect.get(target, prop, receiver);
        return async (...args: Parameters<KvStore['txn']>) => {
          if (!raced && args[0].success.some((op) => op.type === 'put')) {
            raced = true;
            // The CRM gives the guest to the move's destination, compared on the record as it read it.
            const kv = await target.get(haKeys.guest('web'));
            assert.ok(kv);
            const given = { ...JSON.parse(kv.value), owner: 'm2', token: tokens.m2 };
            delete given.moving;
            await target.put(haKeys.guest('web'), JSON.stringify(given));
          }
          return target.txn(...args);
        };
      },
    });
    const end = await endHaMove(racing, ticket, m1Now);
    assert.ok(raced);
    assert.deepEqual([end.ended, !end.ended && end.final], [false, false]);
    assert.deepEqual([(await recordOf(store))?.owner, (await recordOf(store))?.token], ['m2', tokens.m2]);
    const again = await endHaMove(store, ticket, m1Now);
    assert.deepEqual([again.ended, !again.ended && again.final], [false, true]);
  } finally {
    await store.close();
  }
});
