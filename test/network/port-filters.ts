import { spawnSync } from 'node:child_process';

/**
 * Whether a guest port has its anti-spoofing chain (`port-PORT` in its daemon's ports table,
 * decision 0068): read from every bridge-family chain of the host's nftables.
 */
export function hasPortFilter(port: string): boolean {
  const chains = spawnSync('nft', ['list', 'chains', 'bridge'], { encoding: 'utf8' }).stdout;
  return new RegExp(`chain port-${port}\\b`).test(chains);
}
