import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isTrivisorError } from '../core/errors.ts';
import { whileMemberUp } from './member-watch.ts';

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('aborts once the member has been Offline, Standby or removed for the grace, naming it and what waited; not while it is Online or Evacuated, nor on a failed read', async () => {
  for (const [status, says] of [
    ['Offline', 'm2 went Offline while it made the files'],
    ['Standby', 'm2 went Standby while it made the files'],
    [undefined, 'm2 went away while it made the files'],
  ] as const) {
    let now: string | undefined = 'Online';
    let fail = false;
    const members = async () => {
      if (fail) throw new Error('the store did not answer');
      return now === undefined ? [{ name: 'm1', status: 'Online' }] : [{ name: 'm2', status: now }];
    };
    const w = whileMemberUp(members, 'm2', 'it made the files', { everyMs: 5, goneAfterMs: 0 });
    await tick(30);
    now = 'Evacuated';
    await tick(30);
    fail = true;
    now = status;
    await tick(30);
    assert.equal(w.signal.aborted, false, 'Online, Evacuated and a failed read are no verdict');
    fail = false;
    await tick(30);
    assert.equal(w.signal.aborted, true, String(status));
    const reason = w.signal.reason as unknown;
    assert.ok(isTrivisorError(reason));
    assert.equal(reason.code, 'Unavailable');
    assert.equal(reason.message, says);
    w.stop();
  }
});

test('a member gone for less than the grace, back, then gone again: the grace starts again', async () => {
  let clock = 0;
  let status = 'Online';
  const w = whileMemberUp(async () => [{ name: 'm2', status }], 'm2', 'x', {
    everyMs: 2,
    goneAfterMs: 100,
    now: () => clock,
  });
  status = 'Offline';
  await tick(20);
  clock = 90;
  await tick(20);
  status = 'Online';
  await tick(20);
  status = 'Offline';
  clock = 150;
  await tick(20);
  assert.equal(w.signal.aborted, false, 'gone again since 150 only');
  clock = 249;
  await tick(20);
  assert.equal(w.signal.aborted, false);
  clock = 250;
  await tick(20);
  assert.equal(w.signal.aborted, true);
  w.stop();
});

test('stopped, it reads no more and never aborts', async () => {
  let reads = 0;
  const w = whileMemberUp(
    async () => {
      reads++;
      return [];
    },
    'm2',
    'x',
    { everyMs: 5, goneAfterMs: 0 },
  );
  w.stop();
  await tick(40);
  assert.equal(reads, 0);
  assert.equal(w.signal.aborted, false);
});
