import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { makeProjectWorld, type ProjectWorld } from '../../test/fakes/project-world.ts';
import { failedPrecondition, isTrivisorError } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import type { GuestStatus } from '../core/types.ts';
import { buildServer } from '../server/build-server.ts';
import { listenUnix } from '../server/listen.ts';
import { TrivisorApiError } from './api-error.ts';
import { createClient, type TrivisorClient } from './client.ts';
import { parseEnvelope } from './transport.ts';

const json = (status: number, body: unknown) => ({
  status,
  headers: { 'content-type': 'application/json' },
  body: Buffer.from(JSON.stringify(body)),
});

describe('error codes travel from where the failure happened to the client', () => {
  let world: ProjectWorld;
  let app: FastifyInstance;
  let dir: string;
  let client: TrivisorClient;

  before(async () => {
    world = await makeProjectWorld();
    dir = await mkdtemp(join(tmpdir(), 'trivisor-codes-'));
    app = await buildServer(world.services, { auth: { type: 'none' }, uploadDir: dir });
    const socketPath = join(dir, 'trivisor.sock');
    await listenUnix(app, socketPath);
    client = createClient({ socketPath });
  });
  after(async () => {
    await app.close();
    await world.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('a start the driver refuses with FailedPrecondition reaches the client as FailedPrecondition', async () => {
    const created = await client.createGuest({ name: 'c1', image: 'busybox' });
    await client.waitOperation(created.id);
    // Every status the controller writes: the failed one is followed by the one after the rollback.
    const written: GuestStatus[] = [];
    const watch = world.store.watch(
      keys.guestStatus('c1'),
      { prefix: false, onLost: (e) => assert.fail(e) },
      (events) => {
        for (const ev of events) if (ev.type === 'put') written.push(JSON.parse(ev.kv.value) as GuestStatus);
      },
    );
    const start = world.driver.start.bind(world.driver);
    world.driver.start = async () => {
      throw failedPrecondition('The guest kernel refuses this machine: pick another image');
    };
    try {
      const op = await client.changeGuestState('c1', { action: 'start' });
      const err = await client.waitOperation(op.id).then(
        () => assert.fail('the start should fail'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof TrivisorApiError);
      assert.equal(err.code, 'FailedPrecondition');
      assert.match(err.message, /refuses this machine/);
    } finally {
      world.driver.start = start;
      watch.cancel();
    }
    // The stored status of the failed convergence carries it too, for waiters on any member.
    const failed = written.find((s) => s.error !== undefined);
    assert.equal(failed?.errorCode, 'FailedPrecondition');
    assert.equal(failed?.status, 'Stopped');
  });

  test("a request refused by a service reaches the client with the service's code, not a guess from the status", async () => {
    const err = await client.createGuest({ name: 'c1', image: 'busybox' }).then(
      () => assert.fail('a second c1 must be refused'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof TrivisorApiError);
    assert.equal(err.status, 409);
    // 409 alone would be guessed as Conflict.
    assert.equal(err.code, 'AlreadyExists');
  });

  test('parseEnvelope takes the envelope code, and guesses from the status only without one', () => {
    const withCode = () =>
      parseEnvelope(json(409, { type: 'error', error: 'x exists', error_code: 409, code: 'AlreadyExists' }));
    assert.throws(withCode, (e: unknown) => isTrivisorError(e) && e.code === 'AlreadyExists');
    const old = () => parseEnvelope(json(409, { type: 'error', error: 'x exists', error_code: 409 }));
    assert.throws(old, (e: unknown) => isTrivisorError(e) && e.code === 'Conflict');
    // A code the client does not know is not trusted.
    const odd = () =>
      parseEnvelope(json(400, { type: 'error', error: 'bad', error_code: 400, code: 'Weird' }));
    assert.throws(odd, (e: unknown) => isTrivisorError(e) && e.code === 'InvalidArgument');
  });
});
