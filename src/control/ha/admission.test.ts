import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createPlacementIndex } from '../placement.ts';
import { admission } from './admission.ts';
import type { HaGuestRecord, HaMemberRecord } from './types.ts';

const GIB = 1024 ** 3;
const member = (name: string, memoryGiB = 8, evacuated = false): HaMemberRecord => ({
  name,
  memoryTotalBytes: memoryGiB * GIB,
  cpus: 4,
  evacuated,
});
const guest = (
  name: string,
  owner: string,
  memoryGiB: number,
  more: Partial<HaGuestRecord> = {},
): HaGuestRecord => ({
  name,
  model: 'ct',
  memoryBytes: memoryGiB * GIB,
  cpus: 1,
  ha: true,
  priority: 0,
  want: 'started',
  owner,
  token: 1,
  decidedAt: 1,
  failures: 0,
  failedOn: [],
  ...more,
});
const alive = (...names: string[]) => new Map(names.map((n, i) => [n, i + 1]));

test('admission holds when the others can take the HA guests of any one member', () => {
  const members = [member('h1'), member('h2'), member('h3')];
  const guests = [guest('a', 'h1', 4), guest('b', 'h1', 3), guest('c', 'h2', 5)];
  assert.deepEqual(admission(members, alive('h1', 'h2', 'h3'), guests, createPlacementIndex), { ok: true });
});

test('admission fails for the largest member, naming the HA guests that would find no room, highest priority first', () => {
  const members = [member('h1'), member('h2', 4), member('h3', 4)];
  const guests = [
    guest('small', 'h1', 1, { priority: 1 }),
    guest('big', 'h1', 5, { priority: 9 }),
    guest('other', 'h2', 1),
    guest('plain', 'h3', 3, { ha: false }),
  ];
  const answer = admission(members, alive('h1', 'h2', 'h3'), guests, createPlacementIndex);
  assert.equal(answer.ok, false);
  assert.ok(!answer.ok);
  assert.equal(answer.member, 'h1');
  assert.deepEqual(answer.unplaced, ['big']);
  assert.match(
    answer.reason,
    /^If h1 were lost, 1 of its 2 HA guests could not be restarted \(big\): No member can take a ct guest with 5\.0 GiB/,
  );
});

test('admission counts neither an evacuated member as room nor stopped, errored or non-HA guests as load', () => {
  const members = [member('h1'), member('h2'), member('h3', 8, true)];
  const roomy = [
    guest('a', 'h1', 6),
    guest('off', 'h1', 6, { want: 'stopped' }),
    guest('bad', 'h1', 6, { error: 'x' }),
  ];
  assert.deepEqual(admission(members, alive('h1', 'h2', 'h3'), roomy, createPlacementIndex), { ok: true });
  const tight = [guest('a', 'h1', 6), guest('b', 'h2', 6)];
  const answer = admission(members, alive('h1', 'h2', 'h3'), tight, createPlacementIndex);
  assert.ok(!answer.ok);
  assert.deepEqual([answer.member, answer.unplaced], ['h1', ['a']]);
});

test('admission skips members already lost: only the members online are counted as room', () => {
  const members = [member('h1'), member('h2'), member('h3')];
  const guests = [guest('a', 'h1', 6), guest('b', 'h2', 6)];
  const answer = admission(members, alive('h1', 'h2'), guests, createPlacementIndex);
  assert.ok(!answer.ok);
  assert.match(answer.reason, /h3 is Offline/);
});

test("a guest a cold move stopped (its mark says it ran, decision 0108) is its destination's to restart; one stopped by its administrator is no member's", () => {
  // h1 is evacuated (no room), and its guest a moves to h2: if h2 were lost, a would find 4 GiB on h3.
  const members = [member('h1', 8, true), member('h2'), member('h3', 4)];
  const moving = { to: 'h2', token: 2, reason: 'evacuation' };
  const stoppedByMove = [guest('a', 'h1', 6, { want: 'stopped', moving: { ...moving, wasRunning: true } })];
  const answer = admission(members, alive('h1', 'h2', 'h3'), stoppedByMove, createPlacementIndex);
  assert.ok(!answer.ok);
  assert.deepEqual([answer.member, answer.unplaced], ['h2', ['a']]);
  const stopped = [guest('a', 'h1', 6, { want: 'stopped', moving })];
  assert.deepEqual(admission(members, alive('h1', 'h2', 'h3'), stopped, createPlacementIndex), { ok: true });
});
