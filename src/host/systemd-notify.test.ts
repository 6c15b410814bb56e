import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fakeRunner } from '../../test/fakes/fake-runner.ts';
import { silentLogger } from './logger.ts';
import { systemdNotifier } from './systemd-notify.ts';

const settle = () => new Promise((resolve) => setImmediate(resolve));

test('systemdNotifier() is undefined when systemd does not run the process (no NOTIFY_SOCKET)', () => {
  const runner = fakeRunner();
  assert.equal(systemdNotifier({ env: {}, runner, log: silentLogger(), pid: 10 }), undefined);
});

test('ready, status and stopping go through systemd-notify, in order, none dropped while one is on its way', async () => {
  const runner = fakeRunner();
  const n = systemdNotifier({ env: { NOTIFY_SOCKET: '/run/x' }, runner, log: silentLogger(), pid: 10 });
  assert.ok(n);
  n.ready('running');
  n.status('fenced');
  n.stopping();
  for (let i = 0; i < 5; i++) await settle();
  assert.deepEqual(runner.commands(), [
    'systemd-notify --ready --status=running',
    'systemd-notify --status=fenced',
    'systemd-notify STOPPING=1',
  ]);
});

test('alive() pings the watchdog at most every third of WATCHDOG_USEC, and never without a watchdog or for another pid', async () => {
  let now = 0;
  const runner = fakeRunner();
  const n = systemdNotifier({
    env: { NOTIFY_SOCKET: '@sd', WATCHDOG_USEC: '9000000', WATCHDOG_PID: '10' },
    runner,
    log: silentLogger(),
    pid: 10,
    clock: () => now,
  });
  assert.ok(n);
  const at = async (ms: number) => {
    now = ms;
    n.alive();
    await settle();
  };
  await at(0);
  await at(500);
  await at(2999);
  await at(3000);
  await at(5000);
  await at(6100);
  assert.deepEqual(runner.commands(), Array(3).fill('systemd-notify WATCHDOG=1'), 'at 0, 3000 and 6100 ms');

  const none = fakeRunner();
  for (const env of [
    { NOTIFY_SOCKET: '@sd' },
    { NOTIFY_SOCKET: '@sd', WATCHDOG_USEC: '9000000', WATCHDOG_PID: '11' },
  ]) {
    const other = systemdNotifier({ env, runner: none, log: silentLogger(), pid: 10 });
    other?.alive();
  }
  await settle();
  assert.deepEqual(none.commands(), []);
});

test('a ping is not queued behind a message on its way; a failing systemd-notify is logged, not thrown', async () => {
  let now = 0;
  let release: () => void = () => {};
  const runner = fakeRunner((argv) =>
    argv.includes('--ready')
      ? { effect: () => new Promise<void>((r) => (release = r)), code: 1, stderr: 'No such file' }
      : undefined,
  );
  const n = systemdNotifier({
    env: { NOTIFY_SOCKET: '/run/x', WATCHDOG_USEC: '3000000' },
    runner,
    log: silentLogger(),
    pid: 10,
    clock: () => now,
  });
  assert.ok(n);
  n.ready('up');
  now = 5000;
  n.alive();
  await settle();
  assert.deepEqual(runner.commands(), ['systemd-notify --ready --status=up']);
  release();
  await settle();
  await settle();
  now = 6000;
  n.alive();
  await settle();
  assert.deepEqual(runner.commands(), ['systemd-notify --ready --status=up', 'systemd-notify WATCHDOG=1']);
});
