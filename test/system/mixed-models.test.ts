import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type Daemon, startDaemon } from './harness.ts';

// vm and pvm guests of one image share its base disk read-only. UML locks that file
// whole, which QEMU's own byte-range locks would take for a writer: a vm started after
// a pvm of the same image must not be refused for it.
describe('guests of every model from one image at once', () => {
  let d: Daemon;

  before(async () => {
    d = await startDaemon();
  });

  after(async () => {
    await d.destroy();
  });

  test('a vm starts while a pvm of the same image runs, and both answer', () => {
    d.ok(['launch', 'busybox', 'p1', '--model', 'pvm', '-c', 'limits.memory=64MiB']);
    d.ok(['launch', 'busybox', 'v1', '--model', 'vm', '-c', 'limits.memory=128MiB']);
    d.ok(['launch', 'busybox', 'c1']);
    const state = (name: string) =>
      (JSON.parse(d.ok(['info', name, '--format', 'json'])) as { status: string }).status;
    for (const name of ['p1', 'v1', 'c1']) assert.equal(state(name), 'Running', name);
    assert.equal(d.ok(['exec', 'v1', '--', 'hostname']), 'v1\n');
    assert.match(d.ok(['exec', 'p1', '--', 'cat', '/proc/cpuinfo']), /User Mode Linux/);
    assert.equal(d.ok(['exec', 'c1', '--', 'hostname']), 'c1\n');
    for (const name of ['p1', 'v1', 'c1']) d.ok(['delete', '--force', name]);
  });
});
