import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TrivisorError } from '../core/errors.ts';
import { assertSameFamily } from './address-checks.ts';

test('a host joins with an address of its cluster family: IPv4 among IPv4, IPv6 (bracketed, with a port, or bare) among IPv6', () => {
  assertSameFamily('198.18.5.13', [
    { name: 'm1', address: '198.18.5.11:8443' },
    { name: 'm2', address: '198.18.5.12' },
  ]);
  assertSameFamily('fd42:1::13', [
    { name: 'm1', address: '[fd42:1::11]:8443' },
    { address: 'fd42:1::12' },
    { address: '[2001:db8::5]' },
  ]);
  assertSameFamily('fd42:1::13', []);
});

test('a host of the other family is refused in one line, naming a member and the family to give (FailedPrecondition)', () => {
  const refused = (host: string, members: Array<{ name?: string; address: string }>) => {
    try {
      assertSameFamily(host, members);
    } catch (e) {
      assert.ok(e instanceof TrivisorError, String(e));
      return e;
    }
    assert.fail(`${host} was taken among ${JSON.stringify(members)}`);
  };
  const v6 = refused('fd42:1::13', [{ name: 'm1', address: '198.18.5.11:8443' }]);
  assert.equal(v6.code, 'FailedPrecondition');
  assert.match(
    v6.message,
    /members are on IPv4 addresses \(m1 at 198\.18\.5\.11:8443\) and fd42:1::13 is not/,
  );
  assert.match(v6.message, /give --address as an IPv4 address/);
  assert.doesNotMatch(v6.message, /\n/);
  const v4 = refused('198.18.5.13', [
    { name: 'm1', address: '[fd42:1::11]:8443' },
    { name: 'm2', address: '[fd42:1::12]:8443' },
  ]);
  assert.match(
    v4.message,
    /on IPv6 addresses \(m1 at \[fd42:1::11\]:8443\) and 198\.18\.5\.13 is not: .*an IPv6 address/,
  );
  // Token addresses carry no names.
  assert.match(refused('198.18.5.13', [{ address: '[fd42:1::11]:8443' }]).message, /\(\[fd42:1::11\]:8443\)/);
});
