import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseHardLimits, readHardLimits } from './rlimits.ts';

test('parseHardLimits reads the hard column and unlimited as Infinity', () => {
  const text = `Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max processes             96365                96365                processes
Max open files            1024                 20000                files
`;
  const limits = parseHardLimits(text);
  assert.equal(limits.RLIMIT_NOFILE, 20_000);
  assert.equal(limits.RLIMIT_NPROC, 96_365);
  assert.equal(limits.RLIMIT_CPU, Number.POSITIVE_INFINITY);
});

test('readHardLimits reads this process limits', async () => {
  const limits = await readHardLimits();
  assert.ok((limits.RLIMIT_NOFILE ?? 0) > 0);
});
