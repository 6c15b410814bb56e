import assert from 'node:assert/strict';
import { test } from 'node:test';
import { leasesWithoutConflicts } from './dnsmasq-config.ts';

const LEASES = [
  '1795515000 02:ee:26:2f:a7:bb 198.18.211.5 mr *',
  '1795515000 02:02:6e:bb:f3:c3 198.18.211.6 ml 01:02:02:6e:bb:f3:c3',
  '1795515000 02:aa:aa:aa:aa:aa 198.18.211.7 gone *',
  '',
].join('\n');

test('a lease of an address now reserved for another MAC is dropped; others stay', () => {
  const kept = leasesWithoutConflicts(LEASES, [
    { mac: '02:02:6E:BB:F3:C3', ip: '198.18.211.6' },
    { mac: '02:02:6e:bb:f3:c4', ip: '198.18.211.5' },
  ]);
  assert.equal(
    kept,
    [
      '1795515000 02:02:6e:bb:f3:c3 198.18.211.6 ml 01:02:02:6e:bb:f3:c3',
      '1795515000 02:aa:aa:aa:aa:aa 198.18.211.7 gone *',
      '',
    ].join('\n'),
  );
});

test('without conflicts the lease file is left as it is', () => {
  assert.equal(leasesWithoutConflicts(LEASES, [{ mac: '02:ee:26:2f:a7:bb', ip: '198.18.211.5' }]), LEASES);
  assert.equal(leasesWithoutConflicts('', [{ mac: '02:ee:26:2f:a7:bb', ip: '198.18.211.5' }]), '');
});
