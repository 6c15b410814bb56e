import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  access,
  chmod,
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  readlink,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isTrivisorError } from '../../src/core/errors.ts';
import type { GuestSpec, ProcessIdentity } from '../../src/core/types.ts';
import { DEFAULT_UML_KERNEL } from '../../src/drivers/pvm/pvm-driver.ts';
import { umlCgroupPids } from '../../src/drivers/pvm/uml-cgroup.ts';
import { SETARCH } from '../../src/drivers/pvm/uml-command.ts';
import { BWRAP, programFilesOf, SETPRIV } from '../../src/drivers/pvm/uml-jail.ts';
import { UML_DENIED_SYSCALLS, umlSeccompProgram } from '../../src/drivers/pvm/uml-seccomp.ts';
import { readChildPids } from '../../src/host/proc-stat.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { eventually, execIn } from '../drivers/exec-helpers.ts';
import { testGuestSpec } from '../drivers/guest-spec.ts';
import { makePvmFixture, type PvmFixture } from './pvm-fixture.ts';

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/** Every path below `root` (not following links), as the process whose root it is sees it. */
async function walk(root: string, at = '/'): Promise<Array<{ path: string; dir: boolean }>> {
  const out: Array<{ path: string; dir: boolean }> = [];
  for (const entry of await readdir(join(root, at), { withFileTypes: true })) {
    const path = join(at, entry.name);
    out.push({ path, dir: entry.isDirectory() });
    if (entry.isDirectory()) out.push(...(await walk(root, path)));
  }
  return out;
}

/** Fields of /proc/PID/status. */
async function procStatus(pid: number): Promise<Record<string, string>> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8');
  return Object.fromEntries(
    text
      .split('\n')
      .filter((l) => l.includes(':'))
      .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()]),
  );
}

