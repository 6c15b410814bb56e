import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createLrm } from './lrm.ts';
import type { HaGuestRecord, Read } from './types.ts';
import { DEFAULT_TIMINGS } from './types.ts';

const record = (name: string, more: Partial<HaGuestRecord> = {}): Read<HaGuestRecord> => ({
  value: {
    name,
    model: 'ct',
    memoryBytes: 1,
    cpus: 1,
    ha: true,
    priority: 0,
    want: 'started',
    owner: 'h1',
    token: 7,
    decidedAt: 1,
    failures: 0,
    failedOn: [],
    ...more,
  },
  createRevision: 2,
  modRevision: 3,
});

/** An LRM that holds token 7 from a grant sent at `sentAt`. */
function granted(sentAt = 0) {
  const lrm = createLrm('h1', DEFAULT_TIMINGS);
  assert.deepEqual(lrm.tick(sentAt, new Set()), [{ kind: 'grant' }]);
  lrm.leaseAnswer(sentAt, { kind: 'granted', token: 7, sentAt });
  return lrm;
}

test('the LRM fences on its own clock, fenceAfterMs after the last confirmed renewal was sent, killing HA and unknown guests only', () => {
  const lrm = granted();
  lrm.manage(0, { guests: [record('g1'), record('plain', { ha: false })], running: new Set() });
  const running = new Set(['g1', 'plain', 'stray']);
  assert.equal(lrm.live(2999), true);
  // Armed by the start it asked for: the watchdog is petted at every look while live.
  assert.deepEqual(
    lrm.tick(2999, running).map((a) => a.kind),
    ['pet', 'renew'],
  );
  lrm.leaseAnswer(2999, { kind: 'failed' });
  assert.equal(lrm.live(3000), false);
  assert.deepEqual(lrm.tick(3000, running), [
    { kind: 'fence', guests: ['g1', 'stray'] },
    { kind: 'revoke' },
    { kind: 'disarm' },
  ]);
  assert.equal(lrm.token(3000), undefined);
  // It never renews the fenced lease: it revokes it until the store answers, and asks for a new one.
  assert.deepEqual(lrm.tick(3000, new Set(['plain'])), [{ kind: 'revoke' }, { kind: 'grant' }]);
  lrm.leaseAnswer(3000, { kind: 'failed' });
  lrm.leaseAnswer(3500, { kind: 'revoked' });
  assert.deepEqual(lrm.tick(3500, new Set(['plain'])), [{ kind: 'grant' }]);
});

test('a renewal counts from when it was sent, not when its answer came', () => {
  const lrm = granted();
  lrm.tick(1000, new Set());
  lrm.leaseAnswer(3500, { kind: 'renewed', sentAt: 1000 });
  assert.equal(lrm.live(3999), true);
  assert.equal(lrm.live(4000), false);
});

test('a store that says the lease is gone fences at once', () => {
  const lrm = granted();
  lrm.manage(0, { guests: [record('g1')], running: new Set(['g1']) });
  assert.deepEqual(
    lrm.leaseAnswer(1000, { kind: 'gone' }).map((a) => a.kind),
    ['fence', 'revoke', 'disarm'],
  );
});

test('the LRM starts only guests its record gives to this member under its current token', () => {
  const lrm = granted();
  const actions = lrm.manage(100, {
    guests: [
      record('mine'),
      record('old', { token: 3 }),
      record('theirs', { owner: 'h2' }),
      record('moving', { moving: { to: 'h2', token: 9, reason: 'migration' } }),
      record('off', { want: 'stopped' }),
      record('plain', { ha: false, token: 1 }),
    ],
    running: new Set(),
  });
  assert.deepEqual(
    actions.filter((a) => a.kind === 'start').map((a) => (a.kind === 'start' ? a.guest : '')),
    ['mine', 'plain'],
  );
  assert.ok(actions.some((a) => a.kind === 'pet'));
});

test('a fenced LRM starts nothing, whatever the records say', () => {
  const lrm = granted();
  assert.deepEqual(lrm.manage(3000, { guests: [record('mine')], running: new Set() }), []);
});

test('failed starts are retried after 1 s, 2 s, 4 s and recorded for the CRM', () => {
  const lrm = granted();
  const starts = (now: number) =>
    lrm.manage(now, { guests: [record('g1')], running: new Set() }).filter((a) => a.kind === 'start').length;
  assert.equal(starts(0), 1);
  lrm.started(0, 'g1', false);
  const write = lrm
    .manage(500, { guests: [record('g1')], running: new Set() })
    .find((a) => a.kind === 'write');
  assert.ok(write?.kind === 'write');
  assert.equal((write.write.put?.value as HaGuestRecord | undefined)?.failures, 1);
  assert.equal(starts(999), 0);
  assert.equal(starts(1000), 1);
  lrm.started(1000, 'g1', false);
  lrm.manage(1000, { guests: [record('g1', { failures: 1 })], running: new Set() });
  lrm.leaseAnswer(2000, { kind: 'renewed', sentAt: 2000 });
  assert.equal(starts(2999), 0);
  assert.equal(starts(3000), 1);
});

test('a guest running here that the records give to another member, or that is gone, is stopped', () => {
  const lrm = granted();
  const stops = lrm
    .manage(0, {
      guests: [record('moved', { owner: 'h2', token: 9 })],
      running: new Set(['moved', 'deleted']),
    })
    .filter((a) => a.kind === 'stop');
  assert.deepEqual(stops, [
    { kind: 'stop', guest: 'deleted', why: 'its record is gone' },
    { kind: 'stop', guest: 'moved', why: 'h2 owns it' },
  ]);
});

test('a guest running here that was made HA a moment ago, not recorded yet, is left running under the watchdog, and a fence kills it', () => {
  const lrm = granted();
  const actions = lrm.manage(0, { guests: [], running: new Set(['fresh']), awaiting: new Set(['fresh']) });
  assert.deepEqual(actions, [{ kind: 'pet', untilMs: DEFAULT_TIMINGS.watchdogMs }]);
  assert.deepEqual(
    lrm.fenceNow(new Set(['fresh'])).find((a) => a.kind === 'fence'),
    { kind: 'fence', guests: ['fresh'] },
  );
});
