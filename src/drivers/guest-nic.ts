import { finished } from 'node:stream/promises';
import { isTrivisorError, unavailable } from '../core/errors.ts';
import type { GuestSpec } from '../core/types.ts';
import type { ExecOptions, ExecSession, GuestInterface } from './guest-driver.ts';

/** The guest kit's static busybox (vm and pvm guests booted with the kit have it). */
const KIT_BUSYBOX = '/.trivisor/busybox';

/** The name of the guest's interface with `mac`, as a shell expression (busybox sh). */
const byMac = (mac: string) =>
  `$(for d in /sys/class/net/*; do [ "$(${KIT_BUSYBOX} cat $d/address 2>/dev/null)" = "${mac}" ] && echo \${d##*/}; done)`;

/**
 * What a vm or pvm guest runs (through its agent) when a NIC is hot-plugged: the interface
 * with the NIC's MAC takes the NIC's name (as the kit does at boot), takes the network's MTU
 * (DHCP's option 26 at boot: lower on a network spanning members, decision 0050), comes up
 * and holds the NIC's reserved address, which the guest's DHCP client asked for at boot only.
 */
export function nicUpScript(nic: { name: string; mac: string; cidr: string; mtu?: number }): string {
  const bb = KIT_BUSYBOX;
  return [
    // The kernel announces the device a moment after QEMU or UML added it.
    `i=0; while [ -z "${byMac(nic.mac)}" ] && [ $i -lt 100 ]; do ${bb} sleep 0.1; i=$((i + 1)); done`,
    `dev=${byMac(nic.mac)}`,
    `[ -n "$dev" ] || { echo "no interface with MAC ${nic.mac}" >&2; exit 1; }`,
    `if [ "$dev" != "${nic.name}" ] && [ ! -e /sys/class/net/${nic.name} ]; then ${bb} ip link set dev "$dev" name ${nic.name} && dev=${nic.name}; fi`,
    ...(nic.mtu !== undefined ? [`${bb} ip link set dev "$dev" mtu ${nic.mtu}`] : []),
    `${bb} ip link set dev "$dev" up`,
    `${bb} ip addr replace ${nic.cidr} dev "$dev"`,
  ].join('\n');
}

/** Takes the interface with `mac` down in the guest (UML removes only a closed device). */
export function nicDownScript(mac: string): string {
  return `dev=${byMac(mac)}\n[ -z "$dev" ] || ${KIT_BUSYBOX} ip link set dev "$dev" down`;
}

/** Runs a shell script in a running guest through its driver's exec; resolves with its exit code and output. */
export async function runGuestScript(
  exec: (spec: GuestSpec, options: ExecOptions) => Promise<ExecSession>,
  spec: GuestSpec,
  script: string,
): Promise<{ code: number; output: string }> {
  const session = await exec(spec, { command: [KIT_BUSYBOX, 'sh', '-c', script], env: {}, tty: false });
  session.stdin.end();
  const chunks: Buffer[] = [];
  session.stdout.on('data', (c: Buffer) => chunks.push(c));
  session.stderr?.on('data', (c: Buffer) => chunks.push(c));
  // The exit code may come before the last output has been read: wait for the streams' ends too.
  const ended = [session.stdout, ...(session.stderr ? [session.stderr] : [])].map((st) =>
    finished(st).catch(() => {}),
  );
  const [code] = await Promise.all([session.exit, ...ended]);
  return { code, output: Buffer.concat(chunks).toString('utf8').trim() };
}

/**
 * What a vm or pvm guest runs (through its agent) to show its interfaces: `link NAME MAC FLAGS`
 * per interface (FLAGS from sysfs, hex; bit 0 is IFF_UP), then `ip -4 -o addr`. The agent's own
 * guest-network-get-interfaces has no flags, and an address on an interface that is down is not held.
 */
export const NIC_PROBE_SCRIPT = [
  `cd /sys/class/net || exit 1`,
  `for d in *; do [ "$d" = lo ] || echo "link $d $(${KIT_BUSYBOX} cat $d/address 2>/dev/null) $(${KIT_BUSYBOX} cat $d/flags 2>/dev/null)"; done`,
  `${KIT_BUSYBOX} ip -4 -o addr show`,
].join('\n');

/** Addresses kept per interface (a guest may configure thousands). */
const MAX_ADDRESSES = 16;

/** Parses what NIC_PROBE_SCRIPT printed (busybox's and iproute2's `ip -o` alike), at most 64 interfaces. */
export function parseNicProbe(output: string): GuestInterface[] {
  const byName = new Map<string, GuestInterface>();
  for (const line of output.split('\n')) {
    const link = /^link (\S+) ([0-9a-fA-F:]*) ?(0x[0-9a-fA-F]+)?\s*$/.exec(line);
    if (link && byName.size < 64) {
      const [, name, mac, flags] = link as unknown as [string, string, string, string | undefined];
      byName.set(name, {
        name,
        ...(mac ? { mac: mac.toLowerCase() } : {}),
        ...(flags ? { up: (Number.parseInt(flags, 16) & 0x1) === 1 } : {}),
        addresses: [],
      });
      continue;
    }
    const addr = /^\d+:\s+([^\s@]+)\S*\s+inet\s+(\d+\.\d+\.\d+\.\d+)\/\d+/.exec(line);
    const iface = addr ? byName.get(addr[1] as string) : undefined;
    // What a guest's agent says goes into the store and every list: a guest gets a bounded say.
    if (iface && iface.addresses.length < MAX_ADDRESSES) iface.addresses.push(addr?.[2] as string);
  }
  return [...byName.values()];
}

/** Runs NIC_PROBE_SCRIPT in a running vm or pvm guest; Unavailable when it does not answer in `timeoutMs`. */
export async function probeGuestNics(
  exec: (spec: GuestSpec, options: ExecOptions) => Promise<ExecSession>,
  spec: GuestSpec,
  options: { timeoutMs: number },
): Promise<GuestInterface[]> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(unavailable(`The agent of guest ${spec.name} did not answer within ${options.timeoutMs}ms`)),
      options.timeoutMs,
    );
  });
  try {
    const r = await Promise.race([runGuestScript(exec, spec, NIC_PROBE_SCRIPT), late]);
    if (r.code !== 0) {
      throw unavailable(
        `The agent of guest ${spec.name} could not list its interfaces: ${r.output || `exit ${r.code}`}`,
      );
    }
    return parseNicProbe(r.output);
  } catch (e) {
    throw isTrivisorError(e) ? e : unavailable(`Cannot ask the agent of guest ${spec.name}: ${String(e)}`);
  } finally {
    clearTimeout(timer);
  }
}
