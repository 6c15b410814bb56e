import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createFakeServices, type FakeServices } from '../../test/fakes/fake-services.ts';
import { buildServer } from '../server/build-server.ts';
import { listenUnix } from '../server/listen.ts';
import { TrivisorApiError } from './api-error.ts';
import { createClient, type TrivisorClient } from './client.ts';

const until = async (check: () => boolean, what: string): Promise<void> => {
  for (let i = 0; i < 300 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(check(), what);
};

describe('attached console through the server (fake services)', () => {
  let dir: string;
  let app: FastifyInstance;
  let fake: FakeServices;
  let client: TrivisorClient;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'trivisor-console-'));
    fake = createFakeServices();
    const web1 = fake.guestMap.get('web1');
    assert.ok(web1);
    fake.guestMap.set('vm1', { ...web1, name: 'vm1', model: 'vm' });
    app = await buildServer(fake, { auth: { type: 'none' }, uploadDir: dir });
    await listenUnix(app, join(dir, 'trivisor.sock'));
    client = createClient({ socketPath: join(dir, 'trivisor.sock') });
  });
  after(async () => {
    await app.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('bytes go both ways; closing detaches and ends the operation', async () => {
    const handle = await client.attachConsole('vm1');
    let text = '';
    handle.output.on('data', (c: Buffer) => {
      text += c.toString('latin1');
    });
    handle.input.write('echo hi\r\n\x03');
    await until(() => text === 'echo hi\r\n\x03', `the echo, got ${JSON.stringify(text)}`);
    assert.equal((await client.getOperation(handle.operationId)).status, 'Running');
    handle.close();
    assert.deepEqual(await handle.closed, { reason: 'detached' });
    const op = await client.waitOperation(handle.operationId);
    assert.equal(op.status, 'Success');
    assert.equal(op.metadata.ended, 'detached');
    assert.equal(fake.consoles.at(-1)?.destroyed, true, 'the server let go of the console');
  });

  test('a console that ends (the guest stopped) closes the session with that reason', async () => {
    const handle = await client.attachConsole('vm1');
    await until(() => fake.consoles.length === 2, 'the second console');
    fake.consoles.at(-1)?.end();
    assert.deepEqual(await handle.closed, { reason: 'console closed' });
    assert.equal((await client.waitOperation(handle.operationId)).metadata.ended, 'console-closed');
  });

  test('cancelling the operation detaches the client', async () => {
    const handle = await client.attachConsole('vm1');
    await client.cancelOperation(handle.operationId);
    assert.equal((await handle.closed).reason, 'detached');
  });

  test('a ct guest, a stopped guest and an unknown guest are refused before any websocket', async () => {
    await assert.rejects(
      client.attachConsole('web1'),
      (e) => e instanceof TrivisorApiError && e.status === 400 && /take no input/.test(e.message),
    );
    const vm1 = fake.guestMap.get('vm1');
    assert.ok(vm1);
    fake.guestMap.set('vm2', { ...vm1, name: 'vm2', status: 'Stopped' });
    await assert.rejects(client.attachConsole('vm2'), /not running/);
    await assert.rejects(
      client.attachConsole('nope'),
      (e) => e instanceof TrivisorApiError && e.status === 404,
    );
  });
});
