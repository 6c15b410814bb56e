import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cgroupParentOf } from '../../src/drivers/guest-cgroup.ts';
import { describeThing, makeRunDir, removeRunDir } from '../leftovers.ts';
import { eventually, gone } from '../system/harness.ts';

/*
 * The Debian package (issue 18, decision 0030), built once with dpkg-buildpackage and installed
 * into a throwaway Debian 12 root made by debootstrap, as CI's fresh root is made, without
 * systemd: install, upgrade (a running guest keeps its process and the new daemon re-adopts it),
 * remove (guests and state stay), purge (a warning, then the state goes). The root lives in a
 * mount namespace of its own (pivot_root, as .ci/run enters its root); the daemon and the purge
 * run in a network namespace of their own too, so that nothing they do reaches the host's
 * bridges or firewall tables.
 *
 * Then the same root with systemd, booted as a container whose PID 1 is systemd (neither this
 * host nor CI's root runs one): the package installs an enabled and active trivisor.service
 * that logs to the journal, systemd restarts a daemon killed with -9, guests outlive a restart
 * and an upgrade, and after the container reboots systemd starts the daemon, which starts the
 * boot.autostart guests (decision 0030).
 */

const SRC = path.resolve(import.meta.dirname, '../..');
const STATE = '/var/lib/trivisor';
const ROOT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const MIRROR = process.env.TRIVISOR_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';
/**
 * Where the host's apt cache shows in the root. Not on the root's own /var/cache/apt/archives:
 * apt locks that directory for a whole install, and other roots (CI's, another test's) share the
 * host's cache, so a bound one fails at once with "Could not get lock".
 */
const HOST_ARCHIVES = '/var/cache/trivisor-host-archives';

/** The host's cgroup hierarchies (v1 hybrid here: one per controller, name=systemd, unified). */
function cgroupHierarchies(): Array<{ mountPoint: string; type: 'cgroup' | 'cgroup2'; options: string }> {
  const out: Array<{ mountPoint: string; type: 'cgroup' | 'cgroup2'; options: string }> = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPEROPTIONS
    const [left, right] = line.split(' - ');
    const mountPoint = left?.split(' ')[4];
    const [type, , superOptions] = right?.split(' ') ?? [];
    if (!mountPoint?.startsWith('/sys/fs/cgroup/') || (type !== 'cgroup' && type !== 'cgroup2')) continue;
    const options = (superOptions ?? '')
      .split(',')
      .filter((o) => o !== 'rw' && o !== 'ro')
      .join(',');
    out.push({ mountPoint, type, options });
  }
  return out;
}

/**
 * Shell that mounts the cgroup hierarchies under $root as the host has them: in a cgroup
 * namespace, each shows the namespace's root cgroup as its own root.
 */
function mountCgroupsIn(hierarchies: ReturnType<typeof cgroupHierarchies>): string {
  return hierarchies
    .map((h) =>
      h.type === 'cgroup2'
        ? `mkdir -p "$root${h.mountPoint}" && mount -t cgroup2 cgroup2 "$root${h.mountPoint}"`
        : `mkdir -p "$root${h.mountPoint}" && mount -t cgroup -o ${h.options} cgroup "$root${h.mountPoint}"`,
    )
    .join('\n');
}

function sh(command: string, options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): string {
  const r = spawnSync('bash', ['-euo', 'pipefail', '-c', command], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    ...options,
  });
  if (r.status !== 0)
    throw new Error(`${command.slice(0, 200)} failed (${r.status}):\n${r.stdout}\n${r.stderr}`.slice(-6000));
  return `${r.stdout}${r.stderr}`;
}

/** sh, without blocking the event loop (for steps that run side by side). */
function shAsync(command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-euo', 'pipefail', '-c', command], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(out);
      else reject(new Error(`${command.slice(0, 300)} failed (${code}):\n${out}`.slice(-6000)));
    });
  });
}

