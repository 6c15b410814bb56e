import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createFakeServices } from '../../test/fakes/fake-services.ts';
import { createNetworkController, type NetworkController } from '../control/network-controller.ts';
import { silentLogger } from '../host/logger.ts';
import type { NetworkBackend } from '../network/network-backend.ts';
import { createEventBus } from '../services/event-bus.ts';
import { createNetworkService } from '../services/network-service.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { buildServer } from './build-server.ts';

/** A backend that builds nothing: the routes and the service are what is under test. */
const nullBackend: NetworkBackend = {
  ensure: async () => ({ pid: 1, startTime: 1 }),
  inspect: async () => ({ bridge: true, dnsmasq: true }),
  remove: async () => {},
  listOwned: async () => [],
  plugVeth: async () => {},
  plugTap: async () => ({ mtu: 1500 }),
  unplug: async () => {},
  counters: async () => undefined,
  portState: async () => 'up',
  leases: async () => new Map(),
};

describe('/1.0/networks routes', () => {
  let app: FastifyInstance;
  let controller: NetworkController;
  const store = createMemoryStore();

  before(async () => {
    controller = createNetworkController({
      store,
      backend: nullBackend,
      events: createEventBus(),
      log: silentLogger(),
      hostName: 'h1',
    });
    await controller.start();
    const services = createFakeServices();
    services.networks = createNetworkService({ store, hostName: 'h1', convergeWaitMs: 2000 });
    app = await buildServer(services, { auth: { type: 'none' } });
  });
  after(async () => {
    await app.close();
    await controller.stop();
    await store.close();
  });

  test('create, list, show, patch, forward, ACL and delete through the API', async () => {
    const created = await app.inject({
      method: 'POST',
      url: '/1.0/networks',
      payload: { name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } },
    });
    assert.equal(created.statusCode, 200, created.body);
    assert.equal(created.headers.location, '/1.0/networks/net1');
    assert.equal(created.json().metadata.status, 'Created');
    assert.deepEqual((await app.inject({ url: '/1.0/networks' })).json().metadata, ['/1.0/networks/net1']);
    const patched = await app.inject({
      method: 'PATCH',
      url: '/1.0/networks/net1',
      payload: { config: { 'ipv4.nat': 'true' } },
    });
    assert.equal(patched.json().metadata.config['ipv4.nat'], 'true');
    const fwd = await app.inject({
      method: 'POST',
      url: '/1.0/networks/net1/forwards',
      payload: { listenAddress: '198.19.1.1', listenPort: 80, target: '198.18.10.5', targetPort: 8080 },
    });
    assert.equal(fwd.json().metadata.forwards[0].protocol, 'tcp');
    const acl = await app.inject({
      method: 'POST',
      url: '/1.0/networks/net1/acls',
      payload: { direction: 'ingress', action: 'drop', protocol: 'tcp', destinationPort: 22 },
    });
    assert.equal(acl.json().metadata.acls.length, 1);
    assert.equal((await app.inject({ method: 'DELETE', url: '/1.0/networks/net1/acls/0' })).statusCode, 200);
    const unfwd = await app.inject({ method: 'DELETE', url: '/1.0/networks/net1/forwards/198.19.1.1:80' });
    assert.equal(unfwd.json().metadata.forwards, undefined);
    assert.equal((await app.inject({ method: 'DELETE', url: '/1.0/networks/net1' })).statusCode, 200);
    assert.equal((await app.inject({ url: '/1.0/networks/net1' })).statusCode, 404);
  });

  test('bad input: 400 for a bad CIDR or unknown field, 409 for overlaps, 404 for unknown networks', async () => {
    const post = (payload: unknown) =>
      app.inject({ method: 'POST', url: '/1.0/networks', payload: payload as object });
    assert.equal((await post({ name: 'n1', config: { 'ipv4.address': '198.18.10.1' } })).statusCode, 400);
    assert.equal((await post({ name: 'n1', bogus: 1 })).statusCode, 400);
    assert.equal((await post({ name: 'n1', config: { 'ipv4.address': '198.18.20.1/24' } })).statusCode, 200);
    const overlap = await post({ name: 'n2', config: { 'ipv4.address': '198.18.20.129/25' } });
    assert.equal(overlap.statusCode, 409);
    assert.match(overlap.json().error, /overlaps network n1/);
    assert.equal((await app.inject({ url: '/1.0/networks/nope' })).statusCode, 404);
    assert.equal(
      (await app.inject({ method: 'DELETE', url: '/1.0/networks/n1/forwards/not-an-address' })).statusCode,
      400,
    );
  });
});
