import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isTrivisorError } from '../core/errors.ts';
import { parseMemberAddress } from './cluster-files.ts';
import {
  decodeJoinToken,
  encodeJoinToken,
  newJoinSecret,
  secretDigest,
  secretMatches,
} from './join-token.ts';

const token = {
  name: 'm2',
  addresses: ['198.18.7.1:8444', '198.18.7.3:8444'],
  caFingerprint: 'ab'.repeat(32),
  secret: newJoinSecret(),
  expiresAt: '2030-01-01T00:00:00.000Z',
};

test('a join token is one line that reads back as it was made', () => {
  const text = encodeJoinToken(token);
  assert.match(text, /^trvjoin_[A-Za-z0-9_-]+$/);
  assert.deepEqual(decodeJoinToken(`  ${text}\n`), token);
});

test('anything that is not a whole token is one InvalidArgument line', () => {
  const text = encodeJoinToken(token);
  for (const bad of [
    '',
    'hello',
    text.slice(0, 40),
    `${text}!`,
    encodeJoinToken({ ...token, caFingerprint: 'short' }),
    encodeJoinToken({ ...token, addresses: [] }),
  ]) {
    assert.throws(
      () => decodeJoinToken(bad),
      (e: unknown) =>
        isTrivisorError(e) && e.code === 'InvalidArgument' && /not a join token/.test(e.message),
      bad,
    );
  }
});

test('only the secret itself matches its stored digest', () => {
  const digest = secretDigest(token.secret);
  assert.ok(secretMatches(token.secret, digest));
  assert.ok(!secretMatches(newJoinSecret(), digest));
  assert.ok(!secretMatches(token.secret, 'zz'));
});

test('member addresses: IP with an optional port (8444 by default), never a name or every address', () => {
  assert.deepEqual(parseMemberAddress('198.18.0.1'), {
    host: '198.18.0.1',
    port: 8444,
    address: '198.18.0.1:8444',
  });
  assert.deepEqual(parseMemberAddress('198.18.0.1:9000').address, '198.18.0.1:9000');
  assert.deepEqual(parseMemberAddress('[fd00::1]:9000'), {
    host: 'fd00::1',
    port: 9000,
    address: '[fd00::1]:9000',
  });
  assert.equal(parseMemberAddress('fd00::1').address, '[fd00::1]:8444');
  for (const bad of ['host.example', '198.18.0.1:0', '198.18.0.1:70000', '0.0.0.0', '::', '198.18.0.1:x']) {
    assert.throws(
      () => parseMemberAddress(bad),
      (e: unknown) => isTrivisorError(e) && e.code === 'InvalidArgument',
      bad,
    );
  }
});
