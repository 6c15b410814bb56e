import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Operation } from '../api/types.ts';
import { progressLine, waitWithProgress } from './progress.ts';

const anOperation = (over: Partial<Operation> = {}): Operation => ({
  id: 'op1',
  project: 'default',
  description: 'Importing backup',
  status: 'Running',
  createdAt: '2026-12-06T09:00:00Z',
  updatedAt: '2026-12-06T09:00:00Z',
  progress: null,
  progressText: null,
  resources: {},
  metadata: {},
  mayCancel: true,
  error: null,
  ...over,
});

test("the progress line says when a live restore's guest ran, while the copy goes on", () => {
  const copying = { progress: 42, progressText: 'copying 420 MiB of 1 GiB, 30 MiB/s' };
  assert.equal(
    progressLine('Importing a.tar', anOperation({ ...copying, metadata: { runningAfterMs: 3140 } })),
    'Importing a.tar: 42%, running after 3.1 s (copying 420 MiB of 1 GiB, 30 MiB/s)',
  );
  assert.equal(
    progressLine('Importing a.tar', anOperation({ metadata: { runningAfterMs: 1260 } })),
    'Importing a.tar: running after 1.3 s',
  );
  // Before the guest runs, and any other operation: as before.
  assert.equal(
    progressLine('Importing a.tar', anOperation({ progress: 0, progressText: 'starting the guest' })),
    'Importing a.tar: 0% (starting the guest)',
  );
  assert.equal(
    progressLine('Importing a.tar', anOperation({ progress: 10, metadata: { runningAfterMs: 'soon' } })),
    'Importing a.tar: 10%',
  );
});

test('on a terminal the line is rewritten at each progress and carries running-after once the guest runs; the line is cleared at the end', async () => {
  const writes: string[] = [];
  const stderr = { isTTY: true, columns: 200, write: (s: string) => writes.push(s) > 0 };
  const updates = [
    anOperation({ progress: 0, progressText: 'starting the guest' }),
    anOperation({ progress: 5, progressText: 'copying', metadata: { runningAfterMs: 2500 } }),
  ];
  const end = anOperation({ status: 'Success', metadata: { runningAfterMs: 2500, completedAfterMs: 9000 } });
  const client = {
    async waitOperation(_id: string, o: { onProgress?: (op: Operation) => void } = {}) {
      for (const u of updates) o.onProgress?.(u);
      return end;
    },
  };
  const done = await waitWithProgress(client as never, anOperation(), { label: 'Importing a.tar', stderr });
  assert.equal(done, end);
  assert.deepEqual(writes, [
    '\r\x1b[2KImporting a.tar: 0% (starting the guest)',
    '\r\x1b[2KImporting a.tar: 5%, running after 2.5 s (copying)',
    '\r\x1b[2K',
  ]);
});
