import { spawnSync } from 'node:child_process';

/**
 * Whether a guest port has its anti-spoofing filter (decision 0068, amended 2026-12-07): its name
 * in the `guest_ports` set of a daemon's ports table, and its MAC and address in `port_mac` and
 * `port_ip`; read from every bridge-family set of the host's nftables.
 */
export function hasPortFilter(port: string): boolean {
  const out = spawnSync('nft', ['-j', 'list', 'sets', 'bridge'], { encoding: 'utf8' }).stdout;
  const sets = (
    JSON.parse(out || '{"nftables":[]}') as {
      nftables: Array<{ set?: { name: string; table: string; elem?: unknown[] } }>;
    }
  ).nftables.flatMap((o) => (o.set?.table.startsWith('trivisor-ports-') ? [o.set] : []));
  const holds = (table: string, name: string) =>
    (sets.find((s) => s.table === table && s.name === name)?.elem ?? []).some(
      (e) => e === port || (e as { concat?: unknown[] })?.concat?.[0] === port,
    );
  return [...new Set(sets.map((s) => s.table))].some(
    (t) => holds(t, 'guest_ports') && holds(t, 'port_mac') && holds(t, 'port_ip'),
  );
}
