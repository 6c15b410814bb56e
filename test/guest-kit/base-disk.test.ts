import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { access, lstat, mkdir, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../src/host/logger.ts';
import { connectQga, type QgaClient } from '../../src/host/qga-client.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { buildBaseDisk, MIN_BASE_DISK_BYTES } from '../../src/images/base-disk.ts';
import { buildBusyboxRootfs } from '../../src/images/busybox-image.ts';
import { BASE_DISK_NAME, KIT_INIT_MARKER, kitKernelArgs } from '../../src/images/guest-kit.ts';
import { imageFiles } from '../../src/images/image-files.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';

const runner = hostRunner();
const LOADER = '/.trivisor/lib/ld-linux-x86-64.so.2';
const IMAGE_INIT = [
  '/bin/sh',
  '-c',
  'hostname > /tmp/hostname-seen; echo "it\'s the image\'s init"; exec sleep 1000',
];

async function waitFor(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const present = (path: string) =>
  access(path).then(
    () => true,
    () => false,
  );

/** A loop-mounted disk image; `release` unmounts and detaches, whatever happened. */
async function loopMount(image: string, mountPoint: string, options: { readOnly: boolean }) {
  await mkdir(mountPoint, { recursive: true });
  const { stdout } = await runner.run([
    'losetup',
    '-f',
    '--show',
    ...(options.readOnly ? ['-r'] : []),
    image,
  ]);
  const device = stdout.trim();
  try {
    await runner.run(['mount', ...(options.readOnly ? ['-o', 'ro,noload'] : []), device, mountPoint]);
  } catch (e) {
    await runner.run(['losetup', '-d', device], { allowFailure: true });
    throw e;
  }
  let released = false;
  return {
    device,
    // Once only: a second detach could hit another test's device that reused the number.
    async release() {
      if (released) return;
      released = true;
      await runner.run(['umount', mountPoint], { allowFailure: true });
      await runner.run(['losetup', '-d', device], { allowFailure: true });
    },
  };
}

/** Cap bit 24: online resize (EXT4_IOC_RESIZE_FS) needs it, and some sandboxes drop it. */
async function hasSysResource(): Promise<boolean> {
  const status = await readFile('/proc/self/status', 'utf8');
  const eff = /CapEff:\s+([0-9a-f]+)/.exec(status)?.[1] ?? '0';
  return (BigInt(`0x${eff}`) & (1n << 24n)) !== 0n;
}

describe('base disk with the guest kit', { skip: process.getuid?.() !== 0 }, () => {
  let dir = '';
  let tree = '';
  let disk = '';
  const releases: Array<() => Promise<void>> = [];

  before(async () => {
    dir = await makeRunDir('basedisk');
    tree = join(dir, 'image', 'rootfs');
    await buildBusyboxRootfs(tree, { runner });
    disk = join(dir, 'image', 'disk.ext4');
    const info = await buildBaseDisk(tree, disk, { runner, initArgv: IMAGE_INIT });
    assert.equal(info.path, disk);
  });

  after(async () => {
    for (const release of releases.reverse()) await release().catch(() => {});
    if (dir) await removeRunDir(dir);
  });

  test('the disk is a clean ext4 file system of at least the minimum size, made without leftovers', async () => {
    const r = await runner.run(['e2fsck', '-fn', disk], { allowFailure: true });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.ok((await stat(disk)).size >= MIN_BASE_DISK_BYTES);
    assert.deepEqual((await readdir(join(dir, 'image'))).sort(), ['disk.ext4', 'rootfs']);
    assert.equal(await present(join(tree, '.trivisor')), false, 'the image tree itself is untouched');
  });

  test('it holds the image tree and the kit, whose programs run with the kit libraries', async () => {
    const mnt = join(dir, 'ro');
    const m = await loopMount(disk, mnt, { readOnly: true });
    releases.push(m.release);
    try {
      for (const rel of ['bin/busybox', 'etc/inittab', 'sbin/init']) {
        assert.ok(await present(join(mnt, rel)), `${rel} from the tree`);
      }
      for (const rel of ['busybox', 'init', 'image-init', 'bin/qemu-ga', 'bin/resize2fs', 'lib/libc.so.6']) {
        assert.ok(await present(join(mnt, '.trivisor', rel)), `/.trivisor/${rel}`);
      }
      assert.ok((await lstat(join(mnt, 'dev/console'))).isCharacterDevice());
      assert.equal(
        await readFile(join(mnt, '.trivisor/image-init'), 'utf8'),
        `/bin/sh -c 'hostname > /tmp/hostname-seen; echo "it'\\''s the image'\\''s init"; exec sleep 1000'\n`,
      );
      const syntax = await runner.run(['chroot', mnt, '/.trivisor/busybox', 'sh', '-n', '/.trivisor/init'], {
        allowFailure: true,
      });
      assert.equal(syntax.code, 0, syntax.stderr);
      const kitRun = (program: string, ...args: string[]) =>
        runner.run(['chroot', mnt, LOADER, '--library-path', '/.trivisor/lib', program, ...args], {
          allowFailure: true,
        });
      const ga = await kitRun('/.trivisor/bin/qemu-ga', '--version');
      assert.equal(ga.code, 0, ga.stderr);
      assert.match(ga.stdout, /QEMU Guest Agent/);
      const resize = await kitRun('/.trivisor/bin/resize2fs', '-h');
      assert.match(resize.stderr, /resize2fs 1\./);
    } finally {
      await m.release();
    }
  });

  test('/.trivisor/init prepares the system, starts the agent and runs the image init', async () => {
    // A writable, larger copy, booted in a sandbox of namespaces as a kernel would run init.
    const copy = join(dir, 'boot.ext4');
    await runner.run(['cp', '--sparse=always', disk, copy]);
    await runner.run(['chmod', '0644', copy]);
    await runner.run(['truncate', '-s', '512M', copy]);
    const mnt = join(dir, 'rw');
    const m = await loopMount(copy, mnt, { readOnly: false });
    releases.push(m.release);
    let sandbox: ChildProcess | undefined;
    let client: QgaClient | undefined;
    const console: Buffer[] = [];
    try {
      const cmdline = [
        'root=/dev/vda',
        ...kitKernelArgs({ hostname: 'kit-test', model: 'vm', agent: 'unix:/tmp/qga.sock' }),
      ].join(' ');
      sandbox = spawn(
        'unshare',
        // --net: the image's init runs DHCP on every NIC it sees; the host's must stay untouched.
        ['--mount', '--uts', '--net', '--pid', '--fork', '--kill-child', 'chroot', mnt, '/.trivisor/init'],
        {
          env: { TRIVISOR_KIT_CMDLINE: cmdline, PATH: '/usr/sbin:/usr/bin:/sbin:/bin' },
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      sandbox.stdout?.on('data', (d: Buffer) => console.push(d));
      sandbox.stderr?.on('data', (d: Buffer) => console.push(d));
      const text = () => Buffer.concat(console).toString();
      await waitFor(async () => text().includes("it's the image's init"), 20_000, 'the image init');
      assert.match(text(), new RegExp(`^${KIT_INIT_MARKER}$`, 'm'));
      assert.equal(await readFile(join(mnt, 'tmp/hostname-seen'), 'utf8'), 'kit-test\n');
      assert.equal(await readFile(join(mnt, 'etc/hostname'), 'utf8'), 'kit-test\n');

      await waitFor(() => present(join(mnt, 'tmp/qga.sock')), 20_000, 'the agent socket');
      client = await connectQga(join(mnt, 'tmp/qga.sock'), { requestTimeoutMs: 20_000 });
      await client.waitReady({ timeoutMs: 20_000 });
      const r = await client.exec(
        ['/bin/sh', '-c', 'hostname; cat /proc/1/cmdline | tr "\\0" " "; echo; mount'],
        {
          env: { PATH: '/bin:/sbin' },
        },
      );
      assert.equal(r.exitCode, 0, r.stderr.toString());
      const [hostname, pid1, ...mounts] = r.stdout.toString().split('\n');
      assert.equal(hostname, 'kit-test', 'the agent runs in the guest');
      assert.match(pid1 ?? '', /^sleep 1000/, 'the image init replaced the kit as pid 1');
      const mountText = mounts.join('\n');
      for (const fs of [
        ' on /proc type proc',
        ' on /sys type sysfs',
        ' on /dev type devtmpfs',
        ' on /.trivisor/run type tmpfs',
      ]) {
        assert.ok(mountText.includes(fs), `${fs} in ${mountText}`);
      }
      assert.match(mountText, / on \/ type ext4 \(rw/);
      if (await hasSysResource()) {
        const df = await client.exec(['/bin/df', '-k', '/'], {});
        const blocks = Number(df.stdout.toString().split('\n')[1]?.split(/\s+/)[1]);
        assert.ok(blocks > 400 * 1024, `the root grew to its 512 MiB device: ${df.stdout}`);
      }
    } finally {
      client?.close();
      if (sandbox?.pid !== undefined && sandbox.exitCode === null) {
        // The namespace's pid 1 is unshare's child: killing it ends everything in the sandbox.
        const children = await readFile(`/proc/${sandbox.pid}/task/${sandbox.pid}/children`, 'utf8').catch(
          () => '',
        );
        for (const pid of children.trim().split(/\s+/).filter(Boolean)) {
          try {
            process.kill(Number(pid), 'SIGKILL');
          } catch {}
        }
        const gone = new Promise((r) => sandbox?.once('exit', r));
        if (sandbox.exitCode === null) await gone;
      }
      await m.release();
    }
  });

  test('imageFiles.baseDisk() builds once for concurrent callers, into the image dir', async () => {
    const stateDir = join(dir, 'state');
    const images = imageFiles(stateDir, { runner, log: silentLogger() });
    const { fingerprint } = await images.addBusybox();
    const [a, b] = await Promise.all([images.baseDisk(fingerprint), images.baseDisk(fingerprint)]);
    assert.equal(a, join(stateDir, 'images', fingerprint, BASE_DISK_NAME));
    assert.match(BASE_DISK_NAME, /^disk-[0-9a-f]{12}\.ext4$/);
    assert.equal(b, a);
    const made = (await stat(a)).mtimeMs;
    assert.equal(await images.baseDisk(fingerprint), a);
    assert.equal((await stat(a)).mtimeMs, made, 'a made disk is never rebuilt');
    assert.deepEqual((await readdir(join(stateDir, 'images', fingerprint))).sort(), [
      BASE_DISK_NAME,
      'image.json',
      'trees',
    ]);
    const init = await runner.run(['debugfs', '-R', 'cat /.trivisor/image-init', a]);
    assert.equal(init.stdout, '/sbin/init\n');
    await assert.rejects(images.baseDisk('0'.repeat(64)), { code: 'NotFound' });
    await images.remove(fingerprint);
    assert.equal(await present(a), false);
  });
});
