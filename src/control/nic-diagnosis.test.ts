import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Model } from '../core/types.ts';
import type { GuestInterface } from '../drivers/guest-driver.ts';
import type { PortState } from '../network/network-backend.ts';
import { diagnoseNic, interfaceOf, type NicFacts } from './nic-diagnosis.ts';

const MAC = '02:00:00:00:00:05';
const facts = (
  model: Model,
  inGuest: NicFacts['inGuest'],
  port: PortState = 'up',
  more: Partial<NicFacts> = {},
): NicFacts => ({
  nic: 'eth0',
  device: { type: 'nic', network: 'net1', hwaddr: MAC, 'ipv4.address': '198.18.9.5' },
  model,
  port: { name: 'tv0123456789', state: port },
  inGuest,
  engineErrors: [],
  ...more,
});
const eth0 = (addresses: string[], up?: boolean): GuestInterface => ({
  name: 'eth0',
  mac: MAC,
  addresses,
  ...(up !== undefined && { up }),
});

describe('diagnoseNic()', () => {
  test('a NIC that is up holding its reserved address is fine, with what the guest holds', () => {
    for (const model of ['ct', 'vm', 'pvm'] as const) {
      assert.deepEqual(diagnoseNic(facts(model, eth0(['198.18.9.5'], model === 'ct' ? undefined : true))), {
        observed: { addresses: ['198.18.9.5'], source: 'guest' },
      });
    }
  });

  test('an address removed in the guest is no longer held, and the NIC is said to have none', () => {
    const v = diagnoseNic(facts('ct', eth0([])));
    assert.deepEqual(v.observed, { addresses: [], source: 'guest' });
    assert.equal(v.problem?.kind, 'no-address');
    assert.equal(v.problem?.definite, false);
    assert.match(
      v.problem?.text ?? '',
      /eth0 holds no IPv4 address \(its DHCP reservation is 198\.18\.9\.5\)/,
    );
  });

  test('an address on an interface that is down is not held (static ipv4.address configured but not up)', () => {
    const vm = diagnoseNic(facts('vm', eth0(['198.18.9.5'], false)));
    assert.deepEqual(vm.observed.addresses, []);
    assert.match(vm.problem?.text ?? '', /eth0 is down in the guest/);
    // ct: /proc has no flags; the veth's carrier says the guest's end is down.
    const ct = diagnoseNic(facts('ct', eth0(['198.18.9.5']), 'no-carrier'));
    assert.deepEqual(ct.observed.addresses, []);
    assert.match(ct.problem?.text ?? '', /down in the guest \(its veth tv0123456789 has no carrier\)/);
  });

  test('a host port that is gone is a definite problem naming the port', () => {
    const v = diagnoseNic(facts('vm', eth0(['198.18.9.5'], true), 'missing'));
    assert.equal(v.problem?.definite, true);
    assert.match(v.problem?.text ?? '', /cut off from network net1: its host port tv0123456789 is gone/);
    // The guest still holds its address: it is shown, and the warning says why it is useless.
    assert.deepEqual(v.observed.addresses, ['198.18.9.5']);
  });

  test('pvm: UML that could not open /dev/net/tun is named as the cause', () => {
    const v = diagnoseNic(
      facts('pvm', eth0([], false), 'no-carrier', {
        engineErrors: ['Failed to open /dev/net/tun, err = 13'],
      }),
    );
    assert.equal(v.problem?.kind, 'engine');
    assert.equal(v.problem?.definite, true);
    assert.equal(
      v.problem?.text,
      'NIC eth0 is down: UML could not open its tap tv0123456789 (UML says: Failed to open /dev/net/tun, err = 13)',
    );
  });

  test('vm and pvm: an interface missing in the guest is named by its MAC', () => {
    const v = diagnoseNic(facts('vm', 'absent'));
    assert.match(
      v.problem?.text ?? '',
      /missing in the guest: it has no interface with MAC 02:00:00:00:00:05/,
    );
    assert.match(diagnoseNic(facts('ct', 'absent')).problem?.text ?? '', /network namespace has no eth0/);
    assert.equal(v.problem?.definite, false, 'a hot-plugged device takes a moment to appear');
  });

  test('a tap nobody holds open is a link problem of the engine', () => {
    const v = diagnoseNic(facts('vm', eth0(['198.18.9.5'], true), 'no-carrier'));
    assert.match(v.problem?.text ?? '', /eth0 has no link: QEMU does not hold its tap tv0123456789 open/);
  });

  test('a guest that cannot be asked shows its DHCP lease, marked as such', () => {
    const foreign = diagnoseNic(
      facts('vm', 'unknown', 'up', { lease: '198.18.9.5', unknownExpected: true, unknownWhy: 'no agent' }),
    );
    assert.deepEqual(foreign, { observed: { addresses: ['198.18.9.5'], source: 'lease' } });
    const silent = diagnoseNic(
      facts('pvm', 'unknown', 'up', { lease: '198.18.9.5', unknownWhy: 'The agent did not answer' }),
    );
    assert.deepEqual(silent.observed, { addresses: ['198.18.9.5'], source: 'lease' });
    assert.match(silent.problem?.text ?? '', /addresses of NIC eth0 are unknown: The agent did not answer/);
    const none = diagnoseNic(facts('vm', 'unknown', 'up', { unknownExpected: true, unknownWhy: 'no agent' }));
    assert.deepEqual(none.observed, { addresses: [], source: 'none' });
    assert.match(none.problem?.text ?? '', /no DHCP lease, and the guest cannot be asked: no agent/);
  });

  test('an address other than the reservation is shown, with a warning that the network drops it', () => {
    const v = diagnoseNic(facts('ct', eth0(['198.18.9.77'])));
    assert.deepEqual(v.observed.addresses, ['198.18.9.77']);
    assert.match(v.problem?.text ?? '', /holds 198\.18\.9\.77, not its address 198\.18\.9\.5/);
  });
});

test('interfaceOf() matches by MAC when the guest reports MACs, by name otherwise', () => {
  const renamed: GuestInterface[] = [{ name: 'ens3', mac: MAC, addresses: [] }];
  assert.equal(interfaceOf(renamed, 'eth0', MAC.toUpperCase())?.name, 'ens3');
  assert.equal(
    interfaceOf([{ name: 'eth0', mac: '02:00:00:00:00:99', addresses: [] }], 'eth0', MAC),
    undefined,
  );
  assert.equal(interfaceOf([{ name: 'eth0', addresses: [] }], 'eth0', MAC)?.name, 'eth0');
});
