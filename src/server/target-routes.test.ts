import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createFakeServices, type FakeServices } from '../../test/fakes/fake-services.ts';
import { notFound } from '../core/errors.ts';
import { buildServer } from './build-server.ts';
import { targetScoped } from './owner-routes.ts';

// Decision 0077: each member has its own backup directory, so its listing, one archive and an
// import from it go to the member `?target=` names, as an upload import and a new pool do.

describe('?target= passes the backup directory and imports on to that member', () => {
  let dir: string;
  let app: FastifyInstance;
  let fake: FakeServices;
  const dialled: string[] = [];
  const archive = '20261201T030000Z.tar';

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'trivisor-target-routes-'));
    await mkdir(path.join(dir, 'backups', 'g1'), { recursive: true });
    await writeFile(path.join(dir, 'backups', 'g1', archive), 'an archive');
    fake = createFakeServices();
    app = await buildServer(fake, {
      auth: { type: 'none' },
      uploadDir: dir,
      backupDir: path.join(dir, 'backups'),
      // m2 is a member that does not answer (so what reaches it is seen by its dial); any other name is unknown.
      forward: {
        here: 'm1',
        others: async () => ['m2'],
        connect: async (member) => {
          dialled.push(member);
          if (member !== 'm2') throw notFound(`Member ${member} not found`);
          throw new Error('connection refused');
        },
        statusOf: async (member) => (member === 'm2' ? 'Online' : undefined),
      },
    });
  });
  after(async () => {
    await app?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const importBody = { source: { type: 'backup-directory', archive: `g1/${archive}` } };

  test('the routing table: imports, a new pool and the backup directory go to their target', () => {
    for (const [method, url] of [
      ['POST', '/1.0/backups'],
      ['POST', '/1.0/storage-pools'],
      ['GET', '/1.0/backups'],
      ['GET', '/1.0/backups/:guest/:archive'],
      ['POST', '/1.0/backups/import'],
    ] as const) {
      assert.equal(targetScoped(method, url), true, `${method} ${url}`);
    }
    // A list filtered by member is the store's, answered anywhere; a guest's create is placed by the scheduler.
    assert.equal(targetScoped('GET', '/1.0/storage-pools'), false);
    assert.equal(targetScoped('GET', '/1.0/guests'), false);
    assert.equal(targetScoped('POST', '/1.0/guests'), false);
    assert.equal(targetScoped('GET', undefined), false);
  });

  test("another member's listing, archive and import are passed on to it, and nothing is done here", async () => {
    const operations = (await fake.operations.list()).length;
    for (const request of [
      { method: 'GET' as const, url: '/1.0/backups?recursion=1&target=m2' },
      { method: 'GET' as const, url: `/1.0/backups/g1/${archive}?target=m2` },
      { method: 'POST' as const, url: '/1.0/backups/import?target=m2', payload: importBody },
    ]) {
      dialled.length = 0;
      const res = await app.inject(request);
      assert.equal(res.statusCode, 503, `${request.url}: ${res.body}`);
      assert.equal(res.json().error, 'Member m2 cannot be reached: connection refused');
      assert.deepEqual(dialled, ['m2'], request.url);
    }
    assert.equal((await fake.operations.list()).length, operations, 'no import started here');
  });

  test('an unknown member is a one-line 404, for the listing and the import alike', async () => {
    for (const request of [
      { method: 'GET' as const, url: '/1.0/backups?target=nope' },
      { method: 'POST' as const, url: '/1.0/backups/import?target=nope', payload: importBody },
    ]) {
      const res = await app.inject(request);
      assert.equal(res.statusCode, 404, res.body);
      assert.equal(res.json().error, 'Member nope not found');
    }
  });

  test('this member named, or none, is answered here from its own directory', async () => {
    dialled.length = 0;
    for (const url of ['/1.0/backups?recursion=1&target=m1', '/1.0/backups?recursion=1']) {
      const res = await app.inject({ method: 'GET', url });
      assert.equal(res.statusCode, 200, res.body);
      assert.deepEqual(
        (res.json().metadata as Array<{ archive: string }>).map((a) => a.archive),
        [`g1/${archive}`],
      );
    }
    // recursion=0's URLs keep the member asked for, so that following one reaches the same directory.
    const urls = await app.inject({ method: 'GET', url: '/1.0/backups?target=m1' });
    assert.deepEqual(urls.json().metadata, [`/1.0/backups/g1/${archive}?target=m1`]);
    const plain = await app.inject({ method: 'GET', url: '/1.0/backups' });
    assert.deepEqual(plain.json().metadata, [`/1.0/backups/g1/${archive}`]);
    const one = await app.inject({ method: 'GET', url: `/1.0/backups/g1/${archive}?target=m1` });
    assert.equal(one.statusCode, 200, one.body);
    assert.deepEqual(dialled, []);
  });
});
