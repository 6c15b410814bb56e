import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { TrivisorEvent } from '../core/types.ts';
import { createEventBus } from './event-bus.ts';
import { createOperationService } from './operation-service.ts';

describe('operations', () => {
  test('an operation reports progress, succeeds with its metadata and emits events', async () => {
    const bus = createEventBus();
    const seen: TrivisorEvent[] = [];
    bus.subscribe((e) => seen.push(e), ['operation']);
    const ops = createOperationService(bus);
    const op = ops.start({
      description: 'work',
      async run(ctx) {
        ctx.progress(50, 'half');
        return { answer: 42 };
      },
    });
    assert.equal(op.status, 'Running');
    const done = await ops.wait(op.id);
    assert.equal(done.status, 'Success');
    assert.equal(done.metadata.answer, 42);
    assert.ok(seen.some((e) => (e.metadata.operation as { progressText: string }).progressText === 'half'));
    assert.equal(ops.list().length, 1);
  });

  test('a failing operation carries the error message and code', async () => {
    const ops = createOperationService(createEventBus());
    const op = ops.start({
      description: 'fail',
      async run() {
        throw new Error('boom');
      },
    });
    const done = await ops.wait(op.id);
    assert.equal(done.status, 'Failure');
    assert.equal(done.error, 'boom');
  });

  test('cancel aborts a cancellable operation and refuses the others', async () => {
    const ops = createOperationService(createEventBus());
    const slow = ops.start({
      description: 'slow',
      mayCancel: true,
      run: (ctx) =>
        new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(new Error('aborted')))),
    });
    const fixed = ops.start({
      description: 'fixed',
      run: () => new Promise((r) => setTimeout(() => r({}), 50)),
    });
    assert.throws(() => ops.cancel(fixed.id), /cannot be cancelled/);
    ops.cancel(slow.id);
    assert.equal((await ops.wait(slow.id)).status, 'Cancelled');
    assert.throws(() => ops.cancel(slow.id), /already finished/);
    assert.throws(() => ops.get('nope'), /not found/);
  });

  test('wait with a timeout returns the running operation', async () => {
    const ops = createOperationService(createEventBus());
    const op = ops.start({
      description: 'slow',
      run: () => new Promise((r) => setTimeout(() => r({}), 200)),
    });
    assert.equal((await ops.wait(op.id, 10)).status, 'Running');
    assert.equal((await ops.wait(op.id)).status, 'Success');
  });
});
