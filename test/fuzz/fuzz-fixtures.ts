import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import type { Daemon } from '../system/harness.ts';
import type { FuzzFixtures } from './api-fuzz.ts';

/** Fixtures every fuzz run makes: ct guests (one running, one stopped with a snapshot), a network, a volume. */
export async function makeFuzzFixtures(d: Daemon, scratchDir: string): Promise<FuzzFixtures> {
  d.ok(['launch', 'busybox', 'fz-run']);
  d.ok(['launch', 'busybox', 'fz-stop']);
  d.ok(['stop', 'fz-stop', '--timeout', '5']);
  d.ok(['snapshot', 'create', 'fz-stop', 'snap0']);
  // The guest the fuzzer never names: it must still serve at the end.
  d.ok(['launch', 'busybox', 'keeper']);
  const routed = execFileSync('ip', ['-4', '-o', 'route', 'show', 'table', 'all'], { encoding: 'utf8' });
  const third = [241, 242, 243, 244, 245].find((n) => !routed.includes(`198.19.${n}.`));
  assert.ok(third !== undefined, 'a free /24 of 198.19.0.0/16 for the fuzz network');
  d.ok(['network', 'create', 'fzn', `ipv4.address=198.19.${third}.1/24`]);
  const vol = await d.api('POST', '/1.0/storage-pools/default/volumes/custom', {
    name: 'fzvol',
    config: { size: '1MiB' },
  });
  assert.equal(vol.status, 200, vol.text);
  return {
    guests: ['fz-run', 'fz-stop'],
    networks: ['fzn'],
    pools: ['default'],
    volumes: ['fzvol'],
    snapshots: ['snap0'],
    images: ['busybox'],
    scratchDir,
  };
}
