import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { countingStore } from '../../test/fakes/counting-store.ts';
import { createFakeDriver } from '../../test/fakes/fake-driver.ts';
import { createNetworkController, type NetworkController } from '../control/network-controller.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec, GuestStatus, ProcessIdentity } from '../core/types.ts';
import { silentLogger } from '../host/logger.ts';
import type { HostSubnet } from '../network/default-network.ts';
import type { NetworkBackend, NetworkDefinition } from '../network/network-backend.ts';
import type { KvStore } from '../store/kv.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { records } from '../store/records.ts';
import { createEventBus } from './event-bus.ts';
import { createNetworkService, type NetworkService, validateAclRule } from './network-service.ts';

/** A whole guest record, as the guest service writes one. */
const guestRecord = (name: string, extra: Partial<GuestSpec> = {}): GuestSpec => ({
  name,
  project: 'default',
  model: 'ct',
  image: 'ab'.repeat(32),
  imageAlias: 'busybox',
  config: {},
  desired: 'Stopped',
  generation: 1,
  restartRequest: 0,
  stopTimeoutMs: 1000,
  stopForce: false,
  deleting: false,
  location: 'h1',
  createdAt: new Date(0).toISOString(),
  ...extra,
});

/** A whole guest status, as the guest controller writes one. */
const statusRecord = (status: GuestStatus['status']): GuestStatus => ({
  status,
  observedGeneration: 1,
  observedRestartRequest: 0,
  appliedConfig: {},
  pendingRestart: [],
  restartCount: 0,
  provisioned: true,
});

/** A backend that keeps its "bridges" in a map. */
function fakeBackend() {
  const bridges = new Map<string, NetworkDefinition>();
  const calls: string[] = [];
  let failNext: string | undefined;
  const backend: NetworkBackend & { bridges: typeof bridges; calls: string[]; fail(msg: string): void } = {
    bridges,
    calls,
    fail(msg) {
      failNext = msg;
    },
    async ensure(def) {
      calls.push(`ensure ${def.name}`);
      if (failNext) throw new Error(failNext);
      bridges.set(def.name, def);
      return { pid: 1, startTime: 1 } satisfies ProcessIdentity;
    },
    async inspect(name) {
      return { bridge: bridges.has(name), dnsmasq: bridges.has(name) };
    },
    async remove(name) {
      calls.push(`remove ${name}`);
      bridges.delete(name);
    },
    async listOwned() {
      return [...bridges.keys()];
    },
    async plugVeth() {},
    async plugTap() {
      return { mtu: 1500 };
    },
    async unplug() {},
    async counters() {
      return undefined;
    },
    async portState() {
      return 'up' as const;
    },
    async leases() {
      return new Map<string, string>();
    },
  };
  return backend;
}

