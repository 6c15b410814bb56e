import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { FAILPOINTS, parseFailpoints } from './failpoints.ts';

test('parseFailpoints arms the known names and reports the others', () => {
  assert.deepEqual(parseFailpoints(undefined), { armed: new Set(), unknown: [] });
  assert.deepEqual(parseFailpoints(''), { armed: new Set(), unknown: [] });
  const p = parseFailpoints(' move.receive.files-made , nope,,toString');
  assert.deepEqual([...p.armed], ['move.receive.files-made']);
  assert.deepEqual(p.unknown, ['nope', 'toString']);
  assert.ok(Object.keys(FAILPOINTS).length > 0);
});

/** The process state letter of `pid` (R, S, T…), from /proc/PID/stat. */
const stateOf = (pid: number) => readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '')[0];

/** Runs a child that reaches `move.receive.files-made` with TRIVISOR_FAILPOINTS=`armed`. */
function child(armed: string) {
  const script = [
    `import { failpoint } from ${JSON.stringify(new URL('./failpoints.ts', import.meta.url).href)};`,
    "failpoint('move.receive.files-made', { warn: (o, m) => console.log(m, JSON.stringify(o)) }, { guest: 'g' });",
    "console.log('after');",
  ].join('\n');
  return spawn(process.execPath, ['--input-type=module', '-e', script], {
    env: { ...process.env, TRIVISOR_FAILPOINTS: armed },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
}

test('an armed failpoint stops the process there (SIGSTOP) after its log; continued, it goes on', async () => {
  const c = child('move.receive.files-made');
  let out = '';
  c.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const exited = new Promise<number | null>((r) => c.once('exit', (code) => r(code)));
  try {
    const pid = c.pid as number;
    for (let i = 0; i < 600 && stateOf(pid) !== 'T'; i++) await sleep(50);
    assert.equal(stateOf(pid), 'T', 'the child stopped itself');
    c.kill('SIGCONT');
    assert.equal(await exited, 0);
    assert.equal(
      out,
      'failpoint reached: stopping {"guest":"g","failpoint":"move.receive.files-made"}\nafter\n',
    );
  } finally {
    c.kill('SIGKILL');
  }
});

test('a failpoint not armed is passed by', async () => {
  const c = child('something.else');
  let out = '';
  c.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const code = await new Promise<number | null>((r) => c.once('exit', (x) => r(x)));
  assert.equal(code, 0);
  assert.equal(out, 'after\n');
});
