import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { keyPresses, qcodesOf } from './vm-display.ts';

describe('vm display keys', () => {
  test('ctrl-alt-del is one press of three keys; other combinations are qcodes joined by -', () => {
    assert.deepEqual(keyPresses({ combos: ['ctrl-alt-del'] }), [['ctrl', 'alt', 'delete']]);
    assert.deepEqual(keyPresses({ combos: ['Ctrl-Alt-F2', 'ret'] }), [['ctrl', 'alt', 'f2'], ['ret']]);
  });

  test('text is typed key by key on a US layout: shift for capitals and the upper row', () => {
    assert.deepEqual(keyPresses({ text: 'aB:_\n' }), [
      ['a'],
      ['shift', 'b'],
      ['shift', 'semicolon'],
      ['shift', 'minus'],
      ['ret'],
    ]);
    assert.deepEqual(qcodesOf('>'), ['shift', 'dot']);
    assert.deepEqual(qcodesOf('!'), ['shift', '1']);
    assert.deepEqual(qcodesOf(' '), ['spc']);
  });

  test('what no key types, and combinations that are no qcodes, are refused before anything is pressed', () => {
    assert.throws(() => keyPresses({ text: 'é' }), /cannot be typed on a US keyboard/);
    assert.throws(() => keyPresses({ combos: ['ctrl-alt-$'] }), /not a key combination/);
    assert.throws(() => keyPresses({ text: 'x'.repeat(4097) }), /longer than 4096/);
  });
});
