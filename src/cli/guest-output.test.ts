import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Guest } from '../core/types.ts';
import { guestInfo, guestTable } from './output.ts';

const guest = (state: Partial<Guest['state']>): Guest => ({
  name: 'p1',
  project: 'default',
  model: 'pvm',
  status: 'Running',
  image: 'f'.repeat(64),
  imageAlias: 'busybox',
  config: {},
  host: 'h1',
  createdAt: '2026-01-01T00:00:00.000Z',
  devices: {
    eth0: { type: 'nic', network: 'n1', hwaddr: '02:00:00:00:00:05', 'ipv4.address': '198.18.9.5' },
  },
  state: { pid: 7, startedAt: null, uptimeSeconds: null, usage: null, restartCount: 0, ...state },
});

test('info shows the warnings of a NIC that did not come up, and no address the guest does not hold', () => {
  const warning =
    'NIC eth0 is down: UML could not open its tap tv0123456789 (UML says: Failed to open /dev/net/tun, err = 13)';
  const g = guest({
    addresses: [],
    warnings: [warning],
    nics: {
      eth0: {
        network: 'n1',
        hwaddr: '02:00:00:00:00:05',
        hostName: 'tv0123456789',
        addresses: [],
        warning,
        counters: null,
      },
    },
  });
  const text = guestInfo(g);
  assert.match(text, new RegExp(`\\nWarning: ${warning.replace(/[()/.]/g, '\\$&')}\\n`));
  assert.match(text, /\n {4}addresses: -\n/);
  assert.match(
    guestTable([g]),
    /\np1\s+pvm\s+Running\s+busybox\s+7\s+-\s+-\s+-\nWarning: p1: NIC eth0 is down: /,
  );
});

test('the list shows a failed scheduled backup under the table, one line per warning', () => {
  const failed = 'The scheduled backup of 2026-12-05T03:00:00Z failed on m1: no space left on device';
  const table = guestTable([guest({ warnings: [failed] }), { ...guest({}), name: 'p2' }]);
  assert.match(
    table,
    /\np2\s.*\nWarning: p1: The scheduled backup of 2026-12-05T03:00:00Z failed on m1: no space left on device\n$/,
  );
  assert.doesNotMatch(guestTable([guest({})]), /Warning/);
});

test('info says when addresses come from a DHCP lease because the guest cannot be asked', () => {
  const g = guest({
    addresses: ['198.18.9.5'],
    nics: {
      eth0: {
        network: 'n1',
        hwaddr: '02:00:00:00:00:05',
        hostName: 'tv0123456789',
        addresses: ['198.18.9.5'],
        addressSource: 'lease',
        counters: null,
      },
    },
  });
  assert.match(guestInfo(g), /addresses: 198\.18\.9\.5 \(its DHCP lease: the guest cannot be asked\)\n/);
  assert.doesNotMatch(guestInfo(g), /Warning/);
});

test('the list has a LOCATION column on a cluster (guests on several members), not on a single host', () => {
  const here = { ...guest({}), location: 'h1' };
  assert.doesNotMatch(guestTable([here, { ...here, name: 'p2' }]), /LOCATION/);
  const table = guestTable([here, { ...here, name: 'p2', location: 'm2' }]);
  assert.match(table, /^NAME\s.*\sLOCATION\n/);
  assert.match(table, /\np2\s.*\sm2\n$/);
});
