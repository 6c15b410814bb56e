import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  addressHost,
  fdbChanges,
  floodDestinations,
  gatewayMac,
  MAX_VNI,
  nicsByEnd,
  pickVni,
  SPANNED_MSS,
  SPANNED_MTU,
  spannedMss,
  spannedMtu,
  tunnelEnds,
  tunnelRuleset,
  vxlanDevice,
  vxlanInputRules,
} from './vxlan.ts';

const MEMBERS = [
  { name: 'm2', address: '198.18.5.12:8443' },
  { name: 'm1', address: '198.18.5.11:8443' },
  { name: 'm3', address: '198.18.5.13' },
];

describe('VXLAN between members', () => {
  test("a member's tunnel ends: its own cluster IP and every other member's, sorted, ports dropped", () => {
    assert.deepEqual(tunnelEnds(MEMBERS, 'm1'), {
      local: '198.18.5.11',
      remotes: ['198.18.5.12', '198.18.5.13'],
    });
    assert.deepEqual(tunnelEnds(MEMBERS, 'm3'), {
      local: '198.18.5.13',
      remotes: ['198.18.5.11', '198.18.5.12'],
    });
    assert.deepEqual(tunnelEnds([MEMBERS[1] as (typeof MEMBERS)[number]], 'm1'), {
      local: '198.18.5.11',
      remotes: [],
    });
  });

  test('a host that is not a member has no tunnel', () => {
    assert.equal(tunnelEnds(MEMBERS, 'elsewhere'), undefined);
    assert.equal(tunnelEnds([], 'm1'), undefined);
  });

  test('member addresses: IPv4 with or without port, IPv6 in brackets', () => {
    assert.equal(addressHost('198.18.5.11:8443'), '198.18.5.11');
    assert.equal(addressHost('198.18.5.11'), '198.18.5.11');
    assert.equal(addressHost('[fd00::1]:8443'), 'fd00::1');
  });

  test('the FDB follows the members: a joined member is added, a departed one removed, the rest kept', () => {
    assert.deepEqual(fdbChanges(['198.18.5.12'], ['198.18.5.12', '198.18.5.13']), {
      add: ['198.18.5.13'],
      remove: [],
    });
    assert.deepEqual(fdbChanges(['198.18.5.12', '198.18.5.13'], ['198.18.5.13']), {
      add: [],
      remove: ['198.18.5.12'],
    });
    assert.deepEqual(fdbChanges(['198.18.5.12'], ['198.18.5.12']), { add: [], remove: [] });
  });

  test('flood destinations are the all-zero entries of bridge -json fdb; learned MACs are not', () => {
    const json = JSON.stringify([
      { mac: '00:00:00:00:00:00', dst: '198.18.5.12', flags: ['self'], state: 'permanent' },
      { mac: '02:aa:bb:cc:dd:ee', dst: '198.18.5.12', flags: ['self'] },
      { mac: '00:00:00:00:00:00', dst: '198.18.5.13', flags: ['self'], state: 'permanent' },
      { mac: '33:33:00:00:00:01', flags: ['self'], state: 'permanent' },
    ]);
    assert.deepEqual(floodDestinations(json), ['198.18.5.12', '198.18.5.13']);
    assert.deepEqual(floodDestinations(''), []);
  });

  test('VNIs: the lowest free one from 1; none when all 2^24-1 are taken', () => {
    assert.equal(pickVni([]), 1);
    assert.equal(pickVni([1, 2, 4]), 3);
    assert.equal(pickVni([2, 3]), 1);
    const all = Array.from({ length: MAX_VNI }, (_, i) => i + 1);
    assert.equal(pickVni(all), undefined);
  });

  test('the gateway MAC is the same on every member (name and VNI only); the device name fits 15 characters', () => {
    assert.equal(gatewayMac('net0', 7), gatewayMac('net0', 7));
    assert.notEqual(gatewayMac('net0', 7), gatewayMac('net0', 8));
    assert.match(gatewayMac('net0', 7), /^02(:[0-9a-f]{2}){5}$/);
    assert.match(vxlanDevice('/var/lib/trivisor', 'a-fifteen-chars'), /^vx[0-9a-f]{10}$/);
    assert.notEqual(vxlanDevice('/a', 'net0'), vxlanDevice('/b', 'net0'));
  });

  test('VXLAN is taken from the other members only; with none, from nobody', () => {
    assert.equal(
      vxlanInputRules(['198.18.5.12', '198.18.5.13'], {})[0],
      '    udp dport 4789 ip saddr != { 198.18.5.12, 198.18.5.13 } drop',
    );
    assert.deepEqual(vxlanInputRules([], {}), ['    udp dport 4789 drop']);
  });

  test("each member's VXLAN carries only the MAC and address pairs of the NICs it runs; one that runs none, no IPv4 or ARP", () => {
    const rules = vxlanInputRules(['198.18.5.12', '198.18.5.13'], {
      '198.18.5.12': [
        { mac: '52:54:00:AA:BB:CC', ip: '198.18.10.5' },
        { mac: '02:00:00:00:00:02', ip: '198.18.10.2' },
      ],
    });
    assert.deepEqual(rules, [
      '    udp dport 4789 ip saddr != { 198.18.5.12, 198.18.5.13 } drop',
      // Inner ether type at byte 28 of the UDP payload's frame; source MAC at 22, IPv4 source at 42.
      '    udp dport 4789 ip saddr 198.18.5.12 @th,224,16 0x0800 @th,176,48 . @th,336,32 != { 0x020000000002 . 0xc6120a02, 0x525400aabbcc . 0xc6120a05 } drop',
      // ARP: sender MAC at 38, sender address at 44.
      '    udp dport 4789 ip saddr 198.18.5.12 @th,224,16 0x0806 @th,304,48 . @th,352,32 != { 0x020000000002 . 0xc6120a02, 0x525400aabbcc . 0xc6120a05 } drop',
      '    udp dport 4789 ip saddr 198.18.5.13 @th,224,16 { 0x0800, 0x0806 } drop',
    ]);
  });

  test("a member's rules judge their own network's VXLAN only (its VNI): another spanned network's frames from that member are not theirs to drop", () => {
    const rules = vxlanInputRules(['198.18.5.12'], {}, { vni: 9 });
    assert.deepEqual(rules, [
      // From any non-member, whatever the VNI: the same rule in every network's table.
      '    udp dport 4789 ip saddr != { 198.18.5.12 } drop',
      // The VNI at byte 12 of the UDP payload (UDP 8, VXLAN flags 1, reserved 3).
      '    udp dport 4789 ip saddr 198.18.5.12 @th,96,24 9 @th,224,16 { 0x0800, 0x0806 } drop',
    ]);
  });

  test("a NIC is bound to its guest's member, and to both ends while its guest moves", () => {
    const claims = [
      { guest: 'a', mac: '02:00:00:00:00:0A', ip: '198.18.10.10' },
      { guest: 'b', mac: '02:00:00:00:00:0b', ip: '198.18.10.11' },
      { guest: 'c', mac: '02:00:00:00:00:0c', ip: '198.18.10.12' },
      { guest: 'lost', mac: '02:00:00:00:00:0d', ip: '198.18.10.13' },
    ];
    const locations = new Map([
      ['a', 'm1'],
      ['b', 'm2'],
      ['c', 'm2'],
      ['lost', 'gone'],
    ]);
    assert.deepEqual(nicsByEnd({ claims, members: MEMBERS, locations, moves: [] }), {
      '198.18.5.11': [{ mac: '02:00:00:00:00:0a', ip: '198.18.10.10' }],
      '198.18.5.12': [
        { mac: '02:00:00:00:00:0b', ip: '198.18.10.11' },
        { mac: '02:00:00:00:00:0c', ip: '198.18.10.12' },
      ],
    });
    // c moves from m2 to m3: its pair is taken from both until its move's mark goes.
    const moving = nicsByEnd({
      claims,
      members: MEMBERS,
      locations,
      moves: [{ guest: 'c', from: 'm2', to: 'm3' }],
    });
    assert.deepEqual(moving['198.18.5.13'], [{ mac: '02:00:00:00:00:0c', ip: '198.18.10.12' }]);
    assert.equal(moving['198.18.5.12']?.length, 2);
    // Handed over (location m3) and the mark still there: still both.
    const handed = nicsByEnd({
      claims,
      members: MEMBERS,
      locations: new Map([...locations, ['c', 'm3']]),
      moves: [{ guest: 'c', from: 'm2', to: 'm3' }],
    });
    assert.deepEqual(handed, moving);
  });

  test('the tunnel port: claimed MAC and address pairs only, nothing of the gateway or DHCP crosses, the host neither sends nor takes, MSS clamped', () => {
    const text = tunnelRuleset({
      network: 'net0',
      device: 'vx0123456789',
      gateway: '198.18.9.1',
      hosts: [
        { mac: '02:00:00:00:00:03', ip: '198.18.9.3' },
        { mac: '02:00:00:00:00:02', ip: '198.18.9.2' },
      ],
    });
    assert.match(text, /table bridge trivisor-vx-net0/);
    assert.ok(
      text.includes(
        'iifname "vx0123456789" ether type ip ether saddr . ip saddr != { 02:00:00:00:00:02 . 198.18.9.2, 02:00:00:00:00:03 . 198.18.9.3 } drop',
      ),
      text,
    );
    assert.ok(text.includes('iifname "vx0123456789" arp saddr ether . arp saddr ip != {'), text);
    assert.ok(text.includes('iifname "vx0123456789" ether type != { ip, arp } drop'), text);
    for (const dir of ['iifname', 'oifname']) {
      assert.ok(text.includes(`${dir} "vx0123456789" arp daddr ip 198.18.9.1 drop`), text);
      assert.ok(text.includes(`${dir} "vx0123456789" udp dport { 67, 68 } drop`), text);
      assert.ok(
        text.includes(`${dir} "vx0123456789" tcp flags syn tcp option maxseg size > ${SPANNED_MSS}`),
        text,
      );
    }
    assert.match(text, /hook input priority filter; policy accept;\n {4}iifname "vx0123456789" drop/);
    assert.match(text, /hook output priority filter; policy accept;\n {4}oifname "vx0123456789" drop/);
    assert.equal(SPANNED_MTU, 1450);
    assert.equal(SPANNED_MSS, 1410);
  });

  test('a tunnel with no claimed NICs takes nothing in', () => {
    const text = tunnelRuleset({ network: 'net0', device: 'vx0', gateway: '198.18.9.1', hosts: [] });
    assert.ok(text.includes('iifname "vx0" drop'), text);
    assert.ok(!text.includes('saddr . ip saddr'), text);
  });

  test('over IPv6 cluster addresses: ends in canonical form whatever the records spell, MTU 1430 (20 bytes more header), MSS 1390, the rules in ip6 terms', () => {
    const v6 = [
      { name: 'm1', address: '[fd42:1::11]:8443' },
      { name: 'm2', address: '[FD42:1:0:0::0012]:8443' },
      { name: 'm3', address: '2001:db8::13' },
    ];
    assert.deepEqual(tunnelEnds(v6, 'm1'), { local: 'fd42:1::11', remotes: ['2001:db8::13', 'fd42:1::12'] });
    assert.equal(addressHost('[fd42:1:0::0012]'), 'fd42:1::12');
    assert.equal(addressHost('198.18.5.11:8443'), '198.18.5.11');
    assert.equal(spannedMtu('198.18.5.11'), 1450);
    assert.equal(spannedMtu('fd42:1::11'), 1430);
    assert.equal(spannedMss(1430), 1390);
    const text = tunnelRuleset({ network: 'n', device: 'vx0', gateway: '198.18.9.1', hosts: [], mtu: 1430 });
    assert.ok(
      text.includes(
        'oifname "vx0" tcp flags syn tcp option maxseg size > 1390 tcp option maxseg size set 1390',
      ),
      text,
    );
    assert.deepEqual(
      vxlanInputRules(
        ['fd42:1::12', 'fd42:1::13'],
        { 'fd42:1::12': [{ mac: '02:00:00:00:00:05', ip: '198.18.10.5' }] },
        { family: 'ip6', vni: 7 },
      ),
      [
        '    udp dport 4789 ip6 saddr != { fd42:1::12, fd42:1::13 } drop',
        // The same offsets: @th counts from the UDP header whatever the outer header's size.
        '    udp dport 4789 ip6 saddr fd42:1::12 @th,96,24 7 @th,224,16 0x0800 @th,176,48 . @th,336,32 != { 0x020000000005 . 0xc6120a05 } drop',
        '    udp dport 4789 ip6 saddr fd42:1::12 @th,96,24 7 @th,224,16 0x0806 @th,304,48 . @th,352,32 != { 0x020000000005 . 0xc6120a05 } drop',
        '    udp dport 4789 ip6 saddr fd42:1::13 @th,96,24 7 @th,224,16 { 0x0800, 0x0806 } drop',
      ],
    );
  });
});
