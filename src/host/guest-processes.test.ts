import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { runningGuests } from './guest-processes.ts';

const root = mkdtempSync(path.join(tmpdir(), 'guest-processes-'));
after(() => rmSync(root, { recursive: true, force: true }));

/** A cgroup of guest `name` under `parent` in the pids hierarchy of the fake root, with these pids. */
function cgroup(parent: string, name: string, pids: number[]) {
  const dir = path.join(root, 'pids', parent, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'cgroup.procs'), pids.map((p) => `${p}\n`).join(''));
}

test('runningGuests finds the guests with processes, and with `only` looks at those guests alone', async () => {
  cgroup('tv', 'a', [10]);
  cgroup('tv', 'b', [11, 12]);
  cgroup('tv', 'idle', []);
  assert.deepEqual([...(await runningGuests('tv', { root }))].sort(), ['a', 'b']);
  assert.deepEqual([...(await runningGuests('tv', { root, only: new Set(['b', 'idle', 'gone']) }))], ['b']);
  assert.deepEqual([...(await runningGuests('tv', { root, only: new Set() }))], []);
  // A guest asked about whose cgroup is gone does not run.
  rmSync(path.join(root, 'pids', 'tv', 'a'), { recursive: true });
  assert.deepEqual([...(await runningGuests('tv', { root, only: new Set(['a', 'b']) }))], ['b']);
});
