import { open } from 'node:fs/promises';

/*
 * What a UML kernel says on its console when a NIC cannot come up. Its tuntap transport
 * opens /dev/net/tun and attaches to the tap only when the guest brings the interface up
 * (uml_net_open), so a failure shows as a kernel line at that moment and as the guest's
 * own `ip` failing, never as a failed boot.
 */

/** Kernel and guest lines about a NIC that could not come up (arch/um/drivers/net_kern.c, tuntap_user.c). */
const NIC_FAILURE =
  /Failed to open \/dev\/net\/tun|TUNSETIFF failed|tuntap_open|uml_net_open|eth_configure|eth_setup|SIOCSIFFLAGS/;

/** The first line UML prints at every boot (os_early_checks): the log is appended boot after boot. */
const BOOT_MARKER = 'Core dump limits :';

/**
 * The NIC failure lines of a UML console log since its last boot, each once, the most
 * recent last (at most `max`), without carriage returns.
 */
export function umlNicErrors(log: string, max = 3): string[] {
  const since = log.lastIndexOf(BOOT_MARKER);
  const lines = log
    .slice(Math.max(since, 0))
    .replace(/\r/g, '')
    .split('\n')
    // The guest writes to this console too: what is quoted is kept short.
    .map((l) => l.trim().slice(0, 200))
    .filter((l) => NIC_FAILURE.test(l) && !l.startsWith('Kernel command line'));
  const unique: string[] = [];
  for (const l of lines.reverse()) if (!unique.includes(l)) unique.unshift(l);
  return unique.slice(-max);
}

/** The last `bytes` of a file as text; empty when it cannot be read. */
export async function readTail(path: string, bytes = 256 * 1024): Promise<string> {
  const fh = await open(path, 'r').catch(() => undefined);
  if (!fh) return '';
  try {
    const { size } = await fh.stat();
    const length = Math.min(size, bytes);
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, size - length);
    return buf.toString('utf8');
  } finally {
    await fh.close();
  }
}