describe('the Debian package in a fresh Debian 12 root, without systemd and then under systemd as PID 1', () => {
  let run: string;
  let root: string;
  let holder: ChildProcess | undefined;
  let deb1: string;
  let deb2: string;
  /** The guest's process, which outlives the daemon through the upgrade and the removal. */
  let guest = 0;
  /** Shell that moves its shell into the run's cgroup in every hierarchy. */
  let joinRunCgroup = 'false';
  let hierarchies: ReturnType<typeof cgroupHierarchies> = [];
  /** The booted container (systemd as its PID 1): unshare, and systemd's pid as the host sees it. */
  let machine: { unshare: ChildProcess; init: number } | undefined;

  /** Runs `command` in the root (its mount namespace), on the host's network or the root's own. */
  const inRoot = (command: string, net: 'host' | 'own' = 'own'): string => {
    const r = spawnSync(
      'bash',
      [
        '-c',
        // Into the run's cgroup first: whatever the command starts (the daemon, its guests) stays
        // inside it, where the root's cgroup namespace has its root.
        `${joinRunCgroup}; exec nsenter "$@"`,
        'nsenter',
        `--target=${holder?.pid}`,
        '--mount',
        '--cgroup',
        ...(net === 'own' ? ['--net'] : []),
        '--root',
        // The holder's own working directory, / of the root (a path given here is taken before the chroot).
        '--wd',
        '/usr/bin/env',
        '-i',
        `PATH=${ROOT_PATH}`,
        'HOME=/root',
        'LANG=C.UTF-8',
        '/bin/bash',
        '-euo',
        'pipefail',
        '-c',
        command,
      ],
      // stdin not a socket (Node's pipes are socket pairs): bash would take itself for rshd's and read bashrc.
      { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    if (r.status !== 0)
      throw new Error(`in the root: ${command} failed (${r.status}):\n${r.stdout}\n${r.stderr}`.slice(-6000));
    return `${r.stdout}${r.stderr}`;
  };
  const daemonPid = () => Number(readFileSync(path.join(root, STATE, 'trivisor.pid'), 'utf8').trim());
  const startDaemon = () => {
    try {
      inRoot(
        'TRIVISOR_DEFAULT_NETWORK=none TRIVISOR_LISTEN=none setsid trivisor daemon >>/var/log/trivisor.log 2>&1 </dev/null & ' +
          'trivisor admin wait-ready --timeout 300 --pid $!',
      );
    } catch (e) {
      const log = readFileSync(path.join(root, '/var/log/trivisor.log'), 'utf8').slice(-3000);
      throw new Error(`${(e as Error).message}\nThe daemon's log ends:\n${log}`);
    }
  };
  const stopDaemon = async () => {
    const pid = daemonPid();
    process.kill(pid, 'SIGTERM');
    await eventually('the daemon is gone', () => gone(pid), 60_000);
  };
  /**
   * apt-get install in the root. The packages the host's cache has are copied in (links cannot
   * cross CI's bind mounts); what had to be downloaded goes back into it, renamed into place so
   * that no apt sees half a file.
   */
  const aptInstall = (packages: string): string => {
    const install = `apt-get install -y -qq --no-install-recommends ${packages}`;
    inRoot(
      `${install} --print-uris | awk '{print $2}' | while read -r f; do
         if [ -f ${HOST_ARCHIVES}/"$f" ]; then cp ${HOST_ARCHIVES}/"$f" /var/cache/apt/archives/; fi
       done`,
    );
    const out = inRoot(`DEBIAN_FRONTEND=noninteractive ${install} 2>&1`, 'host');
    inRoot(
      `shopt -s nullglob; for f in /var/cache/apt/archives/*.deb; do b=\${f##*/}
         if [ ! -e ${HOST_ARCHIVES}/"$b" ]; then cp "$f" ${HOST_ARCHIVES}/."$b".tmp && mv ${HOST_ARCHIVES}/."$b".tmp ${HOST_ARCHIVES}/"$b"; fi
       done`,
    );
    return out;
  };
  /**
   * Runs `command` in the booted container: in every namespace of its systemd, from the run's
   * cgroup (the container's root cgroup), as root's shell there.
   */
  const inMachine = (command: string): { status: number | null; out: string } => {
    const r = spawnSync(
      'bash',
      [
        '-c',
        `${joinRunCgroup}; exec nsenter "$@"`,
        'nsenter',
        `--target=${machine?.init}`,
        '--mount',
        '--uts',
        '--ipc',
        '--net',
        '--pid',
        '--cgroup',
        '--root',
        '--wd',
        '/usr/bin/env',
        '-i',
        `PATH=${ROOT_PATH}`,
        'HOME=/root',
        'LANG=C.UTF-8',
        '/bin/bash',
        '-euo',
        'pipefail',
        '-c',
        command,
      ],
      { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    return { status: r.status, out: `${r.stdout}${r.stderr}` };
  };
  const inMachineOk = (command: string): string => {
    const r = inMachine(command);
    if (r.status !== 0)
      throw new Error(`in the container: ${command} failed (${r.status}):\n${r.out}`.slice(-6000));
    return r.out;
  };
  const unitProperty = (property: string, unit = 'trivisor.service') =>
    inMachineOk(`systemctl show -p ${property} --value ${unit}`).trim();
  const agentProperty = (property: string) => unitProperty(property, 'trivisor-ha-agent.service');
  const guestsInMachine = () =>
    new Map(
      (
        JSON.parse(inMachineOk('trivisor list --format json')) as Array<{
          name: string;
          status: string;
          state: { pid: number | null };
        }>
      ).map((g) => [g.name, g]),
    );

  /**
   * Boots the root as a container with systemd as its PID 1, as systemd-nspawn --boot would, and
   * waits until systemd has finished booting it. Its own namespaces: pid, mount, network, UTS, IPC
   * and cgroup (rooted at the run's cgroup, with the host's hierarchies: cgroup v1 controllers,
   * name=systemd and the unified one, which systemd 252 runs as its hybrid layout). A fresh
   * read-only sysfs (udev's units skip themselves), a /dev of its own with the few device nodes a
   * ct guest needs, a fresh /run; /proc stays writable, as unprivileged ct guests mount their own
   * /proc only where the kernel sees one fully visible. When the test process dies, unshare gets
   * SIGKILL (setpriv's parent-death signal) and takes systemd with it (--kill-child), and with the
   * pid namespace every process of the container: no mount, network or process outlives it, and
   * the sweeper removes its cgroups under the run's.
   */
  const bootMachine = async (): Promise<void> => {
    const log = openSync(path.join(run, 'machine.log'), 'a');
    const unshare = spawn(
      'setpriv',
      [
        '--pdeathsig',
        'KILL',
        '--',
        'bash',
        '-euo',
        'pipefail',
        '-c',
        `${joinRunCgroup}
        exec unshare --pid --fork --kill-child --mount --uts --ipc --net --cgroup --propagation private -- bash -euo pipefail -c '
        root=$1
        mount --bind "$root" "$root"
        mount -t proc proc "$root/proc"
        mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
        mount -t tmpfs -o mode=0755,nosuid,nodev,noexec cgroup "$root/sys/fs/cgroup"
        ${mountCgroupsIn(hierarchies)}
        mount -t tmpfs -o mode=0755,nosuid dev "$root/dev"
        for d in null zero full random urandom tty net/tun; do
          [ -e "/dev/$d" ] || continue
          mkdir -p "$(dirname "$root/dev/$d")" && touch "$root/dev/$d" && mount --bind "/dev/$d" "$root/dev/$d"
        done
        mkdir -p "$root/dev/pts" "$root/dev/shm"
        mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
        mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
        ln -s pts/ptmx "$root/dev/ptmx"
        ln -s /proc/self/fd "$root/dev/fd"
        for i in 0:stdin 1:stdout 2:stderr; do ln -s "/proc/self/fd/\${i%%:*}" "$root/dev/\${i#*:}"; done
        mount -t tmpfs -o mode=0755,nosuid,nodev run "$root/run"
        mkdir -p "$root/.host-root" && cd "$root" && pivot_root . .host-root && umount -l /.host-root && rmdir /.host-root && cd /
        exec /usr/bin/env -i container=trivisor-test PATH=${ROOT_PATH} /lib/systemd/systemd
        ' boot "$1"`,
        'boot',
        root,
      ],
      { stdio: ['ignore', log, log] },
    );
    closeSync(log);
    const pid = unshare.pid ?? 0;
    let init = 0;
    await eventually(
      'systemd runs as the container’s PID 1',
      () => {
        if (unshare.exitCode !== null || unshare.signalCode !== null)
          throw new Error(
            `the container ended (${unshare.exitCode ?? unshare.signalCode}) before systemd ran:\n${readFileSync(path.join(run, 'machine.log'), 'utf8').slice(-3000)}`,
          );
        try {
          const child = Number(
            readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(' ')[0],
          );
          if (child > 0 && readFileSync(`/proc/${child}/comm`, 'utf8').trim() === 'systemd') init = child;
        } catch {
          // Not there yet, or between unshare's fork and the exec.
        }
        return init > 0;
      },
      30_000,
    );
    machine = { unshare, init };
    let state = '';
    await eventually(
      'systemd finishes booting the container',
      () => {
        // systemctl says "offline" until systemd made /run/systemd/system, and fails to connect
        // until it listens on its private socket; then it waits out the start-up.
        if (!existsSync(`/proc/${init}/root/run/systemd/system`)) return false;
        state = inMachine('systemctl is-system-running --wait').out.trim();
        return ['running', 'degraded', 'maintenance', 'stopping'].includes(state);
      },
      120_000,
    ).catch((e) => {
      throw new Error(`${(e as Error).message} (last state: ${state})`);
    });
    assert.equal(
      state,
      'running',
      `systemd booted the container ${state}:\n${inMachine('systemctl --failed --no-pager; journalctl -b -p warning --no-pager | tail -n 40').out}`,
    );
  };

  /** `systemctl poweroff` in the container: systemd stops its units, ends every process and exits. */
  const powerOffMachine = async (): Promise<void> => {
    const m = machine;
    if (!m) return;
    const exited = new Promise<void>((resolve) => {
      if (m.unshare.exitCode !== null || m.unshare.signalCode !== null) resolve();
      else m.unshare.once('exit', () => resolve());
    });
    inMachineOk('systemctl --no-block poweroff');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      exited,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('the container did not power off in 90 s')), 90_000);
      }),
    ]).finally(() => clearTimeout(timer));
    machine = undefined;
  };

  const guestPid = () =>
    (JSON.parse(inRoot('trivisor info pkg1 --format json')) as { status: string; state: { pid: number } })
      .state.pid;

  before(async () => {
    run = await makeRunDir('pkg');
    root = path.join(run, 'root');
    // Everything the test starts runs in the run's cgroup, which the sweeper knows (cgroupParentOf
    // of the run): the build, debootstrap's chrooted dpkg and, in the root's own cgroup namespace
    // rooted there, the package's daemon and guests. Their cgroups are named after
    // /var/lib/trivisor as on any host, and the purge kills whatever runs in those: outside the
    // namespace they would be the host's own (a daemon setup/start runs there, CI's root at the end
    // of its run). A killed test leaves nothing the sweeper cannot find.
    hierarchies = cgroupHierarchies();
    assert.ok(hierarchies.length > 0, 'cgroup hierarchies mounted under /sys/fs/cgroup/ (v1 or hybrid)');
    const runCgroup = cgroupParentOf(run);
    for (const h of hierarchies) {
      const dir = `${h.mountPoint}${runCgroup}`;
      mkdirSync(dir, { recursive: true });
      // A cpuset cgroup takes no task before it has CPUs and memory nodes.
      for (const f of ['cpuset.cpus', 'cpuset.mems']) {
        if (existsSync(path.join(h.mountPoint, f)))
          writeFileSync(path.join(dir, f), readFileSync(path.join(h.mountPoint, f), 'utf8'));
      }
    }
    joinRunCgroup = hierarchies.map((h) => `echo $$ >${h.mountPoint}${runCgroup}/cgroup.procs`).join('; ');
    const src = path.join(run, 'src');
    const node = path.dirname(process.execPath);
    const version = (JSON.parse(readFileSync(path.join(SRC, 'package.json'), 'utf8')) as { version: string })
      .version;
    deb1 = path.join(run, `trivisor_${version}_amd64.deb`);
    deb2 = path.join(run, `trivisor_${version}+upgrade_amd64.deb`);
    // The package is built once while debootstrap makes the root (each waits on the disk and the
    // network half the time: together they take little more than the longer one).
    await Promise.all([
      // 1. From a copy of the checkout (dpkg-buildpackage writes beside and into its tree).
      // debhelper-compat is all it declares; Debian's implicit build-essential (a C compiler) is
      // not needed. 2. A second version for the upgrade: the same package repacked with a higher one.
      shAsync(
        `${joinRunCgroup}
        mkdir -p ${src} && tar -C ${SRC} --exclude=./node_modules --exclude=./build --exclude=./web/dist --exclude=./.git -cf - . | tar -C ${src} -xf -
        cd ${src} && dpkg-checkbuilddeps -I && PATH=${node}:$PATH dpkg-buildpackage -b -us -uc -d >${run}/build.log 2>&1 || { tail -n 30 ${run}/build.log; exit 1; }
        test -f ${deb1} || { echo "dpkg-buildpackage made no ${path.basename(deb1)}"; exit 1; }
        cd ${run} && dpkg-deb -R ${deb1} v2 && sed -i 's/^Version: .*/Version: ${version}+upgrade/' v2/DEBIAN/control
        dpkg-deb --root-owner-group -Zgzip -z1 -b v2 ${deb2} >/dev/null && rm -rf v2`,
      ),
      // 3. The fresh root, as .ci/run makes CI's. dpkg in it need not sync every file: the root
      // is thrown away (an install of the engines' packages takes half the time).
      shAsync(
        `${joinRunCgroup}
        debootstrap --variant=minbase --cache-dir=/var/cache/apt/archives bookworm ${root} ${MIRROR} >${run}/debootstrap.log 2>&1 || { tail -n 20 ${run}/debootstrap.log; exit 1; }
        echo force-unsafe-io >${root}/etc/dpkg/dpkg.cfg.d/trivisor-test-unsafe-io`,
      ),
    ]);
    sh(
      `if [ -f /etc/apt/sources.list.d/debian.sources ]; then cp /etc/apt/sources.list.d/debian.sources ${root}/etc/apt/sources.list.d/ && : >${root}/etc/apt/sources.list; else cp /etc/apt/sources.list ${root}/etc/apt/; fi; ` +
        `cp -L /etc/resolv.conf ${root}/etc/resolv.conf; cp ${deb1} ${deb2} ${root}/tmp/; ` +
        `if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then mkdir -p ${root}/usr/local/share/ca-certificates && cp /usr/local/share/ca-certificates/*.crt ${root}/usr/local/share/ca-certificates/; fi`,
    );
    const mountCgroups = mountCgroupsIn(hierarchies);
    holder = spawn(
      'bash',
      [
        '-euo',
        'pipefail',
        '-c',
        `${joinRunCgroup}
        exec unshare --mount --net --cgroup --propagation private -- bash -euo pipefail -c '
        root=$1
        mount --bind "$root" "$root"
        mount -t proc proc "$root/proc"
        mount --rbind /sys "$root/sys"
        mount -t tmpfs -o mode=0755 cgroup "$root/sys/fs/cgroup"
        ${mountCgroups}
        mount --rbind /dev "$root/dev"
        mount -t tmpfs -o mode=0755 tmpfs "$root/run"
        mkdir -p "$root${HOST_ARCHIVES}"
        mount --bind /var/cache/apt/archives "$root${HOST_ARCHIVES}"
        mkdir -p "$root/.host-root" && cd "$root" && pivot_root . .host-root && umount -l /.host-root && rmdir /.host-root && cd /
        ip link set lo up 2>/dev/null || true
        echo ready
        exec sleep infinity' holder "$1"`,
        'holder',
        root,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    await new Promise<void>((resolve, reject) => {
      holder?.stdout?.once('data', () => resolve());
      holder?.once('exit', (code) => reject(new Error(`the root's namespace holder exited with ${code}`)));
    });
  });

  after(async () => {
    // The sweeper kills every process in the run's cgroup (the holder, the daemon, the guests),
    // removes the cgroups, then the root.
    holder?.kill('SIGKILL');
    machine?.unshare.kill('SIGKILL');
    if (run) {
      const report = await removeRunDir(run);
      assert.deepEqual(report.left.map(describeThing), [], 'the run leaves nothing behind');
    }
  });

  test('it installs with the engines’ packages, and its CLI, unit, completion and man pages are in place', () => {
    inRoot('apt-get update -qq', 'host');
    const out = aptInstall(`/tmp/${path.basename(deb1)}`);
    assert.match(out, /systemd does not run here/);
    for (const file of [
      '/usr/bin/trivisor',
      '/lib/systemd/system/trivisor.service',
      '/lib/systemd/system/trivisor-ha-agent.service',
      '/usr/lib/trivisor/src/ha-agent.ts',
      '/usr/share/bash-completion/completions/trivisor',
      '/usr/share/zsh/vendor-completions/_trivisor',
      '/usr/share/fish/vendor_completions.d/trivisor.fish',
      '/usr/share/man/man1/trivisor.1.gz',
      '/usr/share/man/man1/trivisor-network.1.gz',
      '/usr/lib/trivisor/node/bin/node',
      '/usr/lib/trivisor/build/manifest.json',
    ])
      assert.ok(existsSync(path.join(root, file)), file);
    for (const pkg of ['runc', 'qemu-system-x86', 'user-mode-linux', 'dnsmasq-base', 'nftables'])
      assert.match(inRoot(`dpkg-query -W -f='\${Status}' ${pkg}`), /install ok installed/, pkg);
    assert.match(inRoot('trivisor --help'), /Examples:/);
    // The unit as installed is the one test/ecosystem/systemd.test.ts verifies with systemd-analyze.
    assert.equal(
      readFileSync(path.join(root, '/lib/systemd/system/trivisor.service'), 'utf8'),
      readFileSync(path.join(SRC, 'setup/systemd/trivisor.service'), 'utf8'),
    );
    assert.equal(
      readFileSync(path.join(root, '/lib/systemd/system/trivisor-ha-agent.service'), 'utf8'),
      readFileSync(path.join(SRC, 'setup/systemd/trivisor-ha-agent.service'), 'utf8'),
    );
  });

  test('an upgrade keeps a running guest running, and the new daemon re-adopts it', async () => {
    startDaemon();
    inRoot('trivisor launch busybox pkg1');
    const pid = guestPid();
    guest = pid;
    assert.ok(pid > 0);
    const oldManifest = readFileSync(path.join(root, '/usr/lib/trivisor/build/manifest.json'), 'utf8');
    inRoot(`dpkg -i /tmp/${path.basename(deb2)}`);
    assert.match(inRoot(`dpkg-query -W -f='\${Version}' trivisor`), /\+upgrade$/);
    assert.notEqual(
      readFileSync(path.join(root, '/usr/lib/trivisor/build/manifest.json'), 'utf8'),
      oldManifest,
    );
    process.kill(pid, 0);
    // What systemd's restart after the upgrade does: the old daemon ends, the new one starts.
    await stopDaemon();
    process.kill(pid, 0);
    startDaemon();
    assert.equal(guestPid(), pid, 'the same process: re-adopted, not restarted');
    assert.equal(inRoot('trivisor exec pkg1 -- hostname').trim(), 'pkg1');
  });

  test('remove leaves the guests running and the state in place', async () => {
    const pid = guest;
    // What the prerm's systemctl stop does under systemd.
    await stopDaemon();
    inRoot('dpkg -r trivisor');
    assert.ok(!existsSync(path.join(root, '/usr/bin/trivisor')));
    assert.ok(
      !existsSync(path.join(root, '/usr/lib/trivisor/build')),
      'the bundles the postinst made go too',
    );
    process.kill(pid, 0);
    assert.ok(existsSync(path.join(root, STATE, 'store.db')), 'the store stays');
  });

  test('purge warns, stops what still runs and deletes the state', async () => {
    const pid = guest;
    const out = inRoot('dpkg --purge trivisor 2>&1');
    assert.match(out, /WARNING: purging deletes \/var\/lib\/trivisor: every guest's disks/);
    assert.ok(!existsSync(path.join(root, STATE)), `${STATE} is gone`);
    await eventually('the guest is gone', () => gone(pid));
    // In the root's cgroup namespace, and on the host under the run's cgroup, which is its root.
    const cgroups = inRoot(
      `ls -d /sys/fs/cgroup/*/${cgroupParentOf(STATE).slice(1)} 2>/dev/null || true`,
    ).trim();
    assert.equal(cgroups, '', 'no cgroup of the package’s guests is left');
    assert.equal(
      sh(`find /sys/fs/cgroup/*${cgroupParentOf(run)} -mindepth 1 -type d`).trim(),
      '',
      'nor anything under the run’s cgroup on the host',
    );
    assert.match(
      inRoot(`dpkg-query -W -f='\${Status}' trivisor 2>&1 || true`),
      /not-installed|no packages found/,
    );
  });

  /*
   * Under systemd as PID 1: the same root, booted as a container (bootMachine). What the package
   * does there is what it does on a Debian host: its postinst enables and starts the unit, dpkg's
   * upgrade restarts it, and systemd starts it at every boot.
   */
  test('under systemd as PID 1 the package installs an enabled, active service that logs to the journal', async () => {
    // As on a Debian host: systemd is the init (the engines' packages are still in from above).
    inRoot('apt-get update -qq', 'host');
    aptInstall('systemd systemd-sysv');
    // The container shares the host's kernel: units that would change it for the host too are
    // masked (systemd-nspawn's containers have them skip by a read-only /proc/sys, which would keep
    // unprivileged ct guests from mounting their own /proc). Kernel settings, modules and binfmt
    // handlers are the host's; udev's device events are (and skip anyway on the read-only /sys);
    // e2scrub_reap looks for LVM snapshots. systemd itself raises fs.file-max as on every systemd host.
    const units = path.join(root, 'etc/systemd/system');
    for (const unit of [
      'systemd-sysctl.service',
      'systemd-modules-load.service',
      'systemd-binfmt.service',
      'proc-sys-fs-binfmt_misc.automount',
      'proc-sys-fs-binfmt_misc.mount',
      'systemd-udevd.service',
      'systemd-udevd-control.socket',
      'systemd-udevd-kernel.socket',
      'systemd-udev-trigger.service',
      'systemd-udev-settle.service',
      'systemd-timesyncd.service',
      'e2scrub_reap.service',
    ]) {
      rmSync(path.join(units, unit), { force: true });
      symlinkSync('/dev/null', path.join(units, unit));
    }
    // A shutdown waits at most this long for what ignores SIGTERM (90 s by default).
    mkdirSync(path.join(root, 'etc/systemd/system.conf.d'), { recursive: true });
    writeFileSync(
      path.join(root, 'etc/systemd/system.conf.d/trivisor-test.conf'),
      '[Manager]\nDefaultTimeoutStopSec=20s\n',
    );
    // Not in /tmp: systemd-tmpfiles empties it at every boot.
    for (const deb of [deb1, deb2])
      writeFileSync(path.join(root, 'root', path.basename(deb)), readFileSync(deb));
    await bootMachine();
    assert.match(inMachineOk('systemd-detect-virt --container'), /container-other/);

    const out = inMachineOk(`dpkg -i /root/${path.basename(deb1)} 2>&1`);
    assert.doesNotMatch(out, /systemd does not run here/);
    assert.equal(inMachine('systemctl is-enabled trivisor').out.trim(), 'enabled');
    // Active only once the readiness check passed (ExecStartPost): the API answers.
    assert.equal(inMachine('systemctl is-active trivisor').out.trim(), 'active');
    assert.match(inMachineOk('trivisor list'), /NAME/);
    const journal = inMachineOk('journalctl -u trivisor --no-pager -o cat');
    assert.match(journal, /Started trivisor\.service|Started Trivisor virtualization daemon/);
    assert.match(journal, /trivisor daemon ready/, 'the daemon’s own log lines are in the journal');
  });

  test('the HA agent is a unit of its own: enabled, ready by systemd-notify, its watchdog petted, and restarted by systemd when it hangs', async () => {
    assert.equal(inMachine('systemctl is-enabled trivisor-ha-agent').out.trim(), 'enabled');
    // Type=notify: active only once systemd took its READY=1 (sent through systemd-notify).
    await eventually(
      'the agent is active and waits for a membership',
      () =>
        inMachine('systemctl is-active trivisor-ha-agent').out.trim() === 'active' &&
        /not a cluster member/.test(agentProperty('StatusText')),
      60_000,
    );
    const first = agentProperty('MainPID');
    // Longer than WatchdogSec (10 s): without its pings systemd would have killed it by now.
    await new Promise((r) => setTimeout(r, 13_000));
    assert.equal(agentProperty('MainPID'), first, 'its pings reach systemd');
    assert.equal(agentProperty('NRestarts'), '0');
    // A hung agent (stopped, so it pets nothing) is killed by the watchdog and started again.
    inMachineOk(`kill -STOP ${first}`);
    await eventually(
      'systemd restarted the hung agent',
      () => {
        const pid = agentProperty('MainPID');
        return (
          pid !== first &&
          pid !== '0' &&
          inMachine('systemctl is-active trivisor-ha-agent').out.trim() === 'active'
        );
      },
      60_000,
    );
    assert.equal(agentProperty('NRestarts'), '1');
    assert.match(inMachineOk('journalctl -u trivisor-ha-agent --no-pager -o cat'), /Watchdog timeout/);
  });

  test('systemd restarts a daemon killed with -9', async () => {
    const before = Number(unitProperty('MainPID'));
    assert.ok(before > 0);
    inMachineOk(`kill -9 ${before}`);
    await eventually(
      'a new daemon runs and is ready',
      () => {
        const pid = Number(unitProperty('MainPID'));
        return pid > 0 && pid !== before && inMachine('systemctl is-active trivisor').out.trim() === 'active';
      },
      60_000,
    );
    assert.equal(unitProperty('NRestarts'), '1');
    assert.match(
      inMachineOk('journalctl -u trivisor --no-pager -o cat'),
      /Main process exited, code=killed, status=9\/KILL/,
    );
    assert.match(inMachineOk('trivisor list'), /NAME/);
  });

  test('guests outlive systemctl restart trivisor and a package upgrade, and the new daemon re-adopts them', () => {
    inMachineOk('trivisor launch busybox sd-auto -c boot.autostart=true && trivisor launch busybox sd-plain');
    const pids = () => {
      const guests = guestsInMachine();
      return ['sd-auto', 'sd-plain'].map((n) => {
        const g = guests.get(n);
        assert.equal(g?.status, 'Running', `${n} runs`);
        return g?.state.pid ?? 0;
      });
    };
    const first = pids();
    assert.ok(first.every((p) => p > 0));
    const daemon1 = unitProperty('MainPID');

    // A restart returns once the new daemon is ready (ExecStartPost).
    inMachineOk('systemctl restart trivisor');
    assert.notEqual(unitProperty('MainPID'), daemon1);
    assert.equal(inMachine('systemctl is-active trivisor').out.trim(), 'active');
    assert.deepEqual(pids(), first, 'the same processes: re-adopted, not restarted');
    inMachineOk(`kill -0 ${first.join(' ')}`);

    const daemon2 = unitProperty('MainPID');
    const agent = agentProperty('MainPID');
    inMachineOk(`dpkg -i /root/${path.basename(deb2)}`);
    // Its stop would fence (kill this member's HA guests): an upgrade leaves it running.
    assert.equal(agentProperty('MainPID'), agent, 'the upgrade left the HA agent running');
    assert.match(inMachineOk(`dpkg-query -W -f='\${Version}' trivisor`), /\+upgrade$/);
    assert.notEqual(unitProperty('MainPID'), daemon2, 'the upgrade restarted the daemon');
    assert.equal(inMachine('systemctl is-active trivisor').out.trim(), 'active');
    assert.deepEqual(pids(), first, 'the same processes after the upgrade');
    assert.equal(inMachineOk('trivisor exec sd-plain -- hostname').trim(), 'sd-plain');
    assert.match(
      inMachineOk('journalctl -u trivisor --no-pager -o cat'),
      /shutting down; guests keep running/,
    );
  });

  test('after a reboot of the container systemd starts the daemon, which starts exactly the boot.autostart guests', async () => {
    const before = guestsInMachine();
    await powerOffMachine();
    await bootMachine();
    assert.equal(inMachine('systemctl is-enabled trivisor').out.trim(), 'enabled');
    await eventually(
      'systemd started trivisor.service at boot',
      () => inMachine('systemctl is-active trivisor').out.trim() === 'active',
      120_000,
    );
    await eventually(
      'the autostart guest runs and the other is stopped',
      () => {
        const guests = guestsInMachine();
        return guests.get('sd-auto')?.status === 'Running' && guests.get('sd-plain')?.status === 'Stopped';
      },
      60_000,
    );
    const auto = guestsInMachine().get('sd-auto');
    assert.ok(auto?.state.pid, 'sd-auto has a process');
    inMachineOk(`kill -0 ${auto.state.pid}`);
    assert.equal(inMachineOk('trivisor exec sd-auto -- hostname').trim(), 'sd-auto');
    assert.ok(before.get('sd-auto')?.state.pid, 'sd-auto ran before the reboot');
    // The journal is kept across boots (/var/log/journal): the last boot's stop is in it too.
    const journal = inMachineOk('journalctl -u trivisor --no-pager -o cat');
    assert.match(journal, /Stopped trivisor\.service|Stopped Trivisor virtualization daemon/);
  });

  test('setup/start’s unit (install_systemd_unit) overrides the package’s under systemd and re-adopts its guests', async () => {
    const guest = guestsInMachine().get('sd-auto')?.state.pid;
    assert.ok(guest);
    const daemon = unitProperty('MainPID');
    // What setup/start does when systemd runs the host, for the package's state directory. The
    // checkout: this one's setup/, with the application (bin/, src/, node_modules…) and Node.js
    // of the package, which are a checkout's runtime files.
    const checkout = path.join(root, 'root/checkout');
    mkdirSync(path.join(checkout, 'setup/systemd'), { recursive: true });
    for (const f of [
      'setup/common.sh',
      'setup/systemd/trivisor.service',
      'setup/systemd/trivisor-ha-agent.service',
    ])
      writeFileSync(path.join(checkout, f), readFileSync(path.join(SRC, f)));
    inMachineOk(
      `for f in /usr/lib/trivisor/*; do [ "\${f##*/}" = setup ] || ln -s "$f" /root/checkout/; done && ` +
        'source /root/checkout/setup/common.sh && systemd_runs && ' +
        'TRIVISOR_NODE=/usr/lib/trivisor/node/bin/node install_systemd_unit /var/lib/trivisor',
    );
    assert.equal(unitProperty('FragmentPath'), '/etc/systemd/system/trivisor.service');
    assert.match(unitProperty('ExecStart'), /path=\/root\/checkout\/bin\/trivisor ;/);
    assert.equal(inMachine('systemctl is-enabled trivisor').out.trim(), 'enabled');
    assert.equal(inMachine('systemctl is-active trivisor').out.trim(), 'active');
    assert.notEqual(unitProperty('MainPID'), daemon, 'restarted on the checkout’s unit');
    assert.equal(guestsInMachine().get('sd-auto')?.state.pid, guest, 'the guest is re-adopted');
    await powerOffMachine();
  });
});
