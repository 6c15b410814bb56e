import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { makeProjectWorld, type ProjectWorld } from '../../test/fakes/project-world.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec } from '../core/types.ts';
import { createOwnerRouting } from '../services/owner-routing.ts';
import { buildServer } from './build-server.ts';
import { ownerScopedGuest } from './owner-routes.ts';

// Decision 0028: what must run where the guest is runs on its owner; desired-state writes are
// taken by any member. Until members are connected, another member's guest is a 503 naming it.

describe('guest-scoped requests run on the owner', () => {
  let world: ProjectWorld;
  let app: FastifyInstance;

  before(async () => {
    world = await makeProjectWorld();
    world.services.owner = createOwnerRouting({ store: world.store, member: 'h1' });
    app = await buildServer(world.services, { auth: { type: 'none' } });
    for (const name of ['mine', 'theirs']) {
      const op = await world.services.guests.create({ name, image: 'busybox' });
      await world.services.operations.wait(op.id);
    }
    // `theirs` moves to member h2 (as a migration would: spec and location key together).
    const kv = await world.store.get(keys.guest('theirs'));
    const spec = JSON.parse(kv?.value ?? '{}') as GuestSpec;
    await world.store.put(keys.guest('theirs'), JSON.stringify({ ...spec, location: 'h2' }));
    await world.store.put(keys.guestLocation('theirs'), 'h2');
  });
  after(async () => {
    await app.close();
    await world.stop();
  });

  test('the routing table: everything under a guest but state, config and delete', () => {
    const params = { name: 'g' };
    assert.equal(ownerScopedGuest('POST', '/1.0/guests/:name/exec', params), 'g');
    assert.equal(ownerScopedGuest('POST', '/1.0/guests/:name/snapshots', params), 'g');
    assert.equal(ownerScopedGuest('GET', '/1.0/guests/:name/backups/:backup/export', params), 'g');
    assert.equal(ownerScopedGuest('GET', '/1.0/guests/:name', params), 'g');
    assert.equal(ownerScopedGuest('PUT', '/1.0/guests/:name/state', params), undefined);
    // A snapshot's restore (Incus: PUT of the guest with {restore}) and a move run on the owner.
    assert.equal(ownerScopedGuest('PUT', '/1.0/guests/:name', params), 'g');
    assert.equal(ownerScopedGuest('POST', '/1.0/guests/:name', params), 'g');
    assert.equal(ownerScopedGuest('PATCH', '/1.0/guests/:name', params), undefined);
    assert.equal(ownerScopedGuest('DELETE', '/1.0/guests/:name', params), undefined);
    assert.equal(ownerScopedGuest('GET', '/1.0/guests', params), undefined);
    assert.equal(ownerScopedGuest('GET', '/1.0/networks/:name', params), undefined);
  });

  test("another member's guest: exec, files and snapshots are a 503 naming its owner, and run nothing here", async () => {
    const calls = world.driver.calls.length;
    const before = await world.store.revision();
    for (const request of [
      { method: 'POST' as const, url: '/1.0/guests/theirs/exec', payload: { command: ['true'] } },
      { method: 'GET' as const, url: '/1.0/guests/theirs/files?path=/etc/hostname' },
      { method: 'POST' as const, url: '/1.0/guests/theirs/snapshots', payload: { name: 's1' } },
      { method: 'GET' as const, url: '/1.0/guests/theirs' },
    ]) {
      const res = await app.inject(request);
      assert.equal(res.statusCode, 503, `${request.method} ${request.url}: ${res.body}`);
      const body = res.json();
      assert.equal(body.code, 'Unavailable');
      assert.match(body.error, /^Guest theirs is on member h2, not on [a-z0-9-]+: ask h2$/);
    }
    assert.equal(world.driver.calls.length, calls, 'nothing ran here');
    assert.equal(await world.store.revision(), before, 'nothing was written');
  });

  test("a NIC or volume attach of another member's guest goes to its owner: a 503 here, nothing written", async () => {
    await world.services.networks?.create({ name: 'lab', config: { 'ipv4.address': '198.18.60.1/24' } });
    await world.services.volumes?.create('default', {
      name: 'data',
      type: 'filesystem',
      config: { size: '1GiB' },
    });
    const before = await world.store.revision();
    for (const request of [
      { method: 'POST' as const, url: '/1.0/networks/lab/attach', payload: { guest: 'theirs' } },
      { method: 'POST' as const, url: '/1.0/networks/lab/detach', payload: { guest: 'theirs' } },
      {
        method: 'POST' as const,
        url: '/1.0/storage-pools/default/volumes/custom/data/attach',
        payload: { guest: 'theirs', path: '/mnt/data' },
      },
    ]) {
      const res = await app.inject(request);
      assert.equal(res.statusCode, 503, `${request.url}: ${res.body}`);
      assert.match(res.json().error, /^Guest theirs is on member h2/);
    }
    assert.equal(await world.store.revision(), before, 'nothing was written');
    const mine = await app.inject({
      method: 'POST',
      url: '/1.0/networks/lab/attach',
      payload: { guest: 'mine' },
    });
    assert.equal(mine.statusCode, 200, mine.body);
  });

  test("a desired-state write about another member's guest is taken here: the owner's controller converges it", async () => {
    const res = await app.inject({
      method: 'PUT',
      url: '/1.0/guests/theirs/state',
      payload: { action: 'start' },
    });
    assert.equal(res.statusCode, 202, res.body);
    const spec = JSON.parse((await world.store.get(keys.guest('theirs')))?.value ?? '{}') as GuestSpec;
    assert.equal(spec.desired, 'Running');
  });

  test("this member's guests are answered here; another project's guest is not found, its owner not named", async () => {
    const res = await app.inject({ method: 'GET', url: '/1.0/guests/mine' });
    assert.equal(res.statusCode, 200, res.body);
    await world.services.projects.create({ name: 'p2' });
    const other = await app.inject({ method: 'GET', url: '/1.0/guests/theirs?project=p2' });
    assert.equal(other.statusCode, 404, other.body);
    assert.doesNotMatch(other.body, /h2/);
  });
});
