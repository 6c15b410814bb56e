import { type Command, Option } from 'commander';
import { invalidArgument } from '../core/errors.ts';
import { formatBytes } from '../core/sizes.ts';
import { clientOf, parsePairs } from './context.ts';
import { type OutputFormat, renderData, renderTable } from './output.ts';
import { addVolumeImportCommand } from './vm-media-commands.ts';

/** `storage volume create|list|info|attach|detach|resize|delete` (Incus's `storage volume`), under `storage`. */
export function addVolumeCommands(program: Command): void {
  const storage =
    program.commands.find((c) => c.name() === 'storage') ??
    program.command('storage').description('Storage pools');
  const volume = storage.command('volume').description('Custom volumes of storage pools');

  volume
    .command('create')
    .description('Create a volume: storage volume create POOL VOL [size=10GiB] [--type filesystem|block]')
    .argument('<pool>')
    .argument('<volume>')
    .argument('[config...]', 'key=value (size)')
    .addOption(
      new Option('--type <type>', 'filesystem (ct guests mount it) or block (a disk for vm and pvm)')
        .choices(['filesystem', 'block'])
        .default('filesystem'),
    )
    .option('--description <text>', 'what the volume is for')
    .option('--target <member>', 'on a cluster: the member to make it on (default: the one asked)')
    .action(
      async (
        pool: string,
        name: string,
        pairs: string[],
        opts: { type: string; description?: string; target?: string },
        cmd: Command,
      ) => {
        const v = await clientOf(cmd).createVolume(
          pool,
          {
            name,
            type: opts.type,
            config: parsePairs(pairs, 'Volume config'),
            ...(opts.description !== undefined && { description: opts.description }),
          },
          opts.target !== undefined ? { target: opts.target } : {},
        );
        process.stdout.write(
          `Created ${v.type} volume ${v.name} (${formatBytes(v.sizeBytes)}) on pool ${v.pool}\n`,
        );
      },
    );

  volume
    .command('list')
    .alias('ls')
    .description("List a pool's volumes with their space and who uses them")
    .argument('<pool>')
    .addOption(
      new Option('-f, --format <format>', 'output format')
        .choices(['table', 'json', 'yaml'])
        .default('table'),
    )
    .action(async (pool: string, opts: { format: OutputFormat }, cmd: Command) => {
      const list = await clientOf(cmd).listVolumes(pool);
      process.stdout.write(
        opts.format === 'table'
          ? renderTable(
              ['NAME', 'TYPE', 'SIZE', 'USED', 'USED BY'],
              list.map((v) => [
                v.name,
                v.type,
                formatBytes(v.sizeBytes),
                v.usedBytes === null ? '-' : formatBytes(v.usedBytes),
                v.attachments.map((a) => a.guest).join(',') || '-',
              ]),
            )
          : renderData(list, opts.format),
      );
    });

  volume
    .command('info')
    .alias('show')
    .description('Show a volume')
    .argument('<pool>')
    .argument('<volume>')
    .addOption(new Option('-f, --format <format>', 'output format').choices(['yaml', 'json']).default('yaml'))
    .action(async (pool: string, name: string, opts: { format: 'yaml' | 'json' }, cmd: Command) => {
      process.stdout.write(renderData(await clientOf(cmd).getVolume(pool, name), opts.format));
    });

  volume
    .command('attach')
    .description(
      'Attach a volume to a guest: storage volume attach POOL VOL GUEST [PATH] (PATH: where a ct guest mounts it)',
    )
    .argument('<pool>')
    .argument('<volume>')
    .argument('<guest>')
    .argument('[path]', 'mount path in a ct guest, e.g. /mnt/data')
    .option('--device <name>', 'device name in the guest (default: the volume name)')
    .action(
      async (
        pool: string,
        name: string,
        guest: string,
        path: string | undefined,
        opts: { device?: string },
        cmd: Command,
      ) => {
        const r = await clientOf(cmd).attachVolume(pool, name, {
          guest,
          ...(path !== undefined && { path }),
          ...(opts.device !== undefined && { device: opts.device }),
        });
        process.stdout.write(`${r.message}\n`);
      },
    );

  volume
    .command('detach')
    .description('Detach a volume from a guest')
    .argument('<pool>')
    .argument('<volume>')
    .argument('<guest>')
    .option('--device <name>', 'which device, when the volume is attached more than once')
    .action(async (pool: string, name: string, guest: string, opts: { device?: string }, cmd: Command) => {
      const r = await clientOf(cmd).detachVolume(pool, name, {
        guest,
        ...(opts.device !== undefined && { device: opts.device }),
      });
      process.stdout.write(`${r.message}\n`);
    });

  volume
    .command('resize')
    .description('Grow a volume: storage volume resize POOL VOL SIZE (e.g. 2GiB; it never shrinks)')
    .argument('<pool>')
    .argument('<volume>')
    .argument('<size>')
    .action(async (pool: string, name: string, size: string, _opts: unknown, cmd: Command) => {
      const value = size.startsWith('size=') ? size.slice(5) : size;
      if (value === '') throw invalidArgument('Give the new size, e.g. 2GiB');
      const r = await clientOf(cmd).resizeVolume(pool, name, value);
      process.stdout.write(`${r.message}\n`);
    });

  volume
    .command('delete')
    .alias('rm')
    .description('Delete a volume (refused while it is attached)')
    .argument('<pool>')
    .argument('<volume>')
    .action(async (pool: string, name: string, _opts: unknown, cmd: Command) => {
      await clientOf(cmd).deleteVolume(pool, name);
      process.stdout.write(`Deleted volume ${name}\n`);
    });

  addVolumeImportCommand(volume);
}
