import type { Model, NicDevice, ObservedNic } from '../core/types.ts';
import type { GuestInterface } from '../drivers/guest-driver.ts';
import type { PortState } from '../network/network-backend.ts';

/** Everything known about one NIC of a running guest at one observation. */
export interface NicFacts {
  nic: string;
  device: NicDevice;
  model: Model;
  /** The NIC's host port (veth end or tap) and whether it has carrier. */
  port: { name: string; state: PortState };
  /**
   * The guest's own view: its interface for the NIC (matched by MAC, else by name), `absent`
   * when it has none, or `unknown` when the guest could not be asked (`unknownWhy` says why).
   */
  inGuest: GuestInterface | 'absent' | 'unknown';
  unknownWhy?: string;
  /** Whether not being able to ask is expected (a vm of another OS has no agent). */
  unknownExpected?: boolean;
  /** The NIC's unexpired DHCP lease, if any (used only when the guest could not be asked). */
  lease?: string;
  /** What the guest's engine logged about NICs since it booted (UML's tuntap errors). */
  engineErrors: string[];
}

/** Something wrong with a NIC: `kind` says which, for telling whether it lasted; `text` names the cause. */
export interface NicProblem {
  kind: string;
  text: string;
  /**
   * True when the cause cannot be the guest still booting (its host port is gone, the engine
   * said it failed): reported once it lasts, without waiting for the boot's grace period.
   */
  definite: boolean;
}

/** What one observation says of a NIC: the addresses it holds, and what is wrong with it. */
export interface NicVerdict {
  observed: Omit<ObservedNic, 'warning'>;
  problem?: NicProblem;
}

const ENGINE: Record<Model, string> = { ct: 'runc', vm: 'QEMU', pvm: 'UML' };

/**
 * Decides what a NIC holds and what is wrong with it (decision 15). An address counts as held
 * only on an interface that is up: a configured address on an interface that is down is not.
 */
export function diagnoseNic(f: NicFacts): NicVerdict {
  const { nic, port } = f;
  const reserved = f.device['ipv4.address'];
  const mac = f.device.hwaddr ?? '';
  const because = f.engineErrors.length > 0 ? ` (${ENGINE[f.model]} says: ${f.engineErrors.join('; ')})` : '';

  let observed: NicVerdict['observed'];
  let up: boolean | undefined;
  if (f.inGuest === 'unknown') {
    observed =
      f.lease !== undefined && port.state === 'up'
        ? { addresses: [f.lease], source: 'lease' }
        : { addresses: [], source: 'none' };
  } else if (f.inGuest === 'absent') {
    observed = { addresses: [], source: 'guest' };
  } else {
    // A ct guest's /proc view has no flags: its veth has carrier only while the guest's end is up.
    up = f.inGuest.up ?? (f.model === 'ct' ? port.state === 'up' : undefined);
    observed = { addresses: up === false ? [] : [...f.inGuest.addresses], source: 'guest' };
  }

  const problem = (kind: string, text: string, definite = false): NicVerdict => ({
    observed,
    problem: { kind, text, definite },
  });

  if (port.state === 'missing') {
    return problem(
      'port-missing',
      `NIC ${nic} is cut off from network ${f.device.network}: its host port ${port.name} is gone (restart the guest to plug it again)`,
      true,
    );
  }
  if (f.inGuest === 'absent') {
    return problem(
      'absent',
      f.model === 'ct'
        ? `NIC ${nic} is missing in the guest: its network namespace has no ${nic}`
        : `NIC ${nic} is missing in the guest: it has no interface with MAC ${mac}${because}`,
    );
  }
  if (f.model === 'pvm' && port.state === 'no-carrier' && f.engineErrors.length > 0) {
    return problem('engine', `NIC ${nic} is down: UML could not open its tap ${port.name}${because}`, true);
  }
  if (up === false) {
    return problem(
      'down',
      f.model === 'ct'
        ? `NIC ${nic} is down in the guest (its veth ${port.name} has no carrier)`
        : `NIC ${nic} is down in the guest${because}`,
    );
  }
  if (port.state === 'no-carrier' && f.model !== 'ct') {
    return problem(
      'no-carrier',
      `NIC ${nic} has no link: ${ENGINE[f.model]} does not hold its tap ${port.name} open${because}`,
    );
  }
  if (f.inGuest === 'unknown') {
    if (f.unknownExpected && observed.addresses.length > 0) return { observed };
    return problem(
      'unknown',
      f.unknownExpected
        ? `NIC ${nic} has no DHCP lease, and the guest cannot be asked: ${f.unknownWhy ?? 'no agent'}`
        : `The addresses of NIC ${nic} are unknown: ${f.unknownWhy ?? 'the guest cannot be asked'}`,
    );
  }
  if (observed.addresses.length === 0) {
    return problem(
      'no-address',
      `NIC ${nic} holds no IPv4 address${reserved ? ` (its DHCP reservation is ${reserved})` : ''}${because}`,
    );
  }
  if (reserved && !observed.addresses.includes(reserved)) {
    return problem(
      'other-address',
      `NIC ${nic} holds ${observed.addresses.join(', ')}, not its address ${reserved}: the network drops what it sends from any other`,
    );
  }
  return { observed };
}

/** The guest's interface for a NIC: the one with its MAC when the guest reports MACs, else the one of its name. */
export function interfaceOf(
  interfaces: readonly GuestInterface[],
  nic: string,
  mac: string | undefined,
): GuestInterface | undefined {
  const m = mac?.toLowerCase();
  if (m && interfaces.some((i) => i.mac !== undefined)) return interfaces.find((i) => i.mac === m);
  return interfaces.find((i) => i.name === nic);
}
