import assert from 'node:assert/strict';
import { test } from 'node:test';
import { aGuestSpec } from '../../../test/fakes/guest-records.ts';
import type { GuestSpec } from '../../core/types.ts';
import { createMemoryStore } from '../../store/memory-store.ts';
import { records } from '../../store/records.ts';
import { haSummary } from './ha-summary.ts';
import { haKeys } from './types.ts';

const GiB = 2 ** 30;

const spec = (name: string, location: string, memory: string): GuestSpec =>
  aGuestSpec({ name, location, config: { 'ha.enabled': 'true', 'limits.memory': memory } });

test("cluster list's HA: live leases, HA guests per member, and admission control's warning on the member whose loss could not be absorbed", async () => {
  const store = createMemoryStore();
  try {
    const lease = await store.grantLease(60);
    await store.put(haKeys.heartbeat('m1'), JSON.stringify({ member: 'm1' }), { lease: lease.id });
    const t1 = (await store.get(haKeys.heartbeat('m1')))?.createRevision ?? 0;
    await store.put(haKeys.heartbeat('m2'), JSON.stringify({ member: 'm2' }), { lease: lease.id });
    for (const [name, memory] of [
      ['big1', '5GiB'],
      ['big2', '5GiB'],
    ] as const) {
      await records.guest.at(name).put(store, spec(name, 'm1', memory));
      await store.put(
        haKeys.guest(name),
        JSON.stringify({ name, owner: 'm1', token: t1, decidedAt: 1, failures: 0, failedOn: [] }),
      );
    }
    const members = [
      { name: 'm1', memoryTotalBytes: 16 * GiB, cpus: 4, evacuated: false },
      { name: 'm2', memoryTotalBytes: 8 * GiB, cpus: 4, evacuated: false },
      { name: 'm3', memoryTotalBytes: 8 * GiB, cpus: 4, evacuated: false },
    ];
    const summary = await haSummary(store, members);
    assert.deepEqual(summary.get('m2'), { live: true, guests: 0 });
    assert.deepEqual(summary.get('m3'), { live: false, guests: 0 });
    const m1 = summary.get('m1');
    assert.equal(m1?.live, true);
    assert.equal(m1?.guests, 2);
    // m3 has no HA lease: m2 alone can take one 5 GiB guest of m1's two.
    assert.match(m1?.warning ?? '', /^If m1 were lost, 1 of its 2 HA guests could not be restarted \(big2\)/);

    // With m3's lease too, there is room for both.
    await store.put(haKeys.heartbeat('m3'), JSON.stringify({ member: 'm3' }), { lease: lease.id });
    assert.equal((await haSummary(store, members)).get('m1')?.warning, undefined);
  } finally {
    await store.close();
  }
});
