import assert from 'node:assert/strict';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Daemon, eventually, startDaemon } from './harness.ts';

// Daemons of storage tests need no network of their own.
process.env.TRIVISOR_DEFAULT_NETWORK = 'none';

interface GuestJson {
  name: string;
  status: string;
  config: Record<string, string>;
  state: { pid: number | null };
}

describe('admin recover rebuilds lost guest records from the guests directories', () => {
  let d: Daemon;
  before(async () => {
    d = await startDaemon();
  });
  after(async () => {
    await d?.destroy();
  });

  const info = (name: string) => JSON.parse(d.ok(['info', name, '--format', 'json'])) as GuestJson;
  let pid: number | null;

  test('each guest directory keeps a copy of its spec, updated on config changes', async () => {
    d.ok(['launch', 'busybox', 'r1', '-c', 'limits.memory=128MiB']);
    d.ok(['create', 'busybox', 'r2']);
    d.ok(['exec', 'r1', '--', 'sh', '-c', 'echo kept > /kept.txt']);
    d.ok(['snapshot', 'create', 'r1', 's0']);
    d.ok(['config', 'set', 'r1', 'limits.processes=200']);
    const file = path.join(d.stateDir, 'guests/r1/guest.json');
    await eventually('guest.json has the new key', () => {
      const { spec } = JSON.parse(readFileSync(file, 'utf8')) as { spec: { config: Record<string, string> } };
      return spec.config['limits.processes'] === '200';
    });
    const { spec } = JSON.parse(readFileSync(path.join(d.stateDir, 'guests/r2/guest.json'), 'utf8'));
    assert.equal(spec.name, 'r2');
    pid = info('r1').state.pid;
    assert.ok(pid);
  });

  test('after the store is lost, recover brings the guests back and re-adopts the running one', async () => {
    await d.kill9();
    for (const f of readdirSync(d.stateDir).filter((n) => n.startsWith('store.db'))) {
      rmSync(path.join(d.stateDir, f));
    }
    await d.restart();
    assert.deepEqual(JSON.parse(d.ok(['list', '--format', 'json'])), []);
    const out = d.ok(['admin', 'recover']);
    assert.match(out, /^Recovered r1 \(ct, Running\) with snapshots s0$/m);
    assert.match(out, /^Recovered r2 \(ct, Stopped\)$/m);
    // Written with each guest's record, its project's index counts them (decision 0087).
    assert.match(d.ok(['project', 'list']), /^default\s+2\s/m);
    const r1 = info('r1');
    assert.equal(r1.status, 'Running');
    assert.equal(r1.state.pid, pid, 'the same init, adopted');
    assert.equal(r1.config['limits.memory'], '128MiB');
    assert.equal(r1.config['limits.processes'], '200');
    assert.equal(d.ok(['exec', 'r1', '--', 'cat', '/kept.txt']), 'kept\n');
    assert.equal(info('r2').status, 'Stopped');
    d.ok(['start', 'r2']);
    assert.equal(info('r2').status, 'Running');
    d.ok(['snapshot', 'restore', 'r1', 's0']);
    assert.equal(d.ok(['exec', 'r1', '--', 'cat', '/kept.txt']), 'kept\n');
  });

  test('a second recover finds nothing to do', () => {
    const out = d.ok(['admin', 'recover']);
    assert.match(out, /^Skipped r1: its records exist$/m);
    assert.doesNotMatch(out, /Recovered/);
  });
});
