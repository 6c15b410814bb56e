import assert from 'node:assert/strict';
import { test } from 'node:test';
import { stopSignalNumber } from './stop-signal.ts';

test('stop signals are read as runc reads them: case ignored, SIG optional, numbers as they are', () => {
  assert.equal(stopSignalNumber('SIGUSR2'), 12);
  assert.equal(stopSignalNumber('usr2'), 12);
  assert.equal(stopSignalNumber('SIGTERM'), 15);
  assert.equal(stopSignalNumber('term'), 15);
  assert.equal(stopSignalNumber('SIGPWR'), 30);
  assert.equal(stopSignalNumber('9'), 9);
  assert.equal(stopSignalNumber('37'), 37);
});

test("real-time stop signals are glibc's numbers: systemd's SIGRTMIN+3 is 37", () => {
  assert.equal(stopSignalNumber('SIGRTMIN+3'), 37);
  assert.equal(stopSignalNumber('RTMIN'), 34);
  assert.equal(stopSignalNumber('SIGRTMAX'), 64);
  assert.equal(stopSignalNumber('SIGRTMAX-2'), 62);
});

test('what names no signal is undefined (the driver then leaves it to runc)', () => {
  for (const s of ['', 'SIGBOGUS', '0', '65', '-1', 'SIGRTMIN+31', 'SIGRTMIN-1', 'SIGRTMAX+1', 'SIG']) {
    assert.equal(stopSignalNumber(s), undefined, s);
  }
});
