import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cgroupParentOf } from '../../src/drivers/guest-cgroup.ts';
import { findCloudKernel } from '../../src/drivers/vm/boot-kit.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { eventually } from '../drivers/exec-helpers.ts';
import { type Daemon, startDaemon } from '../system/harness.ts';
import { buildDebianDisk, buildSecureBootDisk, DEBIAN_HOSTNAME, type DebianDisk } from './boot-media.ts';

/**
 * A whole-disk image of another OS (Debian 12 with its own kernel, GRUB for BIOS and EFI and
 * qemu-guest-agent, built by the test from Debian's packages, once for the file) imported and
 * run unmodified through the daemon and the CLI, under BIOS and under UEFI.
 */

/** A GUID of the test's own for the UEFI variables it writes from inside the guest. */
const VAR_GUID = '5f0a7c3e-1d2b-4c8e-9a71-17e0c0de0017';
const EFIVARS = '/sys/firmware/efi/efivars';
/** The UEFI global variables' GUID: SecureBoot-GUID is 4 bytes of attributes, then 1 when enforced. */
const EFI_GLOBAL = '8be4df61-93ca-11d2-aa0d-00e098032b8c';

const sha256Of = async (path: string): Promise<string> => {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
};

/** A stop may wait its whole --timeout 120 before it kills: the CLI gets longer than that. */
const STOP = { timeoutMs: 200_000 };
describe('vm guests that boot their own disk image', () => {
  let d: Daemon;
  let disk: DebianDisk;
  let media: string;
  const log = (name: string) => d.ok(['console', name, '--show-log']);
  const logins = (name: string) => log(name).split(`${DEBIAN_HOSTNAME} login:`).length - 1;
  const sh = (name: string, script: string) => d.cli(['exec', name, '--', 'sh', '-c', script]);
  /** Waits for the guest's own agent to answer (it starts late in the guest's boot). */
  const agentUp = (name: string, timeoutMs = 240_000) =>
    eventually(async () => sh(name, 'true').code === 0, timeoutMs, 2000);
  const cpuCgroup = (name: string) => `/sys/fs/cgroup/cpu${cgroupParentOf(d.stateDir)}/${name}`;
  const info = (name: string) =>
    JSON.parse(d.ok(['info', name, '--format', 'json'])) as { status: string; state: { pid: number | null } };

  before(async () => {
    d = await startDaemon();
    media = join(d.stateDir, 'test-media');
    await mkdir(media, { recursive: true });
    disk = await buildDebianDisk(media, { runner: hostRunner() });
  });
  after(async () => {
    await d?.destroy();
  });

  test('a whole-disk image imports as a vm disk image: checksum checked, fingerprint its sha256, stored once and sparse; ct and pvm refuse it', async () => {
    const sha = await sha256Of(disk.qcow2);
    const wrong = d.cli([
      'image',
      'import',
      disk.qcow2,
      '--alias',
      'deb12',
      '--checksum',
      `sha256:${'0'.repeat(64)}`,
    ]);
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /sha256 is [0-9a-f]{64}, not the 0{64}.*nothing was imported/);
    assert.match(
      d.ok(['image', 'import', disk.qcow2, '--alias', 'deb12', '--checksum', `sha256:${sha}`]),
      /Image deb12 /,
    );
    const image = JSON.parse(d.ok(['image', 'info', 'deb12', '--format', 'json'])) as {
      fingerprint: string;
      type: string;
      properties: Record<string, string>;
    };
    assert.equal(image.type, 'disk');
    assert.equal(image.fingerprint, sha);
    // Stored once, root's alone, sparse: the file holds less than the disk's size.
    const stored = join(d.stateDir, 'images', sha, 'disk.qcow2');
    const st = await stat(stored);
    assert.equal(st.mode & 0o777, 0o400);
    assert.equal((await stat(join(d.stateDir, 'images', sha))).mode & 0o777, 0o700);
    assert.ok(st.blocks * 512 < Number(image.properties['disk.virtual_size']), 'kept sparse');
    // The same disk again (under another alias) is the same image, not a second copy.
    d.ok(['image', 'import', disk.qcow2, '--alias', 'deb12-again']);
    const again = JSON.parse(d.ok(['image', 'info', 'deb12-again', '--format', 'json'])) as {
      fingerprint: string;
    };
    assert.equal(again.fingerprint, sha);
    for (const model of ['ct', 'pvm']) {
      const r = d.cli(['launch', 'deb12', `x-${model}`, '--model', model]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /whole-disk image .* only vm guests boot/);
    }
    // A file that is no disk image and no tarball.
    const junk = join(media, 'junk.img');
    await writeFile(junk, Buffer.alloc(1024 * 1024, 0x41));
    const bad = d.cli(['image', 'import', junk, '--alias', 'junk']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /neither a root file system tarball .* nor a whole-disk image/);
    assert.deepEqual(
      (JSON.parse(d.ok(['list', '--format', 'json'])) as unknown[]).length,
      0,
      'no guest was made',
    );
  });

  test('boots unmodified under BIOS: its own kernel, exec and files through its own agent, a volume and a NIC hot-plugged, limits changed live, typing on its screen, Ctrl+Alt+Del, stop through ACPI', async () => {
    const launched = Date.now();
    const r = d.cli(['launch', 'deb12', 'b1', '--model', 'vm', '-c', 'limits.memory=512MiB'], {
      timeoutMs: 600_000,
    });
    console.log(`launch took ${(Date.now() - launched) / 1000} s: ${r.code} ${r.stderr}`);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(await eventually(async () => logins('b1') >= 1, 240_000, 1000), log('b1'));
    assert.ok(await agentUp('b1'), 'its own qemu-guest-agent answers');
    const release = sh('b1', 'uname -r').stdout.trim();
    assert.equal(release, disk.kernelRelease, "the image's own kernel");
    assert.notEqual(release, (await findCloudKernel())?.kernelRelease, "not the kit's cloud kernel");
    assert.equal(sh('b1', 'test -d /.trivisor || echo no-kit').stdout.trim(), 'no-kit');
    // Files through its agent, with its own tools (no kit's busybox in it).
    const local = join(media, 'hello.txt');
    await writeFile(local, 'hello from the host\n');
    d.ok(['file', 'push', local, 'b1/root/hello.txt', '--mode', '0600']);
    assert.equal(sh('b1', 'stat -c %a /root/hello.txt').stdout.trim(), '600');
    d.ok(['file', 'pull', 'b1/root/hello.txt', join(media, 'back.txt')]);
    assert.equal(await readFile(join(media, 'back.txt'), 'utf8'), 'hello from the host\n');
    // A block volume comes and goes live (virtio-blk on a PCIe hot-plug port; the OS's own kernel takes it).
    d.ok(['storage', 'volume', 'create', 'default', 'v17', 'size=64MiB', '--type', 'block']);
    assert.match(d.ok(['storage', 'volume', 'attach', 'default', 'v17', 'b1']), /\(live\)/);
    assert.ok(
      await eventually(async () => sh('b1', 'cat /sys/block/vd*/serial').stdout.includes('vol-v17'), 30_000),
      'the guest sees the volume',
    );
    assert.match(d.ok(['storage', 'volume', 'detach', 'default', 'v17', 'b1']), /\(live\)/);
    assert.ok(
      await eventually(async () => !sh('b1', 'cat /sys/block/vd*/serial').stdout.includes('vol-v17'), 30_000),
      'and no longer',
    );
    d.ok(['storage', 'volume', 'delete', 'default', 'v17']);
    // A NIC comes and goes live too (virtio-net on a PCIe hot-plug port; its kernel's udev loads the driver).
    d.ok(['network', 'create', 'd17net', 'ipv4.address=198.18.217.1/24']);
    assert.match(d.ok(['network', 'attach', 'd17net', 'b1']), /\(live\)/);
    const nic = (
      JSON.parse(d.ok(['info', 'b1', '--format', 'json'])) as {
        state: { nics?: Record<string, { hwaddr: string }> };
      }
    ).state.nics?.eth0;
    assert.ok(nic, 'info lists the NIC');
    const macs = () => sh('b1', 'cat /sys/class/net/*/address').stdout;
    assert.ok(
      await eventually(async () => macs().includes(nic.hwaddr), 30_000),
      `the guest sees ${nic.hwaddr}`,
    );
    assert.match(d.ok(['network', 'detach', 'd17net', 'b1']), /\(live\)/);
    assert.ok(await eventually(async () => !macs().includes(nic.hwaddr), 30_000), 'and no longer');
    // Limits change live: the balloon takes memory back from the OS's own kernel, limits.cpu is a cfs quota.
    const memTotalKiB = () => Number(/MemTotal:\s+(\d+)/.exec(sh('b1', 'cat /proc/meminfo').stdout)?.[1]);
    const quota = () => readFile(`${cpuCgroup('b1')}/cpu.cfs_quota_us`, 'utf8').then((t) => t.trim());
    const booted = memTotalKiB();
    const set = d.cli(['config', 'set', 'b1', 'limits.memory=384MiB', 'limits.cpu=0.5']);
    assert.equal(set.code, 0, set.stderr);
    assert.doesNotMatch(set.stderr, /next restart/, 'both apply to the running guest');
    assert.ok(
      await eventually(async () => memTotalKiB() <= booted - 100 * 1024, 60_000),
      `MemTotal went down from ${booted} KiB`,
    );
    assert.equal(await quota(), '50000');
    // Back to what it booted with: the rest of the test boots it again, which half a CPU would slow down.
    d.ok(['config', 'set', 'b1', 'limits.memory=512MiB']);
    d.ok(['config', 'unset', 'b1', 'limits.cpu']);
    assert.equal(await quota(), '-1');
    assert.ok(
      await eventually(async () => memTotalKiB() >= booted - 8 * 1024, 60_000),
      'the balloon gave it back',
    );
    // The daemon killed with -9 finds the guest again when it comes back.
    const running = info('b1').state.pid;
    await d.kill9();
    await d.restart();
    assert.equal(info('b1').status, 'Running');
    assert.equal(info('b1').state.pid, running, 'the same QEMU');
    assert.equal(sh('b1', 'uname -r').stdout.trim(), disk.kernelRelease);
    // Typing on its screen: root logs in on tty1 (no password in this image) and runs a command.
    d.ok(['console', 'b1', '--type-text', 'root\n']);
    await new Promise((r) => setTimeout(r, 5000));
    d.ok(['console', 'b1', '--type-text', 'echo Typed-By_Trivisor:42 > /tmp/typed\n']);
    assert.ok(
      await eventually(async () => sh('b1', 'cat /tmp/typed').stdout === 'Typed-By_Trivisor:42\n', 30_000),
      'the typed line ran on tty1',
    );
    // No agent from now on, and Ctrl+Alt+Del reboots the OS inside the same QEMU.
    sh('b1', 'systemctl mask qemu-guest-agent');
    const pid = info('b1').state.pid;
    const offset = log('b1').length;
    d.ok(['console', 'b1', '--send-keys', 'ctrl-alt-del']);
    assert.ok(
      await eventually(async () => /Linux version[\s\S]*login:/.test(log('b1').slice(offset)), 240_000, 1000),
      'it booted again',
    );
    assert.equal(info('b1').state.pid, pid, 'a reboot of the guest, not of its QEMU');
    assert.equal(info('b1').status, 'Running');
    const exec = sh('b1', 'true');
    assert.notEqual(exec.code, 0);
    assert.match(exec.stderr, /has no guest agent: exec and files need qemu-guest-agent/);
    // Stop presses the ACPI power button: the OS powers itself off (systemd, then the kernel says so).
    const started = Date.now();
    d.ok(['stop', 'b1', '--timeout', '120'], STOP);
    assert.ok(Date.now() - started < 110_000, 'it went before the timeout (no kill)');
    assert.match(log('b1'), /reboot: Power down/);
    assert.equal(info('b1').status, 'Stopped');
  });

  test('vm.disk_bus=sata and vm.nic_model=e1000: the OS finds its root on an AHCI disk and an e1000 NIC', async () => {
    // d17net: made by the BIOS test, which hot-plugged a NIC of it.
    d.ok(['network', 'attach', 'd17net', 'b1']);
    d.ok(['config', 'set', 'b1', 'vm.disk_bus=sata', 'vm.nic_model=e1000']);
    // This boot's part of the log only: the earlier boots of b1 had virtio.
    const offset = log('b1').length;
    const boot = () => log('b1').slice(offset);
    d.ok(['start', 'b1']);
    assert.ok(
      await eventually(async () => boot().includes(`${DEBIAN_HOSTNAME} login:`), 240_000, 1000),
      boot(),
    );
    assert.match(boot(), /ahci 0000:.*SATA mode/);
    assert.match(boot(), /sd 0:0:0:0: \[sda\]/);
    assert.match(boot(), /EXT4-fs \(sda\d\): mounted/, 'its root is on the AHCI disk');
    assert.doesNotMatch(boot(), /virtio_blk .*\[vda\]/, 'no virtio disk');
    assert.match(boot(), /e1000 .*: Intel\(R\) PRO\/1000 Network Connection/);
    d.ok(['stop', 'b1', '--timeout', '120'], STOP);
    d.ok(['delete', 'b1']);
  });

  test('boots unmodified under UEFI; a snapshot and a copy keep its UEFI variables, restore puts them back', async () => {
    d.ok(['launch', 'deb12', 'u1', '--model', 'vm', '-c', 'limits.memory=512MiB', '-c', 'vm.firmware=uefi']);
    assert.ok(await agentUp('u1', 300_000), log('u1'));
    assert.equal(sh('u1', `test -d ${EFIVARS} && echo uefi`).stdout.trim(), 'uefi');
    // A variable of the test's own, written by the OS into the firmware's store (non-volatile).
    const writeVar = (name: string, value: string) =>
      sh('u1', `printf '\\007\\000\\000\\000${value}' > ${EFIVARS}/${name}-${VAR_GUID}`);
    const vars = (name: string) =>
      sh(name, `ls ${EFIVARS} | grep -- '-${VAR_GUID}$' | sed 's/-${VAR_GUID}$//' | sort`)
        .stdout.trim()
        .split('\n')
        .filter(Boolean);
    assert.equal(writeVar('TrivisorBefore', 'one').code, 0);
    assert.deepEqual(vars('u1'), ['TrivisorBefore']);
    d.ok(['snapshot', 'create', 'u1', 's1']);
    assert.equal(writeVar('TrivisorAfter', 'two').code, 0);
    assert.deepEqual(vars('u1'), ['TrivisorAfter', 'TrivisorBefore']);
    d.ok(['stop', 'u1', '--timeout', '120'], STOP);
    // A copy of the snapshot boots with the variables of that moment.
    d.ok(['copy', 'u1/s1', 'u2']);
    d.ok(['start', 'u2']);
    assert.ok(await agentUp('u2', 300_000), log('u2'));
    assert.deepEqual(vars('u2'), ['TrivisorBefore']);
    d.ok(['stop', 'u2', '--timeout', '120'], STOP);
    d.ok(['delete', 'u2']);
    // Restoring the snapshot takes the disk and the variables back.
    d.ok(['snapshot', 'restore', 'u1', 's1']);
    d.ok(['start', 'u1']);
    assert.ok(await agentUp('u1', 300_000), log('u1'));
    assert.deepEqual(vars('u1'), ['TrivisorBefore']);
    d.ok(['stop', 'u1', '--timeout', '120'], STOP);
    // A backup carries them too: the imported guest's firmware store is the exported one's.
    const archive = join(media, 'u1.tar');
    d.ok(['export', 'u1', archive]);
    d.ok(['import', archive, 'u3']);
    const varsOf = (name: string) => readFile(join(d.stateDir, 'guests', name, 'uefi-vars.fd'));
    assert.ok((await varsOf('u3')).equals(await varsOf('u1')), 'the same UEFI variables');
    assert.equal(
      (JSON.parse(d.ok(['config', 'show', 'u3', '--format', 'json'])) as { config: Record<string, string> })
        .config['vm.firmware'],
      'uefi',
    );
    d.ok(['delete', 'u3']);
  });

  test("vm.secureboot=true: OVMF with Microsoft's keys enforces Secure Boot and refuses the disk's unsigned GRUB", async () => {
    d.ok([
      'launch',
      'deb12',
      'sb1',
      '--model',
      'vm',
      '-c',
      'limits.memory=512MiB',
      '-c',
      'vm.firmware=uefi',
      '-c',
      'vm.secureboot=true',
    ]);
    assert.ok(
      await eventually(
        async () => /failed to load Boot\d+ .*: Access Denied/.test(log('sb1')),
        180_000,
        1000,
      ),
      log('sb1'),
    );
    assert.doesNotMatch(log('sb1'), /Linux version/);
    // Secure Boot without UEFI is no setting.
    const r = d.cli(['config', 'set', 'sb1', 'vm.firmware=bios']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /vm\.secureboot=true needs vm\.firmware=uefi/);
    d.ok(['delete', '--force', 'sb1']);
  });

  test('a signed OS (shim, Debian-signed GRUB and kernel) boots under Secure Boot; an incremental chain imported onto a dir pool, and a copy to it, carry its disk and its UEFI variables', async () => {
    const signed = await buildSecureBootDisk(disk, media, { runner: hostRunner() });
    d.ok(['image', 'import', signed, '--alias', 'deb12-sb']);
    const sbOn = (name: string) =>
      sh(name, `od -An -tu1 -j4 -N1 ${EFIVARS}/SecureBoot-${EFI_GLOBAL}`).stdout.trim();
    const writeVar = (name: string, variable: string) =>
      sh(name, `printf '\\007\\000\\000\\000x' > ${EFIVARS}/${variable}-${VAR_GUID}`);
    const vars = (name: string) =>
      sh(name, `ls ${EFIVARS} | grep -- '-${VAR_GUID}$' | sed 's/-${VAR_GUID}$//' | sort`)
        .stdout.trim()
        .split('\n')
        .filter(Boolean);
    const storeOf = (dir: string) => readFile(join(dir, 'uefi-vars.fd'));
    d.ok([
      'launch',
      'deb12-sb',
      'sb2',
      '--model',
      'vm',
      '-c',
      'limits.memory=512MiB',
      '-c',
      'vm.firmware=uefi',
      '-c',
      'vm.secureboot=true',
    ]);
    assert.ok(await agentUp('sb2', 360_000), log('sb2'));
    // Enforced, and its kernel knows it (it locks itself down as Debian's does under Secure Boot).
    assert.equal(sbOn('sb2'), '1', 'the SecureBoot variable says enforced');
    assert.match(log('sb2'), /secureboot: Secure boot enabled/);
    assert.equal(sh('sb2', 'uname -r').stdout.trim(), disk.kernelRelease, "Debian's own signed kernel");
    // An incremental chain: a full backup of the running guest, a variable written after it, the next link.
    assert.equal(writeVar('sb2', 'TrivisorFull').code, 0);
    const f0 = join(media, 'sb2-f0');
    const i1 = join(media, 'sb2-i1');
    assert.match(d.ok(['export', 'sb2', f0, '--incremental']), /^Full backup: starts chain /);
    assert.equal(writeVar('sb2', 'TrivisorInc').code, 0);
    assert.deepEqual(vars('sb2'), ['TrivisorFull', 'TrivisorInc']);
    d.ok(['stop', 'sb2', '--timeout', '120'], STOP);
    assert.match(d.ok(['export', 'sb2', i1, '--incremental']), /^Incremental backup 1 of chain /);
    d.ok(['storage', 'create', 'plain', 'dir']);
    const plain = (JSON.parse(d.ok(['storage', 'info', 'plain', '--format', 'json'])) as { path: string })
      .path;
    // A copy to the other pool takes the store with it.
    d.ok(['copy', 'sb2', 'sb3', '--storage', 'plain']);
    const source = await storeOf(join(d.stateDir, 'guests', 'sb2'));
    for (const v of ['TrivisorFull', 'TrivisorInc']) {
      assert.ok(source.includes(Buffer.from(v, 'utf16le')), `${v} is in the store`);
    }
    assert.ok((await storeOf(join(plain, 'guests', 'sb3'))).equals(source), 'the copy has the same store');
    d.ok(['delete', 'sb3']);
    // The chain, imported in order onto the dir pool: the same disk (its overlay over the image read
    // through) and the same store as the guest it came from.
    d.ok(['import', f0, 'sb4', '--storage', 'plain']);
    d.ok(['import', i1, 'sb4']);
    assert.ok((await storeOf(join(plain, 'guests', 'sb4'))).equals(source), 'the chain carried the store');
    const same = await hostRunner().run(
      [
        'qemu-img',
        'compare',
        '-f',
        'qcow2',
        '-F',
        'qcow2',
        join(d.stateDir, 'guests', 'sb2', 'root.qcow2'),
        join(plain, 'guests', 'sb4', 'root.qcow2'),
      ],
      { allowFailure: true },
    );
    assert.equal(same.code, 0, same.stdout + same.stderr);
    d.ok(['delete', 'sb4', 'sb2']);
    d.ok(['storage', 'delete', 'plain']);
  });
});
