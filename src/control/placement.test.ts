import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isTrivisorError } from '../core/errors.ts';
import {
  createPlacementIndex,
  NEAR_MEMBERS,
  nearBytes,
  type PlacedGuest,
  type PlacementCandidate,
  placeGuest,
  withReservations,
} from './placement.ts';

const GIB = 1024 ** 3;
const member = (
  name: string,
  freeGib: number,
  more: Partial<PlacementCandidate> = {},
): PlacementCandidate => ({
  name,
  status: 'Online',
  cpus: 2,
  cpuFree: 1,
  memoryTotalBytes: 24 * GIB,
  memoryFreeBytes: freeGib * GIB,
  ...more,
});
const ct = { model: 'ct' as const, memoryBytes: 256 * 1024 ** 2, cpus: 1 };

/** The error's code and message, for assertions on one-line refusals. */
function refused(f: () => unknown): { code: string; message: string } {
  try {
    f();
  } catch (e) {
    assert.ok(isTrivisorError(e), String(e));
    assert.doesNotMatch(e.message, /\n/);
    return { code: e.code, message: e.message };
  }
  assert.fail('placed, where a refusal was expected');
}

describe('placement', () => {
  test('the member with the most free measured memory, said in one line', () => {
    const p = placeGuest([member('a', 4), member('b', 18.2), member('c', 9)], ct);
    assert.deepEqual(p, { member: 'b', reason: 'most free memory: 18.2 GiB of 24.0' });
  });

  test('members within a sixteenth of their memory (1.5 GiB of 24) of the most free memory are as good: the one with the fewest guests wins, said in the reason', () => {
    // Three members of one host measure the same memory a few MiB apart; ct guests without
    // limits.memory reserve nothing: the guest count spreads them.
    const index = createPlacementIndex([
      member('m1', 20.3, { guests: 1 }),
      member('m2', 20.24),
      member('m3', 20.2),
      member('far', 18.5, { guests: 0 }),
    ]);
    const zero = { ...ct, memoryBytes: 0 };
    const first = index.place(zero);
    assert.deepEqual(first, {
      member: 'm2',
      reason: 'most free memory: 20.2 GiB of 24.0 (within 1.5 GiB of the most), fewest guests: 0',
    });
    assert.deepEqual(
      [first.member, index.place(zero).member, index.place(zero).member, index.place(zero).member],
      ['m2', 'm3', 'm1', 'm2'],
      '1.8 GiB further down (more than 24/16), far is not as good, whatever it holds',
    );
    // withReservations counts every guest a member holds, in any state.
    const counted = withReservations(
      [member('a', 8), member('b', 8)],
      [
        { location: 'a', memoryBytes: 0, cpus: 1, createdAt: '2026-12-05T09:00:00.000Z', running: false },
        { location: 'a', memoryBytes: 0, cpus: 1, createdAt: '2026-12-05T09:00:00.000Z', running: true },
        { location: 'gone', memoryBytes: 0, cpus: 1, createdAt: '2026-12-05T09:00:00.000Z', running: true },
      ],
    );
    assert.deepEqual(
      counted.map((m) => [m.name, m.guests ?? 0]),
      [
        ['a', 2],
        ['b', 0],
      ],
    );
    assert.equal(placeGuest(counted, ct).member, 'b');
  });

  test('ties go to the most free CPU, then to the first name, whatever the input order', () => {
    const same = [member('c', 8, { cpuFree: 1.5 }), member('b', 8), member('a', 8, { cpuFree: 1.5 })];
    assert.equal(placeGuest(same, ct).member, 'a');
    assert.equal(placeGuest([...same].reverse(), ct).member, 'a');
  });

  test('an Offline or Evacuated member gets nothing, however free', () => {
    const members = [
      member('off', 20, { status: 'Offline' }),
      member('evac', 22, { status: 'Evacuated' }),
      member('up', 1),
    ];
    assert.equal(placeGuest(members, ct).member, 'up');
  });

  test("the guest's limits are honoured: memory, CPUs and the models a member runs", () => {
    const members = [
      member('small', 0.1),
      member('few-cpus', 20, { cpus: 1 }),
      member('no-vm', 18, { models: ['ct', 'pvm'] }),
      member('fits', 2, { cpus: 4 }),
    ];
    assert.equal(placeGuest(members, { model: 'vm', memoryBytes: GIB, cpus: 2 }).member, 'fits');
  });

  test('a burst spreads: each placement counts on its member', () => {
    const index = createPlacementIndex([member('a', 3), member('b', 2.5), member('c', 1)]);
    const got = Array.from({ length: 6 }, () => index.place({ ...ct, memoryBytes: GIB }).member);
    // Near is 1.5 GiB (a sixteenth of 24). a (3; b near, no guests either; a is freer) → 2;
    // b (2.5; a and c near, b holds none) → 1.5; a (2; b and c near, c holds none) → c → 0;
    // a (2, a guest, as b) → 1; b (1.5, a guest; a holds two) → 0.5; a, the only one with 1 GiB.
    assert.deepEqual(got, ['a', 'b', 'c', 'a', 'b', 'a']);
    assert.match(
      refused(() => index.place({ ...ct, memoryBytes: GIB })).message,
      /No member can take a ct guest/,
    );
  });

  test('--target places on that member only, and refuses an unknown, an Offline or a too small one', () => {
    const members = [member('a', 10), member('b', 2), member('off', 20, { status: 'Offline' })];
    assert.deepEqual(placeGuest(members, { ...ct, target: 'b' }), {
      member: 'b',
      reason: 'asked for (--target b): 2.0 GiB of 24.0 free',
    });
    assert.deepEqual(
      refused(() => placeGuest(members, { ...ct, target: 'nope' })),
      {
        code: 'NotFound',
        message: 'Member nope not found; see trivisor cluster list',
      },
    );
    assert.deepEqual(
      refused(() => placeGuest(members, { ...ct, target: 'off' })),
      {
        code: 'FailedPrecondition',
        message: 'Cannot place the guest on off: off is Offline',
      },
    );
    assert.equal(
      refused(() => placeGuest(members, { ...ct, memoryBytes: 4 * GIB, target: 'b' })).code,
      'FailedPrecondition',
    );
  });

  test('no member at all, or none that fits, is a refusal that names the reasons', () => {
    assert.equal(refused(() => placeGuest([], ct)).message, 'No member to place the guest on');
    const r = refused(() =>
      placeGuest([member('a', 0.1), member('b', 5, { status: 'Offline' })], { ...ct, memoryBytes: GIB }),
    );
    assert.equal(r.code, 'FailedPrecondition');
    assert.match(r.message, /a has 0\.1 GiB of memory free, the guest needs 1\.0/);
    assert.match(r.message, /b is Offline/);
  });

  test('guests made or started after a member measured are taken off what it measured, so a burst between heartbeats spreads', () => {
    const at = '2026-12-05T10:00:00.000Z';
    const before = '2026-12-05T09:59:00.000Z';
    const after = '2026-12-05T10:00:05.000Z';
    const members = [member('a', 8, { measuredAt: at }), member('b', 7.5, { measuredAt: at })];
    const guest = (location: string, more: Partial<PlacedGuest>): PlacedGuest => ({
      location,
      memoryBytes: GIB,
      cpus: 1,
      createdAt: before,
      running: false,
      ...more,
    });
    // Made after a's measurement: a holds 7 GiB free as far as placement knows, and b wins.
    const reserved = withReservations(members, [guest('a', { createdAt: after })]);
    assert.equal(reserved.find((m) => m.name === 'a')?.memoryFreeBytes, 7 * GIB);
    assert.equal(placeGuest(reserved, ct).member, 'b');
    // Started since the measurement (made long before): counted too.
    assert.equal(
      withReservations(members, [guest('a', { running: true, startedAt: after })]).find((m) => m.name === 'a')
        ?.memoryFreeBytes,
      7 * GIB,
    );
    // Running since before the measurement, or stopped and made before it: in the measurement already.
    const measured = withReservations(members, [
      guest('a', { running: true, startedAt: before }),
      guest('a', {}),
    ]);
    assert.equal(measured.find((m) => m.name === 'a')?.memoryFreeBytes, 8 * GIB);
    // The input is left as it was.
    assert.equal(members[0]?.memoryFreeBytes, 8 * GIB);
  });

  test("the pool's space counts: a member whose default pool cannot hold the guest's limits.disk gets nothing", () => {
    const members = [
      member('roomy', 4, { diskFreeBytes: 50 * GIB }),
      member('full', 20, { diskFreeBytes: GIB }),
    ];
    assert.equal(placeGuest(members, { ...ct, diskBytes: 10 * GIB }).member, 'roomy');
    assert.equal(placeGuest(members, ct).member, 'full', 'no limits.disk: memory decides');
    assert.match(
      refused(() => placeGuest(members, { ...ct, diskBytes: 60 * GIB })).message,
      /full has 1\.0 GiB free on its storage pool, the guest's disk may take 60\.0/,
    );
  });

  test('many placements keep the order right (checked against a full sort each time)', () => {
    let seed = 42;
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const members = Array.from({ length: 200 }, (_, i) =>
      member(`m${i}`, 1 + rnd() * 20, { cpuFree: rnd() * 2 }),
    );
    const shadow = members.map((m) => ({ ...m, guests: 0 }));
    const index = createPlacementIndex(members);
    let byCount = 0;
    for (let k = 0; k < 500; k++) {
      const memoryBytes = Math.round((0.05 + rnd() * 0.5) * GIB);
      // The rule written out: sort the members that fit, keep those within nearBytes of the
      // first (NEAR_MEMBERS at most), take the first of those with the fewest guests.
      const fit = [...shadow]
        .filter((m) => m.memoryFreeBytes >= memoryBytes)
        .sort(
          (a, b) =>
            b.memoryFreeBytes - a.memoryFreeBytes || b.cpuFree - a.cpuFree || a.name.localeCompare(b.name),
        );
      const top = fit[0];
      const near = top
        ? fit.filter((m) => m.memoryFreeBytes >= top.memoryFreeBytes - nearBytes(top)).slice(0, NEAR_MEMBERS)
        : [];
      const fewest = Math.min(...near.map((m) => m.guests));
      const expected = near.find((m) => m.guests === fewest);
      if (expected !== fit[0]) byCount++;
      const got = index.place({ ...ct, memoryBytes });
      assert.equal(got.member, expected?.name);
      const m = shadow.find((s) => s.name === got.member);
      if (m) {
        m.memoryFreeBytes -= memoryBytes;
        m.cpuFree = Math.max(0, m.cpuFree - 1);
        m.guests++;
      }
    }
    assert.ok(byCount > 50, `the guest count decided ${byCount} times of 500`);
  });
});
