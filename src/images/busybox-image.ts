import { access, chmod, copyFile, lchown, mkdir, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { failedPrecondition } from '../core/errors.ts';
import type { ProcessRunner } from '../host/runner.ts';
import { hostArchitecture, type ImageMetadata, initProperties } from './image-metadata.ts';

/** Where Debian's busybox-static puts its binary (on merged-/usr hosts /bin is /usr/bin). */
export const HOST_BUSYBOX = '/bin/busybox';

// busybox init needs no getty: a container has no console to respawn one on.
// sysinit is the only thing run at boot; poweroff (SIGUSR2) runs the shutdown line.
const INITTAB = `# busybox init: no getty lines, a container has no console.
::sysinit:/etc/init.d/rcS
::ctrlaltdel:/sbin/reboot
::restart:/sbin/init
::shutdown:/bin/sync
`;

// Nothing here may fail the boot: containers may forbid mounts and sethostname.
const RCS = `#!/bin/sh
[ -r /etc/hostname ] && hostname -F /etc/hostname 2>/dev/null
for script in /etc/init.d/S*; do
  [ -x "$script" ] && "$script" start
done
exit 0
`;

// DHCP on the NICs the host plugged in before init ran, named in TRIVISOR_NICS (set by
// the host for guests with NICs only: run anywhere else, e.g. on a host's own
// interfaces, this does nothing). udhcpc waits ~10 s for a lease, then renews in the background.
const NETWORK_INIT = `#!/bin/sh
[ "$1" = start ] || exit 0
for n in $TRIVISOR_NICS; do
  case "$n" in eth[0-9]|eth[0-9][0-9]) ;; *) continue ;; esac
  ip link show dev "$n" >/dev/null 2>&1 || continue
  ip link set dev "$n" up
  udhcpc -b -t 10 -T 1 -O mtu -i "$n" -s /etc/udhcpc/default.script -p "/run/udhcpc.$n.pid" -x "hostname:$(hostname)" >/dev/null 2>&1
done
exit 0
`;

// udhcpc's event script: applies the lease (address, MTU, default route, DNS). A network that
// spans cluster members gives an MTU of 1450 (VXLAN's 50 bytes, decision 0050).
const UDHCPC_SCRIPT = `#!/bin/sh
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface" 2>/dev/null
    ip link set dev "$interface" up
    ;;
  bound|renew)
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    if ! ip -4 addr show dev "$interface" | grep -q " $ip/"; then
      ip -4 addr flush dev "$interface"
      ip addr add "$ip/\${mask:-24}" dev "$interface"
    fi
    for r in $router; do
      ip route replace default via "$r" dev "$interface"
      break
    done
    {
      [ -n "$domain" ] && echo "search $domain"
      for s in $dns; do echo "nameserver $s"; done
    } > /etc/resolv.conf
    ;;
esac
exit 0
`;

const PASSWD = `root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
`;
const GROUP = `root:x:0:
nobody:x:65534:
`;
// Locked passwords: nobody logs in with a password until guest config sets one or ssh keys.
const SHADOW = `root:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
`;
const PROFILE = `export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PS1='\\h:\\w\\$ '
`;
const HOSTS = `127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
`;

/** Version of the host's busybox, e.g. `1.35.0`, from its banner. */
async function busyboxVersion(runner: ProcessRunner): Promise<string> {
  const { stdout } = await runner.run([HOST_BUSYBOX], { allowFailure: true });
  return /BusyBox v(\d+(?:\.\d+)+)/.exec(stdout)?.[1] ?? 'unknown';
}

/**
 * Builds a small but complete Linux system from the host's static busybox into
 * `targetDir` (created if missing; expected empty). Everything is owned by root
 * and contains no timestamps in file contents, so two builds on the same host
 * have the same manifest and hence the same fingerprint.
 */
export async function buildBusyboxRootfs(
  targetDir: string,
  options: { runner: ProcessRunner },
): Promise<ImageMetadata> {
  const { runner } = options;
  try {
    await access(HOST_BUSYBOX);
  } catch {
    throw failedPrecondition(
      `${HOST_BUSYBOX} is missing: install Debian's busybox-static package (apt-get install busybox-static).`,
    );
  }
  const version = await busyboxVersion(runner);
  const { stdout } = await runner.run([HOST_BUSYBOX, '--list-full']);
  const applets = stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('/') && !l.includes('..'));

  const dirs: Array<[string, number]> = [
    ['', 0o755],
    ['bin', 0o755],
    ['sbin', 0o755],
    ['usr', 0o755],
    ['usr/bin', 0o755],
    ['usr/sbin', 0o755],
    ['etc', 0o755],
    ['etc/init.d', 0o755],
    ['etc/udhcpc', 0o755],
    ['root', 0o700],
    ['tmp', 0o1777],
    ['dev', 0o755],
    ['proc', 0o555],
    ['sys', 0o555],
    ['run', 0o755],
    ['var', 0o755],
    ['home', 0o755],
  ];
  for (const [rel, mode] of dirs) {
    const path = join(targetDir, rel);
    await mkdir(path, { recursive: true });
    // chmod after mkdir: the process umask would otherwise strip bits such as /tmp's sticky bit.
    await chmod(path, mode);
    await lchown(path, 0, 0);
  }

  const busybox = join(targetDir, 'bin/busybox');
  await copyFile(HOST_BUSYBOX, busybox);
  await chmod(busybox, 0o755);
  await lchown(busybox, 0, 0);

  const links = new Set(applets);
  links.add('sbin/init');
  links.delete('bin/busybox');
  // linuxrc is for initrds only; a root at / named linuxrc just confuses.
  links.delete('linuxrc');
  for (const rel of [...links].sort()) {
    const path = join(targetDir, rel);
    await mkdir(dirname(path), { recursive: true });
    await symlink('/bin/busybox', path);
    await lchown(path, 0, 0);
  }

  const osRelease = `NAME="BusyBox"
ID=busybox
VERSION_ID=${version}
PRETTY_NAME="BusyBox ${version}"
`;
  const files: Array<[string, string, number]> = [
    ['etc/inittab', INITTAB, 0o644],
    ['etc/init.d/rcS', RCS, 0o755],
    ['etc/init.d/S10network', NETWORK_INIT, 0o755],
    ['etc/udhcpc/default.script', UDHCPC_SCRIPT, 0o755],
    ['etc/hostname', 'busybox\n', 0o644],
    ['etc/hosts', HOSTS, 0o644],
    ['etc/passwd', PASSWD, 0o644],
    ['etc/group', GROUP, 0o644],
    ['etc/shadow', SHADOW, 0o600],
    ['etc/profile', PROFILE, 0o644],
    ['etc/os-release', osRelease, 0o644],
  ];
  for (const [rel, content, mode] of files) {
    const path = join(targetDir, rel);
    await writeFile(path, content);
    await chmod(path, mode);
    await lchown(path, 0, 0);
  }

  return {
    description: `BusyBox ${version} (static)`,
    os: 'busybox',
    release: version,
    architecture: hostArchitecture(),
    source: 'builtin',
    // busybox init powers off on SIGUSR2 (SIGTERM would mean reboot).
    properties: initProperties(['/sbin/init'], 'SIGUSR2'),
  };
}
