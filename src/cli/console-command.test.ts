import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createEscapeFilter } from './console-command.ts';

const feed = (chunks: string[]) => {
  const filter = createEscapeFilter();
  let sent = '';
  for (const chunk of chunks) {
    const { data, detach } = filter.feed(Buffer.from(chunk, 'latin1'));
    sent += data.toString('latin1');
    if (detach) return { sent, detach: true };
  }
  return { sent, detach: false };
};

test('Ctrl-a q detaches, sending what came before it', () => {
  assert.deepEqual(feed(['ls\r\x01q', 'never sent']), { sent: 'ls\r', detach: true });
});

test('Ctrl-a split across two reads still detaches', () => {
  assert.deepEqual(feed(['echo\x01', 'q']), { sent: 'echo', detach: true });
});

test('Ctrl-a Ctrl-a sends one Ctrl-a; Ctrl-a then another key sends both', () => {
  assert.deepEqual(feed(['\x01\x01x', '\x01b']), { sent: '\x01x\x01b', detach: false });
});

test('everything else passes through untouched, Ctrl-C and Ctrl-D included', () => {
  assert.deepEqual(feed(['\x03\x04\x1b[A q']), { sent: '\x03\x04\x1b[A q', detach: false });
});
