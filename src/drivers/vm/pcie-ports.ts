import { type QmpClient, QmpCommandError } from './qmp-client.ts';

/**
 * The PCIe root ports of a q35 guest, in one place: q35's root bus takes no
 * hot-plugged devices and a root port takes one, so a guest gets a group of
 * ports per kind of hot-pluggable device at boot. Devices present at boot sit
 * on them too, so that each can also be unplugged live. A pc guest has none:
 * its root bus hot-plugs through ACPI.
 */
export type PortGroup = 'volume' | 'nic';

const GROUPS: Record<PortGroup, { count: number; firstChassis: number; id: (i: number) => string }> = {
  // Chassis numbers are unique per machine, far from anything else's.
  volume: { count: 4, firstChassis: 100, id: (i) => `trivisor-port${i}` },
  nic: { count: 4, firstChassis: 120, id: (i) => `trivisor-nic${i}` },
};

/** How many ports of a group a guest gets. */
export const portCount = (group: PortGroup): number => GROUPS[group].count;

/** The QEMU id (a bus name) of a group's `i`th port. */
export const portIdOf = (group: PortGroup, i: number): string => GROUPS[group].id(i);

/** `-device pcie-root-port…` for every port of a group (q35 only: none on other machines). */
export function rootPortArgs(group: PortGroup, machine: string): string[] {
  if (machine !== 'q35') return [];
  const g = GROUPS[group];
  return Array.from({ length: g.count }, (_, i) => [
    '-device',
    `pcie-root-port,id=${g.id(i)},bus=pcie.0,chassis=${g.firstChassis + i}`,
  ]).flat();
}

/** What a port refusing a device says when it is taken or does not exist (a guest started before it did). */
const NO_PORT = /does not support hotplugging|Bus .* not found|full|in use|occupied/i;

/**
 * Adds `device` (a device_add argument without `bus`) on the first free port of `group`
 * (q35) or on the root bus (other machines). Resolves with the bus used; rejects with
 * `NoFreePortError` when every port is taken or missing, with the QMP error otherwise.
 */
export async function addOnFreePort(
  q: QmpClient,
  group: PortGroup,
  options: { machine: string; device: Record<string, unknown> },
): Promise<string | undefined> {
  const buses =
    options.machine === 'q35'
      ? Array.from({ length: GROUPS[group].count }, (_, i) => GROUPS[group].id(i))
      : [undefined];
  const errors: unknown[] = [];
  for (const bus of buses) {
    try {
      // addr=0 on a root port: a port holds one device, at slot 0, the only one a guest's kernel
      // scans behind it. Without it QEMU 7.2 puts a device on a taken port at the next slot, where
      // the guest never sees it (a second NIC of a guest started with one: found 2026-12-05).
      await q.execute('device_add', { ...options.device, ...(bus !== undefined && { bus, addr: '0' }) });
      return bus;
    } catch (e) {
      errors.push(e);
    }
  }
  const text = (e: unknown) => (e instanceof QmpCommandError ? e.message : String(e));
  if (options.machine === 'q35' && errors.every((e) => NO_PORT.test(text(e)))) {
    throw new NoFreePortError(text(errors[errors.length - 1]));
  }
  throw errors[errors.length - 1];
}

/** Every hot-plug port of the group is taken, or the guest was started without them. */
export class NoFreePortError extends Error {}
