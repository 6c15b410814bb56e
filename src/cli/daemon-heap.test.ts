import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DAEMON_V8_FLAGS, daemonReexecArgv } from './daemon-heap.ts';

const node = '/opt/trivisor-node/bin/node';

test('a daemon started without the heap flags re-executes with them, its own argv kept', () => {
  assert.deepEqual(daemonReexecArgv(node, [], [node, '/repo/src/cli/main.ts', 'daemon'], undefined), [
    node,
    ...DAEMON_V8_FLAGS,
    '/repo/src/cli/main.ts',
    'daemon',
  ]);
  assert.deepEqual(
    daemonReexecArgv(
      node,
      ['--enable-source-maps'],
      [node, '/repo/bin/trivisor.mjs', 'daemon', '--listen', ':8443'],
      '',
    ),
    [
      node,
      '--enable-source-maps',
      ...DAEMON_V8_FLAGS,
      '/repo/bin/trivisor.mjs',
      'daemon',
      '--listen',
      ':8443',
    ],
  );
});

test('once re-executed it does not again: no loop', () => {
  const first = daemonReexecArgv(node, [], [node, 'main.ts', 'daemon'], undefined)!;
  // The new process sees the flags in its execArgv and the script and its arguments in argv.
  const execArgv = first.slice(1, 1 + DAEMON_V8_FLAGS.length);
  assert.equal(daemonReexecArgv(node, execArgv, [node, 'main.ts', 'daemon'], undefined), undefined);
});

test('a flag the administrator set, in either spelling or in NODE_OPTIONS, is kept as it is', () => {
  assert.equal(
    daemonReexecArgv(node, ['--max-semi-space-size=16'], [node, 'm.ts', 'daemon'], undefined),
    undefined,
  );
  assert.equal(
    daemonReexecArgv(node, ['--max_semi_space_size=16'], [node, 'm.ts', 'daemon'], undefined),
    undefined,
  );
  assert.equal(
    daemonReexecArgv(node, [], [node, 'm.ts', 'daemon'], '--max-semi-space-size=8 --trace-gc'),
    undefined,
  );
});
