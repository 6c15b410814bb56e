import { failedPrecondition } from '../core/errors.ts';
import type { ProcessRunner } from '../host/runner.ts';
import { overlaps, parseCidr } from './ipv4.ts';

/** A subnet the host already reaches, and through which interface. */
export interface HostSubnet {
  /** `198.19.250.1/24` (an address with its prefix) or `10.1.0.0/16` (a route's destination). */
  cidr: string;
  /** The interface that carries it (empty when a route names none, e.g. a blackhole). */
  dev: string;
  source: 'address' | 'route';
}

/** Subnets the host already reaches: its addresses and routes in every table (`ip -json`), the default route aside. */
export async function hostNetworks(runner: ProcessRunner): Promise<HostSubnet[]> {
  const out: HostSubnet[] = [];
  const addrs = await runner.run(['ip', '-json', '-4', 'addr', 'show']);
  for (const l of JSON.parse(addrs.stdout || '[]') as Array<{
    ifname?: string;
    addr_info?: Array<{ local: string; prefixlen: number }>;
  }>)
    for (const a of l.addr_info ?? [])
      out.push({ cidr: `${a.local}/${a.prefixlen}`, dev: l.ifname ?? '', source: 'address' });
  const routes = await runner.run(['ip', '-json', '-4', 'route', 'show', 'table', 'all']);
  for (const r of JSON.parse(routes.stdout || '[]') as Array<{ dst?: string; dev?: string }>) {
    if (!r.dst || r.dst === 'default') continue;
    out.push({ cidr: r.dst.includes('/') ? r.dst : `${r.dst}/32`, dev: r.dev ?? '', source: 'route' });
  }
  return out;
}

/** Subnets the host already reaches (see hostNetworks), as CIDRs. */
export async function hostSubnets(runner: ProcessRunner): Promise<string[]> {
  return (await hostNetworks(runner)).map((s) => s.cidr);
}

/** The first `198.18.N.1/24` (then 198.19.N.1/24) that collides with nothing the host or `taken` has. */
export async function pickDefaultSubnet(runner: ProcessRunner, taken: string[]): Promise<string> {
  const used = [...(await hostSubnets(runner)), ...taken.filter(Boolean)].flatMap((c) => {
    try {
      return [parseCidr(c)];
    } catch {
      return [];
    }
  });
  for (const second of [18, 19]) {
    for (let third = 0; third < 256; third++) {
      const candidate = `198.${second}.${third}.1/24`;
      const c = parseCidr(candidate);
      if (!used.some((u) => overlaps(u, c))) return candidate;
    }
  }
  throw failedPrecondition(
    'No free /24 left in 198.18.0.0/15 for the default network: create one with trivisor network create',
  );
}
