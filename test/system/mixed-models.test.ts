import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type Daemon, eventually, startDaemon } from './harness.ts';

// vm and pvm guests of one image share its base disk read-only. UML locks the backing file
// of a COW disk whole, which QEMU's own byte-range locks would take for a writer: a vm started
// after a pvm of the same image must not be refused for it, nor its disk's qemu-img work
// (UML reads a twin of the base disk: src/drivers/pvm/base-disk-twin.ts).
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
  });

  // A cancel used to leave the command's background children running in vm and pvm guests (the
  // agent's kill reached the command alone) and the whole command in ct guests (runc exec died).
  test('a cancelled exec ends its command and what it started, in every model', async () => {
    for (const [name, seconds] of [
      ['p1', 311],
      ['v1', 312],
      ['c1', 313],
    ] as const) {
      const script = `trap "" HUP; sleep ${seconds} & while :; do echo x >> /tmp/cancelled; sleep 1; done`;
      const r = await d.api('POST', `/1.0/guests/${name}/exec`, {
        command: ['sh', '-c', script],
        'record-output': true,
      });
      assert.equal(r.status, 202, r.text);
      const id = (r.body.metadata as { id: string }).id;
      const ps = () => d.ok(['exec', name, '--', 'ps']);
      const running = () => {
        const out = ps();
        return out.includes(`sleep ${seconds}`) && out.includes('/tmp/cancelled');
      };
      await eventually(`${name}: the command running`, running, 60_000);
      assert.equal((await d.api('DELETE', `/1.0/operations/${id}`)).status, 200);
      await eventually(
        `${name}: the operation Cancelled`,
        async () =>
          ((await d.api('GET', `/1.0/operations/${id}`)).body.metadata as { status: string }).status ===
          'Cancelled',
        60_000,
      );
      await eventually(
        `${name}: the command and its children gone`,
        () => {
          const out = ps();
          return !out.includes(`sleep ${seconds}`) && !out.includes('/tmp/cancelled');
        },
        15_000,
      ).catch((e: Error) => assert.fail(`${e.message}; ps in ${name}:\n${ps()}`));
    }
  });

  // qemu-img opens the base disk too (as the backing file of the vm's disk): its snapshot, export
  // and copy failed with "Failed to get 'consistent read' lock" while UML held the file.
  test("a stopped vm's snapshot, restore, copy and export work while a pvm of the same image runs", () => {
    assert.match(d.ok(['info', 'p1', '--format', 'json']), /"status":\s*"Running"/);
    d.ok(['stop', 'v1']);
    d.ok(['snapshot', 'create', 'v1', 's1']);
    d.ok(['snapshot', 'restore', 'v1', 's1']);
    d.ok(['copy', 'v1', 'v2']);
    const archive = `${d.stateDir}/v1-export.tar.zst`;
    d.ok(['export', 'v1', archive]);
    d.ok(['start', 'v1']);
    assert.equal(d.ok(['exec', 'v1', '--', 'hostname']), 'v1\n');
    for (const name of ['p1', 'v1', 'v2', 'c1']) d.ok(['delete', '--force', name]);
  });
});
