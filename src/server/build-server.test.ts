import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance, InjectOptions } from 'fastify';
import { createFakeServices, type FakeServices } from '../../test/fakes/fake-services.ts';
import { httpStatusOf } from '../api/errors.ts';
import { type ErrorCode, isErrorCode, TrivisorError } from '../core/errors.ts';
import { buildServer } from './build-server.ts';

describe('buildServer (inject)', () => {
  let app: FastifyInstance;
  let fake: FakeServices;
  before(async () => {
    fake = createFakeServices();
    app = await buildServer(fake, { auth: { type: 'none' } });
  });
  after(async () => {
    await app.close();
  });

  const expectError = async (
    request: InjectOptions,
    status: number,
    pattern: RegExp,
    code?: ErrorCode,
  ): Promise<void> => {
    const res = await app.inject(request);
    assert.equal(res.statusCode, status, res.body);
    const body = res.json();
    assert.deepEqual(Object.keys(body).sort(), ['code', 'error', 'error_code', 'type']);
    assert.equal(body.type, 'error');
    assert.equal(body.error_code, status);
    assert.ok(isErrorCode(body.code), `${body.code} is an error code`);
    if (code !== undefined) assert.equal(body.code, code);
    assert.match(body.error, pattern);
    assert.ok(!body.error.includes('\n'), 'error messages are one line');
  };

  test('GET /1.0 answers a sync envelope with host info', async () => {
    const res = await app.inject({ url: '/1.0' });
    assert.equal(res.statusCode, 200);
    const body = res.json();
    assert.equal(body.type, 'sync');
    assert.equal(body.status, 'Success');
    assert.equal(body.status_code, 200);
    assert.equal(body.metadata.api_version, '1.0');
    assert.equal(body.metadata.auth, 'trusted');
    assert.equal(body.metadata.environment.cpus, 2);
  });

  test('GET /1.0/guests lists URLs, guests, and guests with usage by recursion', async () => {
    const urls = (await app.inject({ url: '/1.0/guests' })).json().metadata;
    assert.deepEqual(urls, ['/1.0/guests/web1']);
    const plain = (await app.inject({ url: '/1.0/guests?recursion=1' })).json().metadata;
    assert.equal(plain[0].name, 'web1');
    assert.equal(plain[0].state.usage, null);
    const full = (await app.inject({ url: '/1.0/guests?recursion=2' })).json().metadata;
    assert.equal(full[0].state.usage.processes, 2);
    assert.equal(full[0].state.pid, 4242);
  });

  test('POST /1.0/guests answers 202 with an async envelope and the operation finishes', async () => {
    const res = await app.inject({
      method: 'POST',
      url: '/1.0/guests',
      payload: { name: 'db1', image: 'busybox', config: { 'limits.memory': '64MiB' } },
    });
    assert.equal(res.statusCode, 202);
    const body = res.json();
    assert.equal(body.type, 'async');
    assert.equal(body.status, 'Operation created');
    assert.equal(body.status_code, 100);
    assert.equal(body.operation, `/1.0/operations/${body.metadata.id}`);
    assert.equal(res.headers.location, body.operation);
    const done = (await app.inject({ url: `${body.operation}/wait?timeout=5` })).json().metadata;
    assert.equal(done.status, 'Success');
    assert.equal(fake.guestMap.get('db1')?.config['limits.memory'], '64MiB');
  });

  test("POST /1.0/guests accepts Incus's source form", async () => {
    const res = await app.inject({
      method: 'POST',
      url: '/1.0/guests',
      payload: { name: 'db2', source: { type: 'image', alias: 'busybox' } },
    });
    assert.equal(res.statusCode, 202, res.body);
  });

  test('every error code maps to its HTTP status in the error envelope, and travels in it as `code`', async () => {
    const codes: ErrorCode[] = [
      'NotFound',
      'AlreadyExists',
      'InvalidArgument',
      'FailedPrecondition',
      'Conflict',
      'Unavailable',
      'NotSupported',
      'Cancelled',
      'Internal',
    ];
    const original = fake.host.metrics;
    try {
      for (const code of codes) {
        fake.host.metrics = async () => {
          throw new TrivisorError(code, `Failed with ${code}`);
        };
        await expectError(
          { url: '/1.0/metrics' },
          httpStatusOf(code),
          new RegExp(`Failed with ${code}`),
          code,
        );
      }
      // An untyped error (a bug, a raw system call failure) never shows its message: it may
      // name host paths.
      fake.host.metrics = async () => {
        throw new Error(
          "ENOENT: no such file or directory, open '/var/lib/trivisor/x'\n    at open (node:fs)",
        );
      };
      await expectError(
        { url: '/1.0/metrics' },
        500,
        /^Internal error \(request req-[0-9a-z]+\): the daemon's log has the details$/,
        'Internal',
      );
      fake.host.metrics = async () => {
        throw new TypeError("Cannot read properties of undefined (reading 'source')");
      };
      await expectError({ url: '/1.0/metrics' }, 500, /^Internal error \(request /);
    } finally {
      fake.host.metrics = original;
    }
    assert.equal(httpStatusOf('NotFound'), 404);
    assert.equal(httpStatusOf('AlreadyExists'), 409);
    assert.equal(httpStatusOf('FailedPrecondition'), 400);
    assert.equal(httpStatusOf('NotSupported'), 400);
    assert.equal(httpStatusOf('Unavailable'), 503);
  });

  test('service errors pass through: unknown guest 404, duplicate 409, bad name 400, wrong state 400', async () => {
    await expectError({ url: '/1.0/guests/nope' }, 404, /not found/);
    await expectError(
      { method: 'POST', url: '/1.0/guests', payload: { name: 'web1', image: 'busybox' } },
      409,
      /already exists/,
      // The status alone would say Conflict: the code tells the two 409s apart.
      'AlreadyExists',
    );
    await expectError(
      { method: 'POST', url: '/1.0/guests', payload: { name: 'Bad_Name', image: 'busybox' } },
      400,
      /not a DNS label/,
    );
    await expectError({ method: 'DELETE', url: '/1.0/guests/web1' }, 400, /stop it first/);
  });

  test('malformed JSON, wrong media type, oversized bodies and unknown routes get the error envelope', async () => {
    await expectError(
      {
        method: 'POST',
        url: '/1.0/guests',
        payload: '{"name":',
        headers: { 'content-type': 'application/json' },
      },
      400,
      /not valid JSON/,
    );
    await expectError(
      { method: 'POST', url: '/1.0/guests', payload: 'name=x', headers: { 'content-type': 'text/plain' } },
      415,
      /Content-Type/,
    );
    await expectError(
      {
        method: 'POST',
        url: '/1.0/guests',
        payload: 'name=x',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
      },
      415,
      /Content-Type/,
    );
    const big = JSON.stringify({ name: 'x', image: 'y'.repeat(2 * 1024 * 1024) });
    await expectError(
      { method: 'POST', url: '/1.0/guests', payload: big, headers: { 'content-type': 'application/json' } },
      413,
      /too large/,
    );
    await expectError({ url: '/1.0/nothing' }, 404, /No such endpoint: GET \/1\.0\/nothing/, 'NotFound');
    await expectError({ url: '/1.0/images/%E0%A4%A' }, 400, /valid/);
    await expectError(
      { method: 'DELETE', url: '/1.0/guests/web1', headers: { 'content-type': 'application/json' } },
      400,
      /empty/,
    );
  });

  test('schema violations name the field: unknown, missing, wrong type, bad enum', async () => {
    await expectError(
      { method: 'POST', url: '/1.0/guests', payload: { name: 'a', image: 'busybox', nmae: 'x' } },
      400,
      /Unknown field "nmae" in body/,
    );
    await expectError(
      { method: 'POST', url: '/1.0/guests', payload: { image: 'busybox' } },
      400,
      /Missing field "name" in body/,
    );
    await expectError(
      { method: 'POST', url: '/1.0/guests', payload: { name: 'a', image: 'busybox', model: 'xen' } },
      400,
      /body\.model must be one of "ct", "pvm", "vm"/,
    );
    await expectError(
      { method: 'PUT', url: '/1.0/guests/web1/state', payload: { action: 'start', timeout: 'soon' } },
      400,
      /body\.timeout must be integer/,
    );
    await expectError({ method: 'POST', url: '/1.0/guests', payload: { name: 'a' } }, 400, /Say which image/);
    await expectError({ url: '/1.0/guests?recursion=7' }, 400, /recursion/, 'InvalidArgument');
    await expectError({ method: 'POST', url: '/1.0/guests', payload: [1, 2] }, 400, /JSON object/);
  });

  test('PATCH merges config, unsets null values and listed keys, and reports pending restarts', async () => {
    fake.guestMap.get('web1')!.config = { 'limits.cpu': '1', 'boot.autostart': 'true' };
    const res = await app.inject({
      method: 'PATCH',
      url: '/1.0/guests/web1',
      payload: {
        config: { 'limits.memory': '128MiB', 'limits.disk': '1GiB', 'limits.cpu': null },
        unset: ['boot.autostart'],
      },
    });
    assert.equal(res.statusCode, 200, res.body);
    const meta = res.json().metadata;
    assert.deepEqual(meta.guest.config, { 'limits.memory': '128MiB', 'limits.disk': '1GiB' });
    assert.deepEqual(meta.pendingRestart, ['limits.disk']);
    await expectError({ method: 'PATCH', url: '/1.0/guests/web1', payload: {} }, 400, /Nothing to change/);
  });

  test('guest state: GET shows status and usage, PUT starts an operation', async () => {
    const state = (await app.inject({ url: '/1.0/guests/web1/state' })).json().metadata;
    assert.equal(state.status, 'Running');
    assert.equal(state.usage.memoryBytes, 3 * 1024 * 1024);
    const res = await app.inject({
      method: 'PUT',
      url: '/1.0/guests/web1/state',
      payload: { action: 'freeze' },
    });
    assert.equal(res.statusCode, 202);
    await app.inject({ url: `${res.json().operation}/wait` });
    assert.equal(fake.guestMap.get('web1')?.status, 'Frozen');
    fake.guestMap.get('web1')!.status = 'Running';
  });

  test('exec with record-output returns exit code, stdout and stderr in the operation', async () => {
    const res = await app.inject({
      method: 'POST',
      url: '/1.0/guests/web1/exec',
      payload: { command: ['echo', 'hello', 'world'], 'record-output': true },
    });
    assert.equal(res.statusCode, 202, res.body);
    const op = (await app.inject({ url: `${res.json().operation}/wait?timeout=5` })).json().metadata;
    assert.equal(op.status, 'Success');
    assert.deepEqual(
      { return: op.metadata.return, stdout: op.metadata.stdout, stderr: op.metadata.stderr },
      { return: 0, stdout: 'hello world\n', stderr: '' },
    );
    const res2 = await app.inject({
      method: 'POST',
      url: '/1.0/guests/web1/exec',
      payload: { command: ['spam', String(3 * 1024 * 1024)], 'record-output': true },
    });
    const op2 = (await app.inject({ url: `${res2.json().operation}/wait?timeout=5` })).json().metadata;
    assert.equal(op2.metadata.stdout.length, 1024 * 1024, 'output is capped at 1 MiB');
  });

  test('exec in a stopped guest is refused at once', async () => {
    fake.guestMap.get('web1')!.status = 'Stopped';
    try {
      await expectError(
        { method: 'POST', url: '/1.0/guests/web1/exec', payload: { command: ['true'] } },
        400,
        /start it first/,
      );
    } finally {
      fake.guestMap.get('web1')!.status = 'Running';
    }
  });

  test('images: list, get by alias with a slash (encoded or not), build, delete', async () => {
    const build = await app.inject({
      method: 'POST',
      url: '/1.0/images',
      payload: { source: 'debian/bookworm' },
    });
    assert.equal(build.statusCode, 202, build.body);
    await app.inject({ url: `${build.json().operation}/wait` });
    const encoded = await app.inject({ url: '/1.0/images/debian%2Fbookworm' });
    assert.equal(encoded.statusCode, 200, encoded.body);
    assert.deepEqual(encoded.json().metadata.aliases, ['debian/bookworm']);
    const plain = await app.inject({ url: '/1.0/images/debian/bookworm' });
    assert.equal(plain.json().metadata.fingerprint, encoded.json().metadata.fingerprint);
    const urls = (await app.inject({ url: '/1.0/images' })).json().metadata;
    assert.equal(urls.length, 2);
    assert.match(urls[0], /^\/1\.0\/images\/[0-9a-f]{64}$/);
    const del = await app.inject({ method: 'DELETE', url: '/1.0/images/debian/bookworm' });
    assert.equal(del.statusCode, 200);
    await expectError({ url: '/1.0/images/debian/bookworm' }, 404, /not found/);
  });

  test('POST /1.0/images without a body is a 400 saying what to send, not a TypeError', async () => {
    const before = fake.images.list ? (await fake.images.list()).length : 0;
    await expectError({ method: 'POST', url: '/1.0/images' }, 400, /Send \{"source"/);
    await expectError({ method: 'POST', url: '/1.0/images', payload: '' }, 400, /Send \{"source"/);
    assert.equal((await fake.images.list()).length, before, 'nothing was built');
  });

  test('image upload without an alias is refused with 400', async () => {
    await expectError(
      {
        method: 'POST',
        url: '/1.0/images',
        payload: Buffer.from('data'),
        headers: { 'content-type': 'application/octet-stream' },
      },
      400,
      /X-Trivisor-Alias/,
    );
  });

  test('operations: list, get, cancel a finished one is refused, unknown is 404', async () => {
    const ops = (await app.inject({ url: '/1.0/operations?recursion=1' })).json().metadata;
    assert.ok(ops.length > 0);
    const id = ops[0].id;
    assert.equal((await app.inject({ url: `/1.0/operations/${id}` })).json().metadata.id, id);
    await expectError({ method: 'DELETE', url: `/1.0/operations/${id}` }, 400, /already finished/);
    await expectError({ url: '/1.0/operations/nope' }, 404, /not found/);
  });

  test('metrics are served as text', async () => {
    const res = await app.inject({ url: '/1.0/metrics' });
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers['content-type']), /^text\/plain/);
    assert.equal(res.body, 'trivisor_guests 1\n');
  });

  test('openapi.json is served and documents the routes', async () => {
    const doc = (await app.inject({ url: '/1.0/openapi.json' })).json();
    assert.equal(doc.openapi, '3.0.3');
    for (const path of [
      '/1.0/guests',
      '/1.0/guests/{name}/exec',
      '/1.0/operations/{id}/wait',
      '/1.0/images',
    ]) {
      assert.ok(doc.paths[path], `${path} is documented`);
    }
  });
});

describe('buildServer token auth', () => {
  test('requests without the right bearer token get 401; GET /1.0 says untrusted', async () => {
    const app = await buildServer(createFakeServices(), { auth: { type: 'token', token: 's3cret' } });
    try {
      const none = await app.inject({ url: '/1.0/guests' });
      assert.equal(none.statusCode, 401);
      assert.equal(none.json().type, 'error');
      assert.equal(none.json().error_code, 401);
      const wrong = await app.inject({ url: '/1.0/guests', headers: { authorization: 'Bearer nope' } });
      assert.equal(wrong.statusCode, 401);
      const good = await app.inject({ url: '/1.0/guests', headers: { authorization: 'Bearer s3cret' } });
      assert.equal(good.statusCode, 200);
      const info = (await app.inject({ url: '/1.0' })).json().metadata;
      assert.equal(info.auth, 'untrusted');
      assert.equal(info.environment, undefined);
      const unknown = await app.inject({ url: '/1.0/nothing' });
      assert.equal(unknown.statusCode, 401, 'no route discovery without the token');
    } finally {
      await app.close();
    }
  });
});
