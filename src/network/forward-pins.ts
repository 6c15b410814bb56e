import { projectOfRecord } from '../core/projects.ts';
import type { GuestSpec, NetworkForward, NetworkSpec } from '../core/types.ts';
import { addressHost } from './vxlan.ts';

/**
 * Port forwards that pin a guest to its member (issue 13 §2, decision 0075). A forward listens on
 * a member's address and reaches only the guests of that member (decision 0050: the gateway is
 * distributed, the guest's replies never pass the member that did the DNAT), so a guest that a
 * working forward points at cannot move without losing it. Pure: the callers read the records.
 */

/** A forward of network `network` that points at a guest. */
export interface ForwardPin {
  network: string;
  forward: NetworkForward;
}

/** The member whose cluster address `address` is, from the members' records; undefined for any other address. */
export function memberByClusterAddress(
  members: ReadonlyArray<{ name: string; address: string }>,
): (address: string) => string | undefined {
  const byHost = new Map(members.map((m) => [addressHost(m.address), m.name]));
  return (address) => byHost.get(address);
}

/**
 * The forwards that pin guest `guest` where it runs: those of a network of its project whose
 * target is the address one of its NICs holds on that network, and whose listen address is its
 * member's (`memberOf` tells; an address it cannot place pins nothing, as the forward's own check
 * takes such an address). A forward left on another member (made before that check) already
 * reaches nothing, and does not hold the guest back.
 */
export function forwardPins(
  guest: Pick<GuestSpec, 'name' | 'project' | 'location' | 'devices'>,
  networks: readonly NetworkSpec[],
  memberOf: (address: string) => string | undefined,
): ForwardPin[] {
  const project = projectOfRecord(guest);
  const out: ForwardPin[] = [];
  for (const n of networks) {
    if (projectOfRecord(n) !== project || n.deleting) continue;
    const addresses = new Set(
      Object.values(guest.devices ?? {})
        .filter((d) => d.type === 'nic' && d.network === n.name)
        .map((d) => d['ipv4.address'])
        .filter((a): a is string => a !== undefined),
    );
    if (addresses.size === 0) continue;
    for (const f of n.forwards ?? []) {
      if (addresses.has(f.targetAddress) && memberOf(f.listenAddress) === guest.location) {
        out.push({ network: n.name, forward: f });
      }
    }
  }
  return out;
}

const said = (p: ForwardPin) =>
  `${p.network} ${p.forward.listenAddress}:${p.forward.listenPort}/${p.forward.protocol} → ${p.forward.targetAddress}:${p.forward.targetPort}`;

const removeCommand = (p: ForwardPin) =>
  `trivisor network forward remove ${p.network} ${p.forward.listenAddress}:${p.forward.listenPort}${p.forward.protocol === 'udp' ? ' --protocol udp' : ''}`;

/** Why the planners (rebalancer, power manager) leave guest `guest` on `member`: one line. */
export function pinNote(guest: string, member: string, pins: readonly ForwardPin[]): string {
  return `${guest} is pinned to ${member} by port forward${pins.length === 1 ? '' : 's'} ${pins.map(said).join(', ')} (a forward reaches only the guests of its listen address's member)`;
}

/** The mover's one-line refusal of a move of `guest` from `member` to `target`, saying what to do. */
export function pinRefusal(
  guest: string,
  move: { from: string; to: string },
  pins: readonly ForwardPin[],
): string {
  const first = pins[0];
  const one = pins.length === 1;
  return `Guest ${guest} cannot move to ${move.to}: port forward${one ? '' : 's'} ${pins.map(said).join(', ')} listen${one ? 's' : ''} on member ${move.from}'s address and would no longer reach it; remove ${one ? 'it' : 'them'}${first ? ` (${removeCommand(first)}${one ? '' : ', …'})` : ''}, move the guest, and forward an address of ${move.to} instead`;
}
