import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cgroupParentOf } from '../../src/drivers/ct/ct-driver.ts';
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

describe('the Debian package in a fresh Debian 12 root without systemd', () => {
  let run: string;
  let root: string;
  let holder: ChildProcess | undefined;
  let deb1: string;
  let deb2: string;
  /** The guest's process, which outlives the daemon through the upgrade and the removal. */
  let guest = 0;
  /** Shell that moves its shell into the run's cgroup in every hierarchy. */
  let joinRunCgroup = 'false';

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
    const hierarchies = cgroupHierarchies();
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
    const mountCgroups = hierarchies
      .map((h) =>
        h.type === 'cgroup2'
          ? `mkdir -p "$root${h.mountPoint}" && mount -t cgroup2 cgroup2 "$root${h.mountPoint}"`
          : `mkdir -p "$root${h.mountPoint}" && mount -t cgroup -o ${h.options} cgroup "$root${h.mountPoint}"`,
      )
      .join('\n');
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
    if (run) {
      const report = await removeRunDir(run);
      assert.deepEqual(report.left.map(describeThing), [], 'the run leaves nothing behind');
    }
  });

  test('it installs with the engines’ packages, and its CLI, unit, completion and man pages are in place', () => {
    inRoot('apt-get update -qq', 'host');
    const install = `apt-get install -y -qq --no-install-recommends /tmp/${path.basename(deb1)}`;
    // The packages the host's cache has are copied in (links cannot cross CI's bind mounts); what
    // had to be downloaded goes back into it, renamed into place so that no apt sees half a file.
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
    assert.match(out, /systemd does not run here/);
    for (const file of [
      '/usr/bin/trivisor',
      '/lib/systemd/system/trivisor.service',
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
});
