import type { GuestSpec } from '../core/types.ts';
import type { ExecOptions, ExecSession } from './guest-driver.ts';

/** The guest kit's static busybox (vm and pvm guests booted with the kit have it). */
const KIT_BUSYBOX = '/.trivisor/busybox';

/** The name of the guest's interface with `mac`, as a shell expression (busybox sh). */
const byMac = (mac: string) =>
  `$(for d in /sys/class/net/*; do [ "$(${KIT_BUSYBOX} cat $d/address 2>/dev/null)" = "${mac}" ] && echo \${d##*/}; done)`;

/**
 * What a vm or pvm guest runs (through its agent) when a NIC is hot-plugged: the interface
 * with the NIC's MAC takes the NIC's name (as the kit does at boot), comes up and holds the
 * NIC's reserved address, which the guest's DHCP client asked for at boot only.
 */
export function nicUpScript(nic: { name: string; mac: string; cidr: string }): string {
  const bb = KIT_BUSYBOX;
  return [
    // The kernel announces the device a moment after QEMU or UML added it.
    `i=0; while [ -z "${byMac(nic.mac)}" ] && [ $i -lt 100 ]; do ${bb} sleep 0.1; i=$((i + 1)); done`,
    `dev=${byMac(nic.mac)}`,
    `[ -n "$dev" ] || { echo "no interface with MAC ${nic.mac}" >&2; exit 1; }`,
    `if [ "$dev" != "${nic.name}" ] && [ ! -e /sys/class/net/${nic.name} ]; then ${bb} ip link set dev "$dev" name ${nic.name} && dev=${nic.name}; fi`,
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
  const code = await session.exit;
  return { code, output: Buffer.concat(chunks).toString('utf8').trim() };
}
