import { stat } from 'node:fs/promises';
import { basename } from 'node:path';
import type { Command } from 'commander';
import { TrivisorApiError } from '../client/api-error.ts';
import type { TrivisorClient } from '../client/client.ts';
import { invalidArgument } from '../core/errors.ts';
import { formatBytes } from '../core/sizes.ts';
import type { StorageVolume } from '../services/volume-service.ts';
import { clientOf, parsePairs } from './context.ts';

/** The pool ISOs go to unless told otherwise. */
const DEFAULT_POOL = 'default';

/**
 * An iso volume's name from its file's (`debian-12.5.0-amd64-netinst.iso` → `debian-12-5-0-amd64-netinst`):
 * a DNS label, as volume names are.
 */
export function isoVolumeName(file: string): string {
  const name = basename(file)
    .replace(/\.iso$/i, '')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 63)
    .replace(/-+$/, '');
  if (name === '')
    throw invalidArgument(`Cannot name a volume after ${file}: give the name with source=POOL/NAME`);
  return /^[a-z]/.test(name) ? name : `iso-${name}`.slice(0, 63);
}

const isLocalFile = async (path: string): Promise<boolean> =>
  stat(path).then(
    (s) => s.isFile(),
    () => false,
  );

/**
 * The iso volume a `source=` names: an existing volume (`VOL` or `POOL/VOL`), or a local file,
 * uploaded as an iso volume named after it (reused when that volume exists with the same size).
 */
export async function isoVolumeOf(
  client: TrivisorClient,
  source: string,
  options: { pool?: string },
): Promise<StorageVolume> {
  if (await isLocalFile(source)) {
    const pool = options.pool ?? DEFAULT_POOL;
    const name = isoVolumeName(source);
    const size = (await stat(source)).size;
    const existing = await client.getVolume(pool, name).catch((e: unknown) => {
      if (e instanceof TrivisorApiError && e.status === 404) return undefined;
      throw e;
    });
    if (existing) {
      if (existing.type === 'iso' && existing.sizeBytes === size) return existing;
      throw invalidArgument(
        `Pool ${pool} has a volume ${name} already, and it is not this ISO: delete it, or name the volume with source=POOL/NAME`,
      );
    }
    process.stderr.write(
      `Uploading ${basename(source)} (${formatBytes(size)}) as iso volume ${pool}/${name}\n`,
    );
    return client.importIsoVolume(pool, name, source);
  }
  // A path (absolute, relative, or an .iso file name) must be a file: it is not a volume name.
  if (/^[./~]/.test(source) || /\.iso$/i.test(source) || source.split('/').length > 2) {
    throw invalidArgument(`${source} is neither a local ISO file nor an iso volume ([POOL/]NAME)`);
  }
  const [first = '', second] = source.split('/');
  const pool = second === undefined ? (options.pool ?? DEFAULT_POOL) : first;
  const name = second ?? first;
  const vol = await client.getVolume(pool, name).catch((e: unknown) => {
    if (e instanceof TrivisorApiError && e.status === 404) {
      throw invalidArgument(`${source} is neither a local ISO file nor an iso volume of pool ${pool}`);
    }
    throw e;
  });
  if (vol.type !== 'iso') {
    throw invalidArgument(`Volume ${pool}/${name} is a ${vol.type} volume, not an ISO image`);
  }
  return vol;
}

/** `storage volume import POOL FILE [NAME] --type iso`: keeps an ISO image on a pool. */
export function addVolumeImportCommand(volume: Command): void {
  volume
    .command('import')
    .description(
      'Upload an ISO image as an iso volume (a CD-ROM for vm guests): storage volume import POOL FILE [NAME]',
    )
    .argument('<pool>')
    .argument('<file>')
    .argument('[name]', 'volume name (default: from the file name)')
    .option('--type <type>', 'what the file is: iso (the only type uploaded)', 'iso')
    .action(
      async (pool: string, file: string, name: string | undefined, opts: { type: string }, cmd: Command) => {
        if (opts.type !== 'iso')
          throw invalidArgument(`Only ISO images are uploaded as volumes: --type iso, not ${opts.type}`);
        if (!(await isLocalFile(file))) throw invalidArgument(`${file} is not a file`);
        const v = await clientOf(cmd).importIsoVolume(pool, name ?? isoVolumeName(file), file);
        process.stdout.write(
          `Imported ISO ${basename(file)} as volume ${v.pool}/${v.name} (${formatBytes(v.sizeBytes)})\n`,
        );
      },
    );
}

/** `config device add|remove NAME cdrom source=FILE|VOL [pool=POOL]`: insert and eject a vm guest's media. */
export function addDeviceCommands(config: Command): void {
  const device = config
    .command('device')
    .description("Add and remove a guest's devices (cdrom: an ISO in a vm's CD-ROM drive)");
  device
    .command('add')
    .description(
      'Insert an ISO into a vm guest: config device add NAME cdrom source=FILE|VOL|POOL/VOL [pool=POOL] [name=DEVICE]',
    )
    .argument('<name>', 'guest')
    .argument('<type>', 'cdrom')
    .argument(
      '<pairs...>',
      'source=… (a local ISO file, uploaded, or an iso volume), pool=…, name=… (device name)',
    )
    .action(async (guest: string, type: string, pairs: string[], _opts: unknown, cmd: Command) => {
      if (type !== 'cdrom')
        throw invalidArgument(`Unknown device type ${type}: only cdrom is added here (NICs: network attach)`);
      const o = parsePairs(pairs, 'Device option');
      for (const k of Object.keys(o)) {
        if (!['source', 'pool', 'name'].includes(k))
          throw invalidArgument(`Unknown cdrom option ${k}: use source, pool, name`);
      }
      if (!o.source) throw invalidArgument('Give the medium: source=FILE (a local ISO) or source=VOLUME');
      const client = clientOf(cmd);
      const vol = await isoVolumeOf(client, o.source, o.pool !== undefined ? { pool: o.pool } : {});
      const change = await client.attachVolume(vol.pool, vol.name, {
        guest,
        ...(o.name !== undefined && { device: o.name }),
      });
      process.stdout.write(`${change.message}\n`);
    });
  device
    .command('remove')
    .description(
      'Eject an ISO from a vm guest: config device remove NAME DEVICE (the device name, by default the volume name)',
    )
    .argument('<name>', 'guest')
    .argument('<device>')
    .action(async (guest: string, deviceName: string, _opts: unknown, cmd: Command) => {
      const client = clientOf(cmd);
      const g = await client.getGuest(guest);
      const disk = g.disks?.[deviceName];
      if (!disk)
        throw invalidArgument(`Guest ${guest} has no device ${deviceName}: see trivisor info ${guest}`);
      const change = await client.detachVolume(disk.pool, disk.source, { guest, device: deviceName });
      process.stdout.write(`${change.message}\n`);
    });
}