describe('a pvm guest reaches nothing of the host (decision 0017)', () => {
  let f: PvmFixture;
  const specs: GuestSpec[] = [];
  const guest = (name: string, config: Record<string, string> = {}): GuestSpec => {
    const s = testGuestSpec(name, 'pvm', config);
    specs.push(s);
    return s;
  };

  before(async () => {
    f = await makePvmFixture();
  });

  after(async () => {
    for (const s of specs) {
      await f.driver.stop(s, { timeoutMs: 0, force: true }).catch(() => {});
      await f.driver.delete(s).catch(() => {});
    }
    await f.cleanup();
  });

  const started = new Map<string, ProcessIdentity>();
  const running = async (name: string): Promise<{ spec: GuestSpec; id: ProcessIdentity }> => {
    const s = specs.find((x) => x.name === name) ?? guest(name, { 'limits.memory': '64MiB' });
    let id = started.get(name);
    if (!id) {
      await f.driver.create(s, f.image);
      id = await f.driver.start(s, f.image);
      started.set(name, id);
    }
    return { spec: s, id };
  };

  test("guest root's hostfs mounts show nothing of the host: not its files, not the state dir, no write to its /tmp", async () => {
    const { spec: s } = await running('jail-a');
    // Something of the daemon's (as the store is) and something of the host's, both world-readable.
    const secret = join(f.stateDir, 'store-secret');
    const secretText = `secret-${randomBytes(6).toString('hex')}`;
    await writeFile(secret, secretText, { mode: 0o644 });
    const hostname = (await readFile('/etc/hostname', 'utf8')).trim();
    const planted = `trivisor-hostfs-${randomBytes(6).toString('hex')}`;
    try {
      // Every way of naming the host's root: the default, `/`, and climbing out of the hostfs= dir.
      const script = [
        'mkdir -p /mnt/h',
        `for root in default / .. ../.. ../../../../.. ${f.stateDir}; do`,
        '  if [ "$root" = default ]; then mount -t hostfs none /mnt/h; else mount -t hostfs none /mnt/h -o "$root"; fi || { echo "no-mount $root"; continue; }',
        '  echo "mounted $root"',
        '  cat /mnt/h/etc/hostname 2>/dev/null && echo "READ-HOSTNAME $root"',
        `  cat /mnt/h${secret} 2>/dev/null && echo "READ-SECRET $root"`,
        `  ls /mnt/h${f.stateDir} 2>/dev/null | grep -q . && echo "LISTED-STATE $root"`,
        `  touch /mnt/h/tmp/${planted} 2>/dev/null && echo "WROTE-TMP $root"`,
        '  ls -a /mnt/h | tr "\\n" " "; echo',
        '  umount /mnt/h',
        'done',
      ].join('\n');
      const r = await execIn(f.driver, s, ['/bin/sh', '-c', script], { timeoutMs: 60_000 });
      const out = `${r.stdout}${r.stderr}`;
      assert.doesNotMatch(out, /READ-HOSTNAME|READ-SECRET|LISTED-STATE|WROTE-TMP/, out);
      assert.ok(!out.includes(secretText), out);
      if (hostname.length >= 4) assert.ok(!out.includes(hostname), `the host's name showed: ${out}`);
      assert.equal(await exists(join('/tmp', planted)), false, "a file appeared in the host's /tmp");
    } finally {
      await rm(join('/tmp', planted), { force: true });
      await rm(secret, { force: true });
    }
  });

  test("the UML processes' root holds only the jail: the kernel, its libraries, its own files", async () => {
    const { spec: s, id } = await running('jail-a');
    const guestDir = join(f.stateDir, 'guests', s.name);
    const runtimeDir = join(f.stateDir, 'run', 'pvm', s.name);
    const programs = await programFilesOf([DEFAULT_UML_KERNEL, SETPRIV, SETARCH], hostRunner());
    const baseDisk = await f.image.baseDisk();
    const files = new Set([
      ...programs,
      '/dev/null',
      '/dev/urandom',
      '/dev/net/tun',
      '/proc/cpuinfo',
      baseDisk,
      join(guestDir, 'config.ext4'),
    ]);
    const ownDirs = [join(guestDir, 'disk'), join(runtimeDir, 'uml'), '/.uml/memory'];
    const dirs = new Set(['/.uml', '/.uml/empty', '/.uml/memory', '/.uml/volumes', ...ownDirs]);
    for (const path of [...files, ...ownDirs]) {
      for (let d = join(path, '..'); d !== '/'; d = join(d, '..')) dirs.add(d);
    }
    const seen = await walk(`/proc/${id.pid}/root`);
    const within = (path: string) => ownDirs.some((d) => path.startsWith(`${d}/`));
    const strays = seen.filter((e) => !within(e.path) && !(e.dir ? dirs : files).has(e.path));
    assert.deepEqual(strays, [], 'nothing else of the host is in the jail');
    const paths = new Set(seen.map((e) => e.path));
    for (const must of [
      DEFAULT_UML_KERNEL,
      baseDisk,
      join(guestDir, 'disk', 'root.cow'),
      join(runtimeDir, 'uml', 'uml', 'mconsole'),
    ])
      assert.ok(paths.has(must), `${must} is in the jail`);
    assert.ok(
      !paths.has(join(runtimeDir, 'uml.json')) && !paths.has(join(runtimeDir, 'agent.in')),
      "the daemon's own files are not",
    );
    assert.deepEqual(await readdir(`/proc/${id.pid}/root/.uml/empty`), [], "hostfs's root is empty");
    // The host's root is gone from the namespace, not just out of sight: these are all its mounts.
    const mountinfo = await readFile(`/proc/${id.pid}/mountinfo`, 'utf8');
    const points = mountinfo
      .trim()
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '');
    const mountable = new Set(['/', ...files, '/.uml/memory', '/.uml/volumes', ...ownDirs]);
    assert.deepEqual(
      points.filter((m) => !mountable.has(m)),
      [],
      mountinfo,
    );
    assert.match(mountinfo.split('\n')[0] ?? '', /^\S+ \S+ \S+ \S+ \/ ro,/, "the jail's root is read-only");
  });

  test('every UML process runs as the guest uid under the seccomp filter with no capabilities; bwrap waits outside', async () => {
    const { spec: s, id } = await running('jail-a');
    const uid = Number((await readFile(join(f.stateDir, 'guests', s.name, 'uid'), 'utf8')).trim());
    const pids = await umlCgroupPids(`${f.cgroupParent}/${s.name}`);
    const kernel: number[] = [];
    const others: number[] = [];
    for (const pid of pids) {
      // A guest process that ended meanwhile (each one is a host process of the kernel's) is gone.
      const exe = await readlink(`/proc/${pid}/exe`).catch(() => undefined);
      if (exe !== undefined) (exe === DEFAULT_UML_KERNEL ? kernel : others).push(pid);
    }
    assert.ok(
      kernel.includes(id.pid) && kernel.length >= 3,
      `the kernel and its helpers: ${kernel.join(' ')}`,
    );
    for (const pid of kernel) {
      const st = await procStatus(pid).catch(() => undefined);
      if (!st) continue;
      assert.equal(st.Seccomp, '2', `pid ${pid} is under a seccomp filter`);
      assert.equal(st.NoNewPrivs, '1');
      assert.deepEqual(st.Uid?.split(/\s+/), [uid, uid, uid, uid].map(String));
      assert.deepEqual(st.Gid?.split(/\s+/), [uid, uid, uid, uid].map(String));
      assert.equal(st.Groups ?? '', '');
      for (const set of ['CapInh', 'CapPrm', 'CapEff', 'CapAmb'])
        assert.equal(st[set], '0000000000000000', `${set} of ${pid}`);
    }
    // The kernel runs without the host's address randomization (ADDR_NO_RANDOMIZE, decision 0081),
    // so that its brk, and with it the guest's memory, is the same at every boot.
    assert.equal(await readFile(`/proc/${id.pid}/personality`, 'utf8'), '00040000\n');
    // bwrap's first process: the kernel's parent, in the host's view, root without any capability.
    assert.equal(others.length, 1, `one process that is not the kernel: ${others.join(' ')}`);
    const [monitor] = others as [number];
    assert.equal(await readlink(`/proc/${monitor}/exe`), BWRAP);
    assert.deepEqual(await readChildPids(monitor), [id.pid]);
    const st = await procStatus(monitor);
    for (const set of ['CapInh', 'CapPrm', 'CapEff', 'CapAmb'])
      assert.equal(st[set], '0000000000000000', `${set} of bwrap`);
    // Only the kernel is started so: bwrap, root outside the jail, keeps its randomization.
    assert.equal(await readFile(`/proc/${monitor}/personality`, 'utf8'), '00000000\n');
  });

  test('the filter denies what it lists in the real kernel, even to root', async () => {
    const dir = join(f.dir, 'seccomp-probe');
    await mkdir(dir, { recursive: true });
    const program = join(dir, 'filter.bpf');
    await writeFile(program, umlSeccompProgram());
    // Called as root with null arguments: were one not denied, it must do no harm. So not acct(NULL)
    // (it would stop the host's process accounting) nor kexec_load (it would unload a loaded kernel);
    // the unit test runs the program over those. sethostname runs in a UTS namespace of its own.
    const unsafe = new Set(['acct', 'kexec_load']);
    const probes = Object.entries({ ...UML_DENIED_SYSCALLS, getpid: 39 }).filter(([n]) => !unsafe.has(n));
    // perl asks for each call; a denied one answers EPERM before the kernel looks at the arguments.
    const script = `for my $c (@ARGV) { my ($n, $nr) = split /=/, $c; my $r = syscall($nr + 0, 0, 0, 0, 0, 0); print "$n ", ($r < 0 ? ($! + 0) : 'ok'), "\\n"; }
      socket(my $s, 2, 1, 0) ? print "inet ok\\n" : print "inet ", ($! + 0), "\\n";
      socket(my $u, 1, 1, 0) ? print "unix ok\\n" : print "unix ", ($! + 0), "\\n";`;
    const r = spawnSync(
      '/bin/sh',
      [
        '-c',
        'exec 9<"$0"; exec bwrap --unshare-uts --unshare-ipc --ro-bind / / --dev-bind /dev /dev --seccomp 9 -- /usr/bin/perl -e "$@"',
        program,
        script,
        ...probes.map(([n, nr]) => `${n}=${nr}`),
      ],
      { encoding: 'utf8' },
    );
    assert.equal(r.status, 0, r.stderr);
    const answers = Object.fromEntries(
      r.stdout
        .trim()
        .split('\n')
        .map((l) => l.split(' ') as [string, string]),
    );
    for (const [name] of probes.filter(([n]) => n !== 'getpid'))
      assert.equal(answers[name], '1', `${name} gives EPERM`);
    assert.equal(answers.getpid, 'ok');
    assert.equal(answers.inet, '1', 'no IP socket');
    assert.equal(answers.unix, 'ok');
    await rm(dir, { recursive: true, force: true });
  });

  test('the state dir may be closed to every other user: the guest starts and the driver opens nothing for it', async () => {
    const s = guest('jail-closed', { 'limits.memory': '64MiB' });
    await f.driver.create(s, f.image);
    await chmod(f.stateDir, 0o700);
    await chmod(join(f.stateDir, 'guests'), 0o700);
    try {
      await f.driver.start(s, f.image);
      const r = await execIn(f.driver, s, ['/bin/sh', '-c', 'echo up']);
      assert.equal(r.stdout, 'up\n');
      assert.equal((await stat(f.stateDir)).mode & 0o777, 0o700, 'the state dir is still closed');
      assert.equal((await stat(join(f.stateDir, 'guests'))).mode & 0o777, 0o700);
      assert.equal(
        (await lstat(join(f.stateDir, 'guests', s.name))).mode & 0o777,
        0o700,
        "the guest's dir is root's",
      );
      await f.driver.stop(s, { timeoutMs: 0, force: true });
      await f.driver.delete(s);
      await f.assertNoLeftovers(s);
    } finally {
      await chmod(f.stateDir, 0o755);
      await chmod(join(f.stateDir, 'guests'), 0o755).catch(() => {});
    }
  });

  test('a reboot from inside re-execs the kernel in its jail: same process, still filtered', async () => {
    const { spec: s, id } = await running('jail-a');
    const log = join(f.stateDir, 'guests', s.name, 'console.log');
    const before = (await stat(log)).size;
    await execIn(f.driver, s, ['/bin/sh', '-c', '(sleep 1; reboot) >/dev/null 2>&1 &']);
    assert.ok(
      await eventually(
        async () => (await readFile(log)).subarray(before).includes('trivisor: init'),
        90_000,
        250,
      ),
      'the guest came up again',
    );
    assert.deepEqual((await f.driver.inspect(s, id)).process, id, 'UML re-exec keeps the pid and start time');
    const st = await procStatus(id.pid);
    assert.equal(st.Seccomp, '2');
    assert.ok(await exists(`/proc/${id.pid}/root/.uml/empty`), 'still in its jail');
    assert.ok(
      await eventually(
        async () => (await execIn(f.driver, s, ['echo', 'back']).catch(() => undefined))?.stdout === 'back\n',
        60_000,
        500,
      ),
      'its agent answers again',
    );
  });

  test('a COW header rebased onto another host file is refused at the next start: that file never enters the jail', async () => {
    const s = guest('jail-rebase', { 'limits.memory': '64MiB' });
    await f.driver.create(s, f.image);
    await f.driver.start(s, f.image);
    await f.driver.stop(s, { timeoutMs: 0, force: true });
    // The kernel owns its COW file, header included: a taken-over one could name any file there.
    const cow = join(f.stateDir, 'guests', s.name, 'disk', 'root.cow');
    const header = Buffer.alloc(4096);
    header.write('/etc/passwd', 0, 'utf8');
    const handle = await open(cow, 'r+');
    try {
      await handle.write(header, 0, header.length, 32);
    } finally {
      await handle.close();
    }
    await assert.rejects(
      f.driver.start(s, f.image),
      (e: unknown) =>
        isTrivisorError(e) && e.code === 'FailedPrecondition' && /not an image's base disk/.test(e.message),
    );
    assert.equal((await f.driver.inspect(s, undefined)).state, 'stopped');
    await f.assertNoLeftovers(s, { runtimeOnly: true });
    await f.driver.delete(s);
  });
});
