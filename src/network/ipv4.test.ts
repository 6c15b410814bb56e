import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  allocateAddress,
  assertUnicastMac,
  formatIpv4,
  networkFull,
  nicCapacity,
  overlaps,
  parseBitRate,
  parseCidr,
  parseGatewayCidr,
  parseIpv4,
  prefixFor,
  stableMac,
  subnetOf,
} from './ipv4.ts';

describe('ipv4', () => {
  test('parseCidr() reads the address, prefix, network and broadcast', () => {
    const c = parseCidr('198.18.10.1/24');
    assert.equal(c.prefixLength, 24);
    assert.equal(formatIpv4(c.network), '198.18.10.0');
    assert.equal(formatIpv4(c.broadcast), '198.18.10.255');
    assert.equal(subnetOf(c), '198.18.10.0/24');
  });

  test('parseCidr() refuses what is not an IPv4 CIDR', () => {
    for (const bad of [
      '198.18.10.1',
      '198.18.10.256/24',
      '198.18.10.1/33',
      'abc/24',
      '01.2.3.4/8',
      '1.2.3/8',
    ]) {
      assert.throws(() => parseCidr(bad), { code: 'InvalidArgument' }, bad);
    }
    assert.equal(parseIpv4('1.2.3.4.5'), undefined);
  });

  test('parseGatewayCidr() refuses network and broadcast addresses and odd prefixes', () => {
    assert.throws(() => parseGatewayCidr('198.18.10.0/24'), /network or broadcast/);
    assert.throws(() => parseGatewayCidr('198.18.10.255/24'), /network or broadcast/);
    assert.throws(() => parseGatewayCidr('198.18.10.1/31'), /prefix/);
    assert.equal(parseGatewayCidr('198.18.10.1/24').address, '198.18.10.1');
  });

  test('overlaps() compares whole subnets', () => {
    assert.equal(overlaps(parseCidr('198.18.0.1/16'), parseCidr('198.18.10.1/24')), true);
    assert.equal(overlaps(parseCidr('198.18.0.1/24'), parseCidr('198.18.1.1/24')), false);
    assert.equal(overlaps(parseCidr('198.18.0.1/23'), parseCidr('198.18.1.1/24')), true);
  });

  test('allocateAddress() takes the lowest free host address but the gateway', () => {
    const c = parseCidr('198.18.10.1/29');
    const used = new Set<number>();
    const got: string[] = [];
    for (;;) {
      const a = allocateAddress(c, used);
      if (a === undefined) break;
      used.add(a);
      got.push(formatIpv4(a));
    }
    assert.deepEqual(got, ['198.18.10.2', '198.18.10.3', '198.18.10.4', '198.18.10.5', '198.18.10.6']);
  });

  test('a /24 holds 253 NICs, a /21 2,045; the prefix for 2,000 guests is /21 (decision 0068)', () => {
    assert.equal(nicCapacity(parseCidr('198.18.10.1/24')), 253);
    assert.equal(nicCapacity(parseCidr('198.18.8.1/21')), 2045);
    assert.equal(nicCapacity(parseCidr('198.18.10.1/29')), 5);
    assert.equal(prefixFor(2000), 21);
    assert.equal(prefixFor(253), 24);
    assert.equal(prefixFor(254), 23);
    assert.equal(prefixFor(8), 24);
  });

  test('a full network says how many NICs its subnet holds and what to do', () => {
    const e = networkFull('lab', parseCidr('198.18.10.1/24'));
    assert.equal(e.code, 'FailedPrecondition');
    assert.equal(
      e.message,
      'Network lab has no free address left: its subnet 198.18.10.0/24 holds 253 NICs; put more guests on a network with a shorter prefix (a /21 holds 2045)',
    );
  });

  test('stableMac() is stable per guest and NIC, unicast and locally administered', () => {
    assert.equal(stableMac('a', 'eth0'), stableMac('a', 'eth0'));
    assert.notEqual(stableMac('a', 'eth0'), stableMac('a', 'eth1'));
    assert.notEqual(stableMac('a', 'eth0'), stableMac('b', 'eth0'));
    assert.match(stableMac('a', 'eth0'), /^02(:[0-9a-f]{2}){5}$/);
    assertUnicastMac(stableMac('a', 'eth0'));
    assert.throws(() => assertUnicastMac('01:00:00:00:00:01'), { code: 'InvalidArgument' });
    assert.throws(() => assertUnicastMac('02:00:00:00:00'), { code: 'InvalidArgument' });
  });

  test('parseBitRate() reads Incus-style bandwidths', () => {
    assert.equal(parseBitRate('10Mbit'), 10_000_000);
    assert.equal(parseBitRate('500kbit'), 500_000);
    assert.equal(parseBitRate('1.5Gbit'), 1_500_000_000);
    for (const bad of ['10', '10MB', '-1Mbit', '1bit', 'fast']) {
      assert.throws(() => parseBitRate(bad), { code: 'InvalidArgument' }, bad);
    }
  });
});
