import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { connectQmp } from '../../src/drivers/vm/qmp-client.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { eventually } from '../drivers/exec-helpers.ts';
import { type Daemon, startDaemon } from '../system/harness.ts';
import { buildMemtestIso, MEMTEST_BANNER } from './boot-media.ts';
import { decodePng, screenContent } from './png.ts';
import { readRfbInit } from './rfb.ts';

/**
 * Installing from an ISO, through the daemon and the CLI: a blank disk, an installer-like ISO
 * (memtest86+ on a GRUB CD made by the test) in the CD-ROM drive, its screen and keyboard.
 */
describe('vm guests installed from an ISO', () => {
  let d: Daemon;
  let iso: string;
  let media: string;
  const consoleLog = (name: string) => d.ok(['console', name, '--show-log']);

  before(async () => {
    d = await startDaemon();
    media = join(d.stateDir, 'test-media');
    await mkdir(media, { recursive: true });
    iso = await buildMemtestIso(media, hostRunner());
  });
  after(async () => {
    await d?.destroy();
  });

  /** One QMP command on the guest's own socket (the test runs as root, as the daemon does). */
  const qmp = async <T>(guest: string, command: string, args?: Record<string, unknown>): Promise<T> => {
    const q = await connectQmp(join(d.stateDir, 'run', 'vm', guest, 'qmp.sock'), { timeoutMs: 10_000 });
    try {
      return await q.execute<T>(command, args);
    } finally {
      q.close();
    }
  };

  test('create --empty --iso boots a blank disk from the ISO in its CD-ROM; --screenshot captures its first screen', async () => {
    const created = d.ok([
      'create',
      'inst1',
      '--empty',
      '--model',
      'vm',
      '-c',
      'limits.memory=256MiB',
      '-c',
      'limits.disk=1GiB',
      '--iso',
      iso,
    ]);
    assert.match(created, /Created inst1 with ISO memtest86/);
    // The ISO is an iso volume of the default pool now, attached as inst1's medium.
    const vol = JSON.parse(d.ok(['storage', 'volume', 'info', 'default', 'memtest86', '-f', 'json'])) as {
      type: string;
      sizeBytes: number;
      attachments: Array<{ guest: string }>;
    };
    assert.equal(vol.type, 'iso');
    assert.equal(vol.sizeBytes, (await stat(iso)).size);
    assert.deepEqual(
      vol.attachments.map((a) => a.guest),
      ['inst1'],
    );
    d.ok(['start', 'inst1']);
    // The disk is blank: the firmware boots the CD, GRUB starts memtest86+, which says so on ttyS0.
    assert.ok(
      await eventually(async () => MEMTEST_BANNER.test(consoleLog('inst1')), 120_000),
      consoleLog('inst1'),
    );
    const png = join(media, 'inst1.png');
    assert.ok(
      await eventually(async () => {
        d.ok(['console', 'inst1', '--screenshot', png]);
        return screenContent(decodePng(await readFile(png))).foreground > 2000;
      }, 60_000),
      'the screen shows something',
    );
    const screen = decodePng(await readFile(png));
    assert.ok(
      screen.width >= 640 && screen.height >= 400,
      `a whole screen: ${screen.width}x${screen.height}`,
    );
    const content = screenContent(screen);
    assert.ok(content.colours >= 2, 'not one flat colour');
    console.log(
      `screen ${screen.width}x${screen.height}, ${content.foreground} foreground pixels, ${content.colours} colours`,
    );
  });

  test('console --type vga relays the display to a local VNC viewer: RFB from QEMU, the guest named, its screen size', async () => {
    const socket = join(media, 'vnc.sock');
    const cli = spawn(
      join(import.meta.dirname, '../../bin/trivisor'),
      ['console', 'inst1', '--type', 'vga', '--listen', socket],
      {
        env: {
          ...process.env,
          TRIVISOR_DIR: d.stateDir,
          TRIVISOR_CONFIG_DIR: join(d.stateDir, 'cli-config'),
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stderr = '';
    cli.stderr.on('data', (b: Buffer) => {
      stderr += b.toString();
    });
    try {
      assert.ok(
        await eventually(
          async () => (await stat(socket).catch(() => undefined))?.isSocket() === true,
          30_000,
        ),
        stderr,
      );
      const viewer = connect(socket);
      try {
        const init = await readRfbInit(viewer);
        assert.equal(init.version, 'RFB 003.008');
        assert.equal(init.name, 'QEMU (inst1)');
        const png = decodePng(await readFile(join(media, 'inst1.png')));
        assert.deepEqual([init.width, init.height], [png.width, png.height]);
        assert.ok(init.updateBytes > 0, 'a framebuffer update came');
      } finally {
        viewer.destroy();
      }
    } finally {
      if (cli.exitCode === null && cli.signalCode === null) {
        cli.kill('SIGINT');
        await new Promise((r) => cli.once('exit', r));
      }
    }
    assert.equal(await stat(socket).catch(() => undefined), undefined, 'the CLI removed its socket');
  });

  test('config device remove and add eject and insert the ISO live (QMP): the drive is empty, then holds it again', async () => {
    const drives = () =>
      qmp<Array<{ qdev?: string; inserted?: { 'node-name'?: string } }>>('inst1', 'query-block').then(
        (blocks) =>
          Object.fromEntries(
            blocks
              .filter((b) => b.qdev === 'cd0' || b.qdev === 'cd1')
              .map((b) => [b.qdev, b.inserted?.['node-name'] ?? null]),
          ),
      );
    assert.deepEqual(await drives(), { cd0: 'iso-memtest86', cd1: null });
    assert.match(
      d.ok(['config', 'device', 'remove', 'inst1', 'memtest86']),
      /Detached volume memtest86 from inst1 \(live\)/,
    );
    assert.deepEqual(await drives(), { cd0: null, cd1: null });
    assert.equal(
      (JSON.parse(d.ok(['info', 'inst1', '--format', 'json'])) as { disks?: unknown }).disks,
      undefined,
    );
    assert.match(
      d.ok(['config', 'device', 'add', 'inst1', 'cdrom', 'source=memtest86']),
      /Attached volume memtest86 to inst1 as memtest86 \(live\)/,
    );
    assert.deepEqual(await drives(), { cd0: 'iso-memtest86', cd1: null });
    // The guest ran on throughout.
    assert.equal(
      (JSON.parse(d.ok(['info', 'inst1', '--format', 'json'])) as { status: string }).status,
      'Running',
    );
  });

  test('a NIC is hot-plugged into the ISO-booted guest: QEMU has it with the MAC info shows; detached while stopped, the next start has none', async () => {
    d.ok(['network', 'create', 'isonet', 'ipv4.address=198.18.218.1/24']);
    assert.match(d.ok(['network', 'attach', 'isonet', 'inst1']), /\(live\)/);
    const nic = (
      JSON.parse(d.ok(['info', 'inst1', '--format', 'json'])) as {
        state: { nics?: Record<string, { hwaddr: string }> };
      }
    ).state.nics?.eth0;
    assert.ok(nic, 'info lists the NIC');
    const device = '/machine/peripheral/nic-eth0';
    assert.equal(await qmp<string>('inst1', 'qom-get', { path: device, property: 'mac' }), nic.hwaddr);
    assert.equal(await qmp<string>('inst1', 'qom-get', { path: device, property: 'type' }), 'virtio-net-pci');
    // memtest86+ answers no PCIe hot-unplug request (an OS does: the disk guest's test unplugs live),
    // so it goes while the guest is stopped, and the next start has no such device.
    d.ok(['stop', 'inst1', '--timeout', '2']);
    d.ok(['network', 'detach', 'isonet', 'inst1']);
    d.ok(['start', 'inst1']);
    await assert.rejects(qmp('inst1', 'qom-get', { path: device, property: 'mac' }), /not found/i);
  });

  test('CD first until installed: once the disk has a boot signature, the next start boots the disk before the CD-ROMs', async () => {
    const cdBootIndex = () =>
      qmp<number>('inst1', 'qom-get', { path: '/machine/peripheral/cd0', property: 'bootindex' });
    assert.equal(await cdBootIndex(), 1, 'the disk is blank: the ISO first');
    // memtest86+ ignores ACPI: the stop ends in a kill after its timeout.
    d.ok(['stop', 'inst1', '--timeout', '2']);
    // What an installer leaves: a partition table, whose last two bytes are 0x55AA.
    const disk = join(d.stateDir, 'guests', 'inst1', 'root.qcow2');
    for (const [offset, byte] of [
      [510, '0x55'],
      [511, '0xaa'],
    ] as const) {
      const r = await hostRunner().run([
        'qemu-io',
        '-f',
        'qcow2',
        '-c',
        `write -P ${byte} ${offset} 1`,
        disk,
      ]);
      assert.equal(r.code, 0, r.stderr);
    }
    d.ok(['start', 'inst1']);
    assert.equal(await cdBootIndex(), 2, 'the disk first, the ISO still in its drive');
    d.ok(['stop', 'inst1', '--timeout', '2']);
  });

  test('the same ISO boots under UEFI (OVMF): the guest gets its own UEFI variables', async () => {
    d.ok([
      'launch',
      'uefi1',
      '--empty',
      '--model',
      'vm',
      '-c',
      'limits.memory=256MiB',
      '-c',
      'limits.disk=1GiB',
      '-c',
      'vm.firmware=uefi',
      '--iso',
      'memtest86',
    ]);
    try {
      assert.ok(
        await eventually(async () => MEMTEST_BANNER.test(consoleLog('uefi1')), 180_000),
        consoleLog('uefi1'),
      );
      const vars = await stat(join(d.stateDir, 'guests', 'uefi1', 'uefi-vars.fd'));
      assert.equal(vars.size, (await stat('/usr/share/OVMF/OVMF_VARS_4M.fd')).size);
      assert.equal(vars.mode & 0o777, 0o600, "root's alone, whatever the template's mode");
      // memtest86+ ignores ACPI: the stop ends in a kill after its timeout.
      d.ok(['stop', 'uefi1', '--timeout', '2']);
    } finally {
      // Gone even when an assertion failed: the next test counts the ISO's attachments.
      d.cli(['delete', '--force', 'uefi1']);
    }
  });

  test('bad input: an ISO is no image, a file that is no ISO is no iso volume, --iso and --empty on ct, a missing ISO', async () => {
    const notIso = join(media, 'not-an-iso.iso');
    await writeFile(notIso, Buffer.alloc(64 * 1024, 7));
    const image = d.cli(['image', 'import', iso, '--alias', 'memtest-as-image']);
    assert.equal(image.code, 1);
    assert.match(image.stderr, /is an ISO image.*iso volume/);
    const vol = d.cli(['storage', 'volume', 'import', 'default', notIso, 'junk']);
    assert.equal(vol.code, 1);
    assert.match(vol.stderr, /not an ISO image/);
    for (const model of ['ct', 'pvm']) {
      const r = d.cli(['create', 'busybox', `c-${model}`, '--model', model, '--iso', iso]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /--iso is for vm guests/);
    }
    // Through the API: an ISO cannot go into a ct guest, nor into a vm guest the kit boots.
    d.ok(['create', 'busybox', 'kit1', '--model', 'vm']);
    const kit = d.cli(['config', 'device', 'add', 'kit1', 'cdrom', 'source=memtest86']);
    assert.equal(kit.code, 1);
    assert.match(kit.stderr, /boots Trivisor's kernel directly, which has no CD-ROM/);
    d.ok(['delete', 'kit1']);
    const emptyCt = d.cli(['create', 'c2', '--empty', '--model', 'ct']);
    assert.equal(emptyCt.code, 1);
    assert.match(emptyCt.stderr, /--empty is for vm guests/);
    const api = await d.api('POST', '/1.0/guests', { name: 'c3', source: { type: 'none' }, model: 'pvm' });
    assert.equal(api.status, 400);
    assert.match(String(api.body.error), /only vm guests start from a blank disk/);
    const missing = d.cli(['create', 'v9', '--empty', '--model', 'vm', '--iso', join(media, 'nothing.iso')]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /neither a local ISO file nor an iso volume/);
    // Nothing was made by any of them.
    const guests = JSON.parse(d.ok(['list', '--format', 'json'])) as Array<{ name: string }>;
    assert.deepEqual(
      guests.map((g) => g.name),
      ['inst1'],
    );
    const vols = JSON.parse(d.ok(['storage', 'volume', 'list', 'default', '-f', 'json'])) as Array<{
      name: string;
    }>;
    assert.deepEqual(
      vols.map((v) => v.name),
      ['memtest86'],
    );
  });
});

describe('vm.firmware=uefi on a host without OVMF', () => {
  let d: Daemon;
  before(async () => {
    // The daemon looks for OVMF where this says (TRIVISOR_VM_OVMF_DIR): nowhere.
    process.env.TRIVISOR_VM_OVMF_DIR = '/nonexistent/OVMF';
    try {
      d = await startDaemon();
    } finally {
      delete process.env.TRIVISOR_VM_OVMF_DIR;
    }
  });
  after(async () => {
    await d?.destroy();
  });

  test('is refused at create with the package to install, and nothing is made', () => {
    const r = d.cli(['create', 'u9', '--empty', '--model', 'vm', '-c', 'vm.firmware=uefi']);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /vm\.firmware=uefi needs OVMF, and \/nonexistent\/OVMF\/OVMF_CODE_4M\.fd is missing: install Debian's ovmf package/,
    );
    assert.equal(r.stderr.trim().split('\n').length, 1, 'one line');
    assert.deepEqual(JSON.parse(d.ok(['list', '--format', 'json'])), []);
    // Set later on a guest that exists, the same.
    d.ok(['create', 'u8', '--empty', '--model', 'vm']);
    const set = d.cli(['config', 'set', 'u8', 'vm.firmware=uefi']);
    assert.equal(set.code, 1);
    assert.match(set.stderr, /needs OVMF/);
    assert.equal(d.ok(['config', 'get', 'u8', 'vm.firmware']), '\n');
  });
});
