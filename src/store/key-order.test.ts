import assert from 'node:assert/strict';
import { test } from 'node:test';
import { compareByteOrder, prefixEnd } from './key-order.ts';

test('compareByteOrder agrees with comparing UTF-8 bytes', () => {
  const samples = [
    '',
    'a',
    'ab',
    'b',
    'é',
    '\uFF5E',
    '\u{1F600}',
    '\u{1F600}a',
    '\uE000',
    '\uD7FF',
    '\u{10FFFF}',
  ];
  for (const a of samples) {
    for (const b of samples) {
      const expected = Math.sign(Buffer.compare(Buffer.from(a), Buffer.from(b)));
      assert.equal(
        Math.sign(compareByteOrder(a, b)),
        expected,
        `${JSON.stringify(a)} vs ${JSON.stringify(b)}`,
      );
    }
  }
});

test('prefixEnd is the least key above every key with the prefix', () => {
  assert.equal(prefixEnd('guests/'), 'guests0');
  assert.equal(prefixEnd('a\uD7FF'), 'a\uE000');
  assert.equal(prefixEnd('a\u{10FFFF}'), 'b');
  assert.equal(prefixEnd('\u{1F600}'), '\u{1F601}');
  assert.equal(prefixEnd(''), undefined);
  assert.equal(prefixEnd('\u{10FFFF}'), undefined);
});