describe('network service and controller', () => {
  let store: KvStore;
  let backend: ReturnType<typeof fakeBackend>;
  let controller: NetworkController;
  let networks: NetworkService;

  beforeEach(async () => {
    store = createMemoryStore();
    backend = fakeBackend();
    controller = createNetworkController({
      store,
      backend,
      events: createEventBus(),
      log: silentLogger(),
      hostName: 'h1',
      checkIntervalMs: 50,
    });
    await controller.start();
    networks = createNetworkService({ store, hostName: 'h1', convergeWaitMs: 2000 });
  });
  afterEach(async () => {
    await controller.stop();
    await store.close();
  });

  const guestWith = async (name: string, network: string) => {
    const claims = await networks.claimNics(name, { eth0: { type: 'nic', network } });
    const spec = guestRecord(name, { devices: claims.devices });
    await store.txn({
      compare: claims.compare,
      success: [...claims.success, { type: 'put', key: keys.guest(name), value: JSON.stringify(spec) }],
    });
    return claims;
  };

  test('create() builds the network with defaults and shows it as Created', async () => {
    const n = await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    assert.equal(n.status, 'Created');
    assert.deepEqual(n.config, {
      'ipv4.address': '198.18.10.1/24',
      'ipv4.nat': 'false',
      'security.isolated': 'false',
      'dns.domain': 'trivisor',
    });
    assert.equal(backend.bridges.get('net1')?.gateway.address, '198.18.10.1');
    assert.deepEqual(
      (await networks.list()).map((x) => x.name),
      ['net1'],
    );
  });

  test('a subnet the host already routes is refused naming the interface; its own bridge is not a conflict', async () => {
    const host: HostSubnet[] = [
      { cidr: '198.19.250.1/24', dev: 'eth9', source: 'address' },
      { cidr: '10.77.0.0/16', dev: 'wg0', source: 'route' },
      { cidr: '198.18.10.1/24', dev: 'net1', source: 'address' },
    ];
    const guarded = createNetworkService({
      store,
      hostName: 'h1',
      convergeWaitMs: 2000,
      hostSubnets: async () => host,
    });
    await assert.rejects(guarded.create({ name: 'clash', config: { 'ipv4.address': '198.19.250.5/24' } }), {
      code: 'Conflict',
      message: /Subnet 198\.19\.250\.0\/24 overlaps the address 198\.19\.250\.1\/24 of host interface eth9/,
    });
    await assert.rejects(guarded.create({ name: 'clash', config: { 'ipv4.address': '10.77.3.1/24' } }), {
      code: 'Conflict',
      message: /a route to 10\.77\.0\.0\/16 on host interface wg0/,
    });
    assert.deepEqual(await guarded.list(), [], 'nothing was recorded');
    assert.equal(backend.bridges.size, 0, 'nothing was built');
    // net1's own bridge carries its subnet: creating it and changing it is not a conflict with itself.
    await guarded.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    await guarded.update('net1', { set: { 'ipv4.address': '198.18.10.1/25' } });
    await assert.rejects(guarded.update('net1', { set: { 'ipv4.address': '198.19.250.9/24' } }), {
      code: 'Conflict',
    });
    assert.equal((await guarded.get('net1')).config['ipv4.address'], '198.18.10.1/25');
  });

  test('bad input is refused with clear errors', async () => {
    await assert.rejects(networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.0/24' } }), {
      code: 'InvalidArgument',
    });
    await assert.rejects(networks.create({ name: 'net1', config: { 'ipv4.address': 'nonsense' } }), {
      code: 'InvalidArgument',
    });
    await assert.rejects(networks.create({ name: 'net1', config: {} }), /ipv4.address is required/);
    await assert.rejects(
      networks.create({ name: 'a-very-long-name', config: { 'ipv4.address': '198.18.10.1/24' } }),
      /at most 15/,
    );
    await assert.rejects(networks.create({ name: 'Net', config: { 'ipv4.address': '198.18.10.1/24' } }), {
      code: 'InvalidArgument',
    });
    await assert.rejects(
      networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24', 'ipv4.nat': 'yes' } }),
      /true or false/,
    );
    await assert.rejects(
      networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24', bogus: '1' } }),
      /Unknown network configuration key/,
    );
    await assert.rejects(networks.get('nope'), { code: 'NotFound' });
  });

  test('overlapping subnets are refused with Conflict, names taken with AlreadyExists', async () => {
    await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    await assert.rejects(networks.create({ name: 'net2', config: { 'ipv4.address': '198.18.0.1/16' } }), {
      code: 'Conflict',
    });
    await assert.rejects(networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.11.1/24' } }), {
      code: 'AlreadyExists',
    });
  });

  test('a network that cannot be built leaves nothing behind', async () => {
    backend.fail('bridge name taken');
    await assert.rejects(
      networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } }),
      /bridge name taken/,
    );
    assert.equal((await networks.list()).length, 0);
  });

  test('NICs get stable MACs and the next free address; their reservations reach the backend', async () => {
    await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    const a = await guestWith('a', 'net1');
    const b = await guestWith('b', 'net1');
    assert.equal(a.devices.eth0?.['ipv4.address'], '198.18.10.2');
    assert.equal(b.devices.eth0?.['ipv4.address'], '198.18.10.3');
    assert.match(a.devices.eth0?.hwaddr ?? '', /^02:/);
    await controller.reconcile('net1');
    assert.deepEqual(
      backend.bridges.get('net1')?.hosts.map((h) => `${h.name}=${h.ip}`),
      ['a=198.18.10.2', 'b=198.18.10.3'],
    );
    await assert.rejects(
      networks.claimNics('c', { eth0: { type: 'nic', network: 'net1', 'ipv4.address': '198.18.10.2' } }),
      { code: 'Conflict' },
    );
    await assert.rejects(
      networks.claimNics('c', { eth0: { type: 'nic', network: 'net1', 'ipv4.address': '198.18.20.2' } }),
      { code: 'InvalidArgument' },
    );
    await assert.rejects(networks.claimNics('c', { eth0: { type: 'nic', network: 'nope' } }), {
      code: 'NotFound',
    });
  });

  test('delete is refused while a NIC uses the network; a deleted guest releases its address', async () => {
    await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    await guestWith('a', 'net1');
    await assert.rejects(networks.delete('net1'), { code: 'FailedPrecondition' });
    await store.delete(keys.guest('a'));
    for (let i = 0; i < 50 && (await store.list(keys.networkAddresses('net1'))).kvs.length > 0; i++)
      await new Promise((r) => setTimeout(r, 20));
    assert.equal((await store.list(keys.networkAddresses('net1'))).kvs.length, 0);
    await networks.delete('net1');
    assert.equal(backend.bridges.has('net1'), false);
    assert.equal((await networks.list()).length, 0);
  });

  test('update() applies NAT and refuses a new subnet while NICs hold addresses', async () => {
    await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    const n = await networks.update('net1', { set: { 'ipv4.nat': 'true' } });
    assert.equal(n.config['ipv4.nat'], 'true');
    assert.equal(backend.bridges.get('net1')?.nat, true);
    await guestWith('a', 'net1');
    await assert.rejects(networks.update('net1', { set: { 'ipv4.address': '198.18.11.1/24' } }), {
      code: 'FailedPrecondition',
    });
  });

  test('forwards target a guest by name or an address, and the same listen port is refused twice', async () => {
    await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    await guestWith('a', 'net1');
    const n = await networks.addForward('net1', {
      listenAddress: '198.19.251.1',
      listenPort: 8080,
      target: 'a',
      targetPort: 80,
    });
    assert.deepEqual(n.forwards, [
      {
        listenAddress: '198.19.251.1',
        listenPort: 8080,
        protocol: 'tcp',
        targetAddress: '198.18.10.2',
        targetPort: 80,
        targetGuest: 'a',
      },
    ]);
    assert.equal(backend.bridges.get('net1')?.forwards?.length, 1);
    const again = { listenAddress: '198.19.251.1', listenPort: 8080, target: '198.18.10.9', targetPort: 81 };
    await assert.rejects(networks.addForward('net1', again), { code: 'Conflict' });
    await networks.addForward('net1', { ...again, protocol: 'udp' });
    await assert.rejects(networks.addForward('net1', { ...again, listenPort: 8081, target: '10.0.0.1' }), {
      code: 'InvalidArgument',
    });
    await assert.rejects(networks.addForward('net1', { ...again, listenPort: 0 }), {
      code: 'InvalidArgument',
    });
    await assert.rejects(networks.addForward('net1', { ...again, listenPort: 8081, target: 'nobody' }), {
      code: 'NotFound',
    });
    const after = await networks.removeForward('net1', { listenAddress: '198.19.251.1', listenPort: 8080 });
    assert.deepEqual(
      after.forwards?.map((f) => f.protocol),
      ['udp'],
    );
    await assert.rejects(
      networks.removeForward('net1', { listenAddress: '198.19.251.1', listenPort: 8080 }),
      {
        code: 'NotFound',
      },
    );
  });

  test('a change the host cannot apply is rolled back', async () => {
    await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    backend.fail('nft refused the rules');
    await assert.rejects(networks.update('net1', { set: { 'ipv4.nat': 'true' } }), /nft refused/);
    backend.fail('');
    await controller.reconcile('net1');
    const n = await networks.get('net1');
    assert.equal(n.config['ipv4.nat'], 'false');
    assert.equal(n.status, 'Created');
  });

  test('ACL rules are validated, appended in order and removed by index', async () => {
    await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    await networks.addAcl('net1', {
      direction: 'ingress',
      action: 'drop',
      protocol: 'tcp',
      destinationPort: 22,
    });
    const n = await networks.addAcl('net1', {
      direction: 'egress',
      action: 'allow',
      destination: '198.18.0.0/15',
    });
    assert.deepEqual(
      n.acls?.map((r) => `${r.direction}/${r.action}`),
      ['ingress/drop', 'egress/allow'],
    );
    assert.equal(backend.bridges.get('net1')?.acls?.length, 2);
    assert.deepEqual(
      (await networks.removeAcl('net1', 0)).acls?.map((r) => r.direction),
      ['egress'],
    );
    await assert.rejects(networks.removeAcl('net1', 5), { code: 'NotFound' });
    const bad = [
      { direction: 'sideways', action: 'drop' },
      { direction: 'ingress', action: 'reject' },
      { direction: 'ingress', action: 'drop', source: '10.0.0.300' },
      { direction: 'ingress', action: 'drop', destinationPort: 22 },
      { direction: 'ingress', action: 'drop', protocol: 'tcp', destinationPort: 70000 },
      { direction: 'ingress', action: 'drop', protocol: 'gre' },
    ];
    for (const rule of bad) {
      assert.throws(() => validateAclRule(rule as never), { code: 'InvalidArgument' }, JSON.stringify(rule));
    }
  });

  test('attach gives a guest the next ethN with an address; detach releases it, refused while running without a driver', async () => {
    await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    await store.put(keys.guest('g'), JSON.stringify(guestRecord('g')));
    assert.equal((await networks.attach('net1', 'g')).nic, 'eth0');
    const second = await networks.attach('net1', 'g', { device: { 'ipv4.address': '198.18.10.9' } });
    assert.deepEqual([second.nic, second.applied], ['eth1', 'none']);
    const spec = JSON.parse((await store.get(keys.guest('g')))?.value ?? '{}') as GuestSpec;
    assert.deepEqual(
      Object.entries(spec.devices ?? {}).map(([n, d]) => `${n}=${d['ipv4.address']}`),
      ['eth0=198.18.10.2', 'eth1=198.18.10.9'],
    );
    await assert.rejects(networks.attach('net1', 'g', { nic: 'eth0' }), { code: 'AlreadyExists' });
    await assert.rejects(networks.detach('net1', 'g'), /several NICs/);
    await store.put(keys.guestStatus('g'), JSON.stringify(statusRecord('Running')));
    await assert.rejects(networks.detach('net1', 'g', { nic: 'eth1' }), { code: 'FailedPrecondition' });
    await store.put(keys.guestStatus('g'), JSON.stringify(statusRecord('Stopped')));
    await networks.detach('net1', 'g', { nic: 'eth1' });
    const claims = (await store.list(keys.networkAddresses('net1'))).kvs.map((kv) => kv.key.split('/').pop());
    assert.deepEqual(claims, ['198.18.10.2']);
    await assert.rejects(networks.attach('net1', 'nobody'), { code: 'NotFound' });
  });

  test('a running guest gets and loses NICs live through its driver; a failed hot-plug changes nothing', async () => {
    const driver = createFakeDriver('ct');
    const live = createNetworkService({
      store,
      hostName: 'h1',
      convergeWaitMs: 2000,
      drivers: { ct: driver },
    });
    await live.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    const spec = guestRecord('g');
    await store.put(keys.guest('g'), JSON.stringify(spec));
    await driver.create(spec, undefined as never);
    const process = await driver.start(spec, undefined as never);
    await store.put(keys.guestStatus('g'), JSON.stringify({ ...statusRecord('Running'), process }));

    const r = await live.attach('net1', 'g');
    assert.deepEqual([r.nic, r.applied], ['eth0', 'live']);
    assert.match(r.message, /Attached eth0 on net1 to g \(live\)/);
    assert.ok(driver.calls.includes('attach-nic:g:eth0'));

    driver.failNext('attach-nic', 'no free port');
    await assert.rejects(live.attach('net1', 'g'), /no free port/);
    const after = JSON.parse((await store.get(keys.guest('g')))?.value ?? '{}') as GuestSpec;
    assert.deepEqual(Object.keys(after.devices ?? {}), ['eth0'], 'the failed NIC is not recorded');
    assert.equal(
      (await store.list(keys.networkAddresses('net1'))).kvs.length,
      1,
      'its address is free again',
    );

    driver.failNext('detach-nic', 'busy');
    await assert.rejects(live.detach('net1', 'g'), /busy/);
    assert.ok(
      JSON.parse((await store.get(keys.guest('g')))?.value ?? '{}').devices.eth0,
      'kept when unplug fails',
    );
    const d = await live.detach('net1', 'g');
    assert.equal(d.applied, 'live');
    assert.equal((await store.list(keys.networkAddresses('net1'))).kvs.length, 0);

    await driver.freeze(spec);
    await assert.rejects(live.attach('net1', 'g'), { code: 'FailedPrecondition', message: /frozen/ });
  });

  test('the controller recreates a missing bridge and removes stale ones at start', async () => {
    await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    backend.bridges.delete('net1');
    for (let i = 0; i < 100 && !backend.bridges.has('net1'); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(backend.bridges.has('net1'));
    await controller.stop();
    backend.bridges.set('stale0', backend.bridges.get('net1') as NetworkDefinition);
    controller = createNetworkController({
      store,
      backend,
      events: createEventBus(),
      log: silentLogger(),
      hostName: 'h1',
    });
    await controller.start();
    assert.deepEqual([...backend.bridges.keys()], ['net1']);
    assert.ok(backend.calls.includes('remove stale0'));
  });

  const member = (name: string, ip: string) =>
    records.member.at(name).putOp({
      name,
      address: `${ip}:8443`,
      roles: [],
      certificateFingerprint: 'ff',
      version: 'test',
      joinedAt: new Date(0).toISOString(),
      evacuated: false,
    });

  test("on a cluster a forward is refused, naming the guest's member, when its target runs on another member than the one holding its listen address", async () => {
    networks = createNetworkService({
      store,
      hostName: 'h1',
      convergeWaitMs: 2000,
      hostSubnets: async () => [
        { cidr: '198.19.251.1/24', dev: 'eth9', source: 'address' },
        { cidr: '198.18.10.1/24', dev: 'net1', source: 'address' },
      ],
    });
    await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    await guestWith('a', 'net1');
    const b = await networks.claimNics('b', { eth0: { type: 'nic', network: 'net1' } });
    await store.txn({
      compare: b.compare,
      success: [
        ...b.success,
        records.guest.at('b').putOp(guestRecord('b', { devices: b.devices, location: 'h2' })),
      ],
    });
    const bAddress = b.devices.eth0?.['ipv4.address'] ?? '';
    const forward = { listenAddress: '198.18.5.11', listenPort: 8080, target: 'b', targetPort: 80 };
    // A single host: nothing to check (no members).
    await networks.addForward('net1', forward);
    await networks.removeForward('net1', forward);
    await store.txn({ compare: [], success: [member('h1', '198.18.5.11'), member('h2', '198.18.5.12')] });
    for (const f of [
      forward,
      { ...forward, target: bAddress },
      { ...forward, listenAddress: '198.19.251.1' },
    ]) {
      await assert.rejects(networks.addForward('net1', f), (e: Error & { code?: string }) => {
        assert.equal(e.code, 'FailedPrecondition');
        assert.equal(
          e.message,
          `Guest b runs on member h2, but ${f.listenAddress} is member h1's: a forward reaches only the guests of the member holding its listen address; forward an address of h2`,
        );
        return true;
      });
    }
    assert.deepEqual((await records.network.at('net1').get(store))?.value.forwards, [], 'nothing written');
    // Its own member's address, a guest on the same member, or an address no member is known by: taken.
    await networks.addForward('net1', { ...forward, listenAddress: '198.18.5.12' });
    await networks.addForward('net1', { ...forward, listenPort: 8081, target: 'a' });
    await networks.addForward('net1', { ...forward, listenAddress: '203.0.113.7' });
    // The gateway address is on every member's bridge: it names no member.
    await networks.addForward('net1', { ...forward, listenAddress: '198.18.10.1' });
  });

  test('two members claiming an address at once never both get it: the later transaction fails, its next claim takes the next address', async () => {
    await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    const other = createNetworkService({ store, hostName: 'h2', convergeWaitMs: 2000 });
    // Both read the same free addresses before either writes.
    const [a, b] = await Promise.all([
      networks.claimNics('a', { eth0: { type: 'nic', network: 'net1' } }),
      other.claimNics('b', { eth0: { type: 'nic', network: 'net1' } }),
    ]);
    assert.equal(a.devices.eth0?.['ipv4.address'], '198.18.10.2');
    assert.equal(b.devices.eth0?.['ipv4.address'], '198.18.10.2');
    const put = (name: string, claims: typeof a) =>
      store.txn({
        compare: claims.compare,
        success: [
          ...claims.success,
          {
            type: 'put',
            key: keys.guest(name),
            value: JSON.stringify(guestRecord(name, { devices: claims.devices })),
          },
        ],
      });
    assert.equal((await put('a', a)).succeeded, true);
    assert.equal((await put('b', b)).succeeded, false, "h2's claim of the same address fails");
    const again = await other.claimNics('b', { eth0: { type: 'nic', network: 'net1' } });
    assert.equal(again.devices.eth0?.['ipv4.address'], '198.18.10.3');
    assert.equal((await put('b', again)).succeeded, true);
  });

  test('every network gets a VNI of its own, claimed with it; a deleted network frees it', async () => {
    await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    await networks.create({ name: 'net2', config: { 'ipv4.address': '198.18.11.1/24' } });
    const vniOf = async (name: string) => (await records.network.at(name).get(store))?.value.vni;
    assert.equal(await vniOf('net1'), 1);
    assert.equal(await vniOf('net2'), 2);
    assert.equal((await records.networkVni.at('2').get(store))?.value, 'net2');
    // A VNI taken meanwhile (another member's create): the next create picks another.
    await store.txn({ compare: [], success: [records.networkVni.at('3').putOp('elsewhere')] });
    await networks.create({ name: 'net3', config: { 'ipv4.address': '198.18.12.1/24' } });
    assert.equal(await vniOf('net3'), 4);
    await networks.delete('net1');
    assert.equal(await records.networkVni.at('1').get(store), undefined);
    await networks.create({ name: 'net4', config: { 'ipv4.address': '198.18.13.1/24' } });
    assert.equal(await vniOf('net4'), 1);
  });

  test('a network made before VNIs gets one from its own member', async () => {
    await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    const got = await records.network.at('net1').get(store);
    assert.ok(got);
    const { vni: _, ...old } = got.value;
    await store.txn({
      compare: [],
      success: [records.network.at('net1').putOp(old), records.networkVni.at('1').deleteOp()],
    });
    await controller.reconcile('net1');
    for (let i = 0; i < 100 && (await records.network.at('net1').get(store))?.value.vni === undefined; i++)
      await new Promise((r) => setTimeout(r, 20));
    assert.equal((await records.network.at('net1').get(store))?.value.vni, 1);
    assert.equal((await records.networkVni.at('1').get(store))?.value, 'net1');
  });

  test('on a cluster every network is tunnelled to the other members; a member that joins or leaves changes it', async () => {
    await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    assert.equal(backend.bridges.get('net1')?.tunnel, undefined, 'a single host has no tunnel');
    assert.equal(backend.bridges.get('net1')?.vni, 1);
    await store.txn({ compare: [], success: [member('h1', '198.18.5.11'), member('h2', '198.18.5.12')] });
    const tunnel = () => backend.bridges.get('net1')?.tunnel;
    for (let i = 0; i < 100 && tunnel()?.remotes.length !== 1; i++)
      await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(tunnel(), { vni: 1, local: '198.18.5.11', remotes: ['198.18.5.12'], nics: {} });
    await store.txn({ compare: [], success: [member('h3', '198.18.5.13')] });
    for (let i = 0; i < 100 && tunnel()?.remotes.length !== 2; i++)
      await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(tunnel()?.remotes, ['198.18.5.12', '198.18.5.13']);
    await store.delete(records.member.key('h2'));
    for (let i = 0; i < 100 && tunnel()?.remotes.length !== 1; i++)
      await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(tunnel()?.remotes, ['198.18.5.13']);
  });

  test("each other member's tunnel takes the NICs of the guests it runs, and of a guest moving from or to it; a hand-over and a move's end change it", async () => {
    await networks.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
    await store.txn({
      compare: [],
      success: [member('h1', '198.18.5.11'), member('h2', '198.18.5.12'), member('h3', '198.18.5.13')],
    });
    const a = await guestWith('a', 'net1');
    const b = await guestWith('b', 'net1');
    const pairOf = (c: typeof a) => {
      const d = c.devices.eth0 as { hwaddr?: string; 'ipv4.address'?: string };
      return { mac: String(d.hwaddr).toLowerCase(), ip: String(d['ipv4.address']) };
    };
    const nics = () => backend.bridges.get('net1')?.tunnel?.nics;
    // The claims' reconciles are over, and without a location a NIC is bound to no member.
    await controller.reconcile('net1');
    assert.deepEqual(nics(), {});
    await store.put(keys.guestLocation('a'), 'h1');
    await store.put(keys.guestLocation('b'), 'h2');
    const until = async (what: string, ok: () => boolean) => {
      for (let i = 0; i < 100 && !ok(); i++) await new Promise((r) => setTimeout(r, 20));
      assert.ok(ok(), `${what}: ${JSON.stringify(nics())}`);
    };
    // Locations written after the claims (a create writes them together, but the claims' watch may
    // be delivered first): a location's arrival binds its guest's NICs, with no other change.
    await until('a new location binds', () => nics()?.['198.18.5.12']?.[0]?.ip === pairOf(b).ip);
    assert.deepEqual(nics(), { '198.18.5.12': [pairOf(b)] }, "h1's own guest is not a remote's");
    // b begins a move to h3: its mark binds it to both ends before its hand-over.
    const mark = { guest: 'b', from: 'h2', to: 'h3', reason: 'test', startedAt: new Date(0).toISOString() };
    await store.put(keys.guestMove('b'), JSON.stringify(mark));
    await until('both ends while moving', () => nics()?.['198.18.5.13']?.[0]?.ip === pairOf(b).ip);
    assert.deepEqual(nics()?.['198.18.5.12'], [pairOf(b)]);
    // Handed over, then the mark goes: only h3.
    await store.put(keys.guestLocation('b'), 'h3');
    await store.delete(keys.guestMove('b'));
    await until('the destination only once the move ended', () => nics()?.['198.18.5.12'] === undefined);
    assert.deepEqual(nics(), { '198.18.5.13': [pairOf(b)] });
    // a handed to h2 (HA, say) without a mark: the flip alone rebinds it.
    await store.put(keys.guestLocation('a'), 'h2');
    await until('a location change', () => nics()?.['198.18.5.12']?.[0]?.ip === pairOf(a).ip);
  });

  test("a reconcile of a spanned network reads its guests' locations and moves from the watch, not by listing every guest's", async () => {
    const counted = countingStore(createMemoryStore());
    const net = fakeBackend();
    const c = createNetworkController({
      store: counted,
      backend: net,
      events: createEventBus(),
      log: silentLogger(),
      hostName: 'h1',
      checkIntervalMs: 60_000,
    });
    const service = createNetworkService({ store: counted, hostName: 'h1', convergeWaitMs: 2000 });
    try {
      await c.start();
      await service.create({ name: 'net1', config: { 'ipv4.address': '198.18.10.1/24' } });
      await counted.txn({ compare: [], success: [member('h1', '198.18.5.11'), member('h2', '198.18.5.12')] });
      // 3,000 guests of the cluster elsewhere, 200 of them moving: none on net1.
      for (let i = 0; i < 3000; i += 500) {
        await counted.txn({
          compare: [],
          success: Array.from({ length: 500 }, (_, j) => [
            { type: 'put' as const, key: keys.guestLocation(`o${i + j}`), value: 'h2' },
            ...(i + j < 200
              ? [
                  {
                    type: 'put' as const,
                    key: keys.guestMove(`o${i + j}`),
                    value: JSON.stringify({
                      guest: `o${i + j}`,
                      from: 'h2',
                      to: 'h1',
                      reason: 't',
                      startedAt: '',
                    }),
                  },
                ]
              : []),
          ]).flat(),
        });
      }
      const claims = await service.claimNics('g', { eth0: { type: 'nic', network: 'net1' } });
      await counted.txn({
        compare: claims.compare,
        success: [
          ...claims.success,
          records.guest.at('g').putOp(guestRecord('g', { devices: claims.devices, location: 'h2' })),
          records.guestLocation.at('g').putOp('h2'),
        ],
      });
      const d = claims.devices.eth0 as { 'ipv4.address'?: string };
      for (
        let i = 0;
        i < 100 && net.bridges.get('net1')?.tunnel?.nics['198.18.5.12']?.[0]?.ip !== d['ipv4.address'];
        i++
      )
        await new Promise((r) => setTimeout(r, 20));
      counted.reset();
      await c.reconcile('net1');
      assert.equal(net.bridges.get('net1')?.tunnel?.nics['198.18.5.12']?.[0]?.ip, d['ipv4.address']);
      assert.deepEqual(
        counted.reads.lists.filter((p) => p === keys.guestLocationPrefix || p === keys.guestMovePrefix),
        [],
        'no list of every location or move',
      );
      assert.ok(counted.reads.records < 20, `a reconcile read ${counted.reads.records} records`);
    } finally {
      await c.stop();
      await counted.close();
    }
  });
});
