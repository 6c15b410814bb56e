import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import { unavailable } from '../core/errors.ts';
import { silentLogger } from '../host/logger.ts';
import type { KvStore } from '../store/kv.ts';
import type { KvEngine } from '../store/kv-engine.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { type MemberHeartbeat, records } from '../store/records.ts';
import { type LeaseState, type MemberLease, startMemberLease } from './member-lease.ts';

const heartbeat = (): MemberHeartbeat => ({
  incarnation: 'i1',
  version: '0.1.0',
  startedAt: new Date(0).toISOString(),
  usage: {
    cpus: 2,
    cpuUsedPercent: 10,
    memoryTotalBytes: 1024,
    memoryAvailableBytes: 512,
    measuredAt: new Date(0).toISOString(),
  },
});

const member = {
  name: 'm1',
  address: '198.18.0.1:8444',
  roles: ['etcd-voter'],
  certificateFingerprint: 'ab'.repeat(32),
  version: '0.1.0',
  joinedAt: new Date(0).toISOString(),
  evacuated: false,
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 5000) {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** A store whose keepAlive can be made to fail as an unreachable etcd does. */
function flaky(store: KvEngine): KvStore & { down: boolean } {
  const wrapped = {
    down: false,
    get: (k) => store.get(k),
    list: (p, o) => store.list(p, o),
    put: (k, v, o) => store.put(k, v, o),
    delete: (k, o) => store.delete(k, o),
    txn: (r) => store.txn(r),
    watch: (k, o, cb) => store.watch(k, o, cb),
    revision: () => store.revision(),
    compact: (r) => store.compact(r),
    grantLease: (t) => store.grantLease(t),
    keepAlive: async (id) => {
      if (wrapped.down) throw unavailable('etcd is unreachable');
      return store.keepAlive(id);
    },
    revokeLease: (id) => store.revokeLease(id),
    close: () => store.close(),
  } satisfies KvStore & { down: boolean };
  return wrapped;
}

describe('member lease', () => {
  let store: KvEngine;
  let lease: MemberLease | undefined;
  afterEach(async () => {
    await lease?.stop();
    await store?.close();
  });

  test('the heartbeat is on the lease: renewed it stays, a clean stop (revoke) takes it away at once', async () => {
    store = createMemoryStore();
    await records.member.at('m1').put(store, member);
    lease = await startMemberLease({
      store,
      name: 'm1',
      heartbeat,
      log: silentLogger(),
      ttlSeconds: 1,
      renewIntervalMs: 100,
    });
    const beat = await store.get(records.memberHeartbeat.key('m1'));
    assert.equal(beat?.lease, lease.leaseId());
    // Three TTLs later it is still there: renewed.
    await sleep(3000);
    assert.ok(await store.get(records.memberHeartbeat.key('m1')), 'renewed heartbeat stays');
    assert.equal(lease.state(), 'live');
    await lease.stop({ revoke: true });
    assert.equal(await store.get(records.memberHeartbeat.key('m1')), undefined);
    assert.equal(lease.state(), 'stopped');
  });

  test('fencing runs on the member clock: no confirmed renewal for TTL minus the margin fences it, before the lease can expire', async () => {
    store = createMemoryStore();
    await records.member.at('m1').put(store, member);
    const s = flaky(store);
    let now = 0;
    const states: LeaseState[] = [];
    lease = await startMemberLease({
      store: s,
      name: 'm1',
      heartbeat,
      log: silentLogger(),
      ttlSeconds: 5,
      renewIntervalMs: 20,
      fenceMarginMs: 1000,
      clock: () => now,
      onStateChange: (st) => states.push(st),
    });
    s.down = true;
    now = 3900;
    await sleep(100);
    assert.equal(lease.state(), 'live', 'within TTL - margin it is live');
    now = 4000;
    assert.equal(lease.state(), 'fenced', 'TTL - margin after the last confirmed renewal: fenced');
    s.down = false;
    await waitFor('live again once a renewal is confirmed', () => lease?.state() === 'live');
    assert.deepEqual(states, ['fenced', 'live']);
  });

  test('a lease the store says is gone fences at once; a new one is taken and the heartbeat written again', async () => {
    store = createMemoryStore();
    await records.member.at('m1').put(store, member);
    const states: LeaseState[] = [];
    lease = await startMemberLease({
      store,
      name: 'm1',
      heartbeat,
      log: silentLogger(),
      ttlSeconds: 5,
      renewIntervalMs: 50,
      onStateChange: (st) => states.push(st),
    });
    const first = lease.leaseId();
    assert.ok(first);
    await store.revokeLease(first);
    await waitFor('a new lease', () => lease?.leaseId() !== undefined && lease.leaseId() !== first);
    assert.deepEqual(states, ['fenced', 'live']);
    assert.equal((await store.get(records.memberHeartbeat.key('m1')))?.lease, lease.leaseId());
  });

  test('a member whose record is gone (removed from the cluster) writes no heartbeat again', async () => {
    store = createMemoryStore();
    await records.member.at('m1').put(store, member);
    lease = await startMemberLease({
      store,
      name: 'm1',
      heartbeat,
      log: silentLogger(),
      renewIntervalMs: 50,
    });
    const id = lease.leaseId();
    assert.ok(id);
    await store.delete(records.member.key('m1'));
    await store.revokeLease(id);
    await waitFor('removed', () => lease?.state() === 'removed');
    await sleep(200);
    assert.equal(await store.get(records.memberHeartbeat.key('m1')), undefined);
  });
});
