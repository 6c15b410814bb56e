// Decision 0057: the daemon raises the kernel settings thousands of ct guests need at start,
// never lowers one, and says so in `trivisor info --host`.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { DENSITY_SYSCTLS, sysctlPath } from '../../src/host/host-sysctls.ts';
import { startDaemon } from '../system/harness.ts';

test('the daemon raises the density settings at start and reports each in info --host', async () => {
  const d = await startDaemon();
  try {
    const info = JSON.parse(d.ok(['info', '--host', '--format', 'json'])) as {
      sysctls?: Array<{
        key: string;
        value: number | null;
        atLeast: number;
        changed: boolean;
        error?: string;
      }>;
    };
    assert.deepEqual(
      info.sysctls?.map((s) => s.key),
      DENSITY_SYSCTLS.map((s) => s.key),
      'every density setting is reported',
    );
    for (const s of info.sysctls ?? []) {
      assert.equal(s.error, undefined, `${s.key}: ${s.error}`);
      const now = Number(readFileSync(sysctlPath(s.key), 'utf8').trim());
      assert.ok(now >= s.atLeast, `${s.key} is ${now}, below ${s.atLeast}`);
      assert.equal(s.value, now, `${s.key}: the value reported is the kernel's`);
    }
    const text = d.ok(['info', '--host']);
    assert.match(text, /Kernel settings \(raised for dense hosts, never lowered\):/);
    assert.match(text, /kernel\.pid_max: /);
  } finally {
    await d.destroy();
  }
});
