import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
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

  test('bad input: an ISO is no image, a file that is no ISO is no iso volume, --iso and --empty on ct, a missing ISO', async () => {
    const notIso = join(media, 'not-an-iso.iso');
    await writeFile(notIso, Buffer.alloc(64 * 1024, 7));
    const image = d.cli(['image', 'import', iso, '--alias', 'memtest-as-image']);
    assert.equal(image.code, 1);
    assert.match(image.stderr, /is an ISO image.*iso volume/);
    const vol = d.cli(['storage', 'volume', 'import', 'default', notIso, 'junk']);
    assert.equal(vol.code, 1);
    assert.match(vol.stderr, /not an ISO image/);
    const ct = d.cli(['create', 'busybox', 'c1', '--model', 'ct', '--iso', iso]);
    assert.equal(ct.code, 1);
    assert.match(ct.stderr, /--iso is for vm guests/);
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
