import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { type Command, Option } from 'commander';
import { liveRestoreTimes, secondsText } from '../api/backup-schemas.ts';
import { invalidArgument } from '../core/errors.ts';
import { formatBytes } from '../core/sizes.ts';
import type { Operation } from '../core/types.ts';
import { clientOf, parsePairs } from './context.ts';
import { downloadWhileExporting } from './export-download.ts';
import { type OutputFormat, renderData, renderTable } from './output.ts';
import { waitWithProgress } from './progress.ts';

/** snapshot create|list|restore|delete, copy, export, import, backup list. */
export function addStorageCommands(program: Command): void {
  const snapshot = program.command('snapshot').description('Snapshots of guests');

  snapshot
    .command('create')
    .description('Snapshot a guest (running guests are frozen while they are copied)')
    .argument('<name>')
    .argument('[snapshot]', 'snapshot name (default: snapN)')
    .action(async (name: string, snap: string | undefined, _opts: unknown, cmd: Command) => {
      const client = clientOf(cmd);
      let chosen = snap;
      if (chosen === undefined) {
        const taken = new Set((await client.listSnapshots(name)).map((s) => s.name));
        let n = 0;
        while (taken.has(`snap${n}`)) n++;
        chosen = `snap${n}`;
      }
      const op = await client.createSnapshot(name, chosen);
      await waitWithProgress(client, op, { label: `Snapshotting ${name}` });
      process.stdout.write(`${chosen}\n`);
    });

  snapshot
    .command('list')
    .alias('ls')
    .description("List a guest's snapshots")
    .argument('<name>')
    .addOption(
      new Option('-f, --format <format>', 'output format')
        .choices(['table', 'json', 'yaml'])
        .default('table'),
    )
    .action(async (name: string, opts: { format: OutputFormat }, cmd: Command) => {
      const list = await clientOf(cmd).listSnapshots(name);
      process.stdout.write(
        opts.format === 'table'
          ? renderTable(
              ['NAME', 'CREATED', 'WAS RUNNING', 'EXPIRES'],
              list.map((s) => [s.name, s.createdAt, s.wasRunning ? 'yes' : 'no', s.expiresAt ?? '–']),
            )
          : renderData(list, opts.format),
      );
    });

  snapshot
    .command('restore')
    .description('Roll a guest back to a snapshot (a running guest is stopped and started again)')
    .argument('<name>')
    .argument('<snapshot>')
    .action(async (name: string, snap: string, _opts: unknown, cmd: Command) => {
      const client = clientOf(cmd);
      await waitWithProgress(client, await client.restoreSnapshot(name, snap), {
        label: `Restoring ${name}`,
      });
    });

  snapshot
    .command('delete')
    .alias('rm')
    .description('Delete a snapshot')
    .argument('<name>')
    .argument('<snapshot>')
    .action(async (name: string, snap: string, _opts: unknown, cmd: Command) => {
      const client = clientOf(cmd);
      await waitWithProgress(client, await client.deleteSnapshot(name, snap));
    });

  program
    .command('copy')
    .alias('cp')
    .description('Copy a guest (or one of its snapshots, SRC/SNAP) to a new, independent guest')
    .argument('<source>', 'guest, or guest/snapshot')
    .argument('<name>', 'name of the copy')
    .option('-s, --snapshot <snapshot>', 'copy this snapshot of the source')
    .option('--start', 'start the copy')
    .option('--storage <pool>', "storage pool of the copy (default: the source's pool)")
    .action(
      async (
        source: string,
        name: string,
        opts: { snapshot?: string; start?: boolean; storage?: string },
        cmd: Command,
      ) => {
        const client = clientOf(cmd);
        const [guest = '', fromPath] = source.split('/', 2);
        const snap = opts.snapshot ?? fromPath;
        if (opts.snapshot && fromPath)
          throw invalidArgument('Give the snapshot either as SRC/SNAP or with --snapshot');
        const op = await client.copyGuest(guest, name, {
          ...(snap !== undefined && { snapshot: snap }),
          ...(opts.start && { start: true }),
          ...(opts.storage !== undefined && { storage: opts.storage }),
        });
        await waitWithProgress(client, op, { label: `Copying ${source} to ${name}` });
      },
    );

  program
    .command('export')
    .description('Write a backup archive of a guest (tar + zstd, with a manifest of checksums) to FILE')
    .argument('<name>')
    .argument('<file>')
    .option('--with-snapshots', 'include the snapshots')
    .option('--uncompressed', 'a vm guest: its disk stored plain, for `import --live` (decision 0063)')
    .option(
      '--incremental',
      'only what changed since the last --incremental export (the first one is full); import them in order',
    )
    .action(
      async (
        name: string,
        file: string,
        opts: { withSnapshots?: boolean; incremental?: boolean; uncompressed?: boolean },
        cmd: Command,
      ) => {
        // Before the daemon makes the archive: a target that cannot be written leaves nothing behind.
        const target = resolve(file);
        await assertWritableFile(target);
        const client = clientOf(cmd);
        // Named here, so that the download follows the archive while the daemon writes it (issue 20 §1).
        const backup = `backup-${randomBytes(8).toString('hex')}`;
        const op = await client.createBackup(name, {
          name: backup,
          snapshots: opts.withSnapshots === true,
          ...(opts.incremental && { incremental: true }),
          ...(opts.uncompressed && { uncompressed: true }),
        });
        let done: Operation;
        try {
          done = await downloadWhileExporting(client, op, { guest: name, backup, file: target });
        } finally {
          await client.deleteBackup(name, backup).catch(() => {});
        }
        const link = done.metadata.incremental as
          | { chain?: string; sequence?: number; kind?: string }
          | undefined;
        if (link?.kind) {
          process.stdout.write(
            link.kind === 'full'
              ? `Full backup: starts chain ${link.chain}\n`
              : `Incremental backup ${link.sequence} of chain ${link.chain}\n`,
          );
        }
      },
    );

  program
    .command('import')
    .description(
      'Make a guest from a backup archive written by export (an incremental one goes onto the stopped guest restored from the earlier ones)',
    )
    .argument('<file>')
    .argument('[name]', 'name of the guest (default: the name in the archive)')
    .option('-s, --storage <pool>', 'storage pool of the guest (default: the default pool)')
    .option('--target <member>', 'on a cluster: the member to import it on (default: the one asked)')
    .option(
      '--live',
      'a vm guest from an --uncompressed export: it runs at once, its disk copied from the archive behind it',
    )
    .option(
      '--from-backups',
      "FILE is GUEST/ARCHIVE in the daemon's backup directory (TRIVISOR_BACKUP_DIR), read there without an upload",
    )
    .action(
      async (
        file: string,
        name: string | undefined,
        opts: { storage?: string; target?: string; live?: boolean; fromBackups?: boolean },
        cmd: Command,
      ) => {
        const client = clientOf(cmd);
        const op = await (opts.fromBackups
          ? client.importFromBackups(file, {
              ...(opts.live && { live: true }),
              ...(name !== undefined && { name }),
              ...(opts.storage !== undefined && { storage: opts.storage }),
              ...(opts.target !== undefined && { target: opts.target }),
            })
          : client.importBackup(resolve(file), {
              ...(opts.live && { live: true }),
              ...(name !== undefined && { name }),
              ...(opts.storage !== undefined && { storage: opts.storage }),
              ...(opts.target !== undefined && { target: opts.target }),
            }));
        const done = await waitWithProgress(client, op, { label: `Importing ${file}` });
        process.stdout.write(
          `${opts.live ? 'Restored live' : 'Imported'} ${String(done.metadata.name ?? name ?? '')}${liveTimesText(done.metadata)}\n`,
        );
      },
    );

  const backup = program
    .command('backup')
    .description("The daemon's backup directory (TRIVISOR_BACKUP_DIR), which import --from-backups reads");

  backup
    .command('list')
    .alias('ls')
    .description(
      "List the archives in the daemon's backup directory: what import --from-backups GUEST/ARCHIVE takes, with each incremental's chain and parent",
    )
    .argument('[guest]', "only this guest's archives")
    .option('--target <member>', "on a cluster: that member's backup directory (default: the one asked)")
    .addOption(
      new Option('-f, --format <format>', 'output format')
        .choices(['table', 'json', 'yaml'])
        .default('table'),
    )
    .action(
      async (guest: string | undefined, opts: { format: OutputFormat; target?: string }, cmd: Command) => {
        const list = await clientOf(cmd).listBackupDirectory({
          ...(guest !== undefined && { guest }),
          ...(opts.target !== undefined && { target: opts.target }),
        });
        if (opts.format !== 'table') {
          process.stdout.write(renderData(list, opts.format));
          return;
        }
        process.stdout.write(
          renderTable(
            ['ARCHIVE', 'KIND', 'CHAIN', 'PARENT', 'SIZE', 'CREATED', 'RESTORABLE'],
            list.map((a) => [
              a.archive,
              a.kind,
              a.chain !== undefined ? `${a.chain}#${a.sequence ?? 0}` : '-',
              a.parent ?? '-',
              formatBytes(a.sizeBytes),
              a.createdAt,
              a.restorable ? 'yes' : `no: ${a.problem ?? 'its chain is not whole'}`,
            ]),
          ),
        );
      },
    );

  program
    .command('admin')
    .description('Administration of the daemon')
    .command('recover')
    .description(
      "Rebuild the records of guests found on disk after the store was lost; with --from-backups, bring back a lost member's guests from their latest scheduled backups",
    )
    .option(
      '--from-backups <dir>',
      "the backup directory (TRIVISOR_BACKUP_DIR of the daemons) on the daemon's host: every guest of an Offline member comes back on the surviving members, and every guest the store does not know on this one",
    )
    .action(async (opts: { fromBackups?: string }, cmd: Command) => {
      if (opts.fromBackups !== undefined) {
        const client = clientOf(cmd);
        const op = await client.recoverFromBackups(resolve(opts.fromBackups));
        const done = await waitWithProgress(client, op, { label: 'Recovering from backups' });
        const meta = done.metadata as {
          recovered?: Array<{
            name: string;
            member: string;
            backup: string;
            links?: string[];
            problems?: string[];
          }>;
          skipped?: Array<{ name: string; reason: string }>;
        };
        for (const g of meta.recovered ?? []) {
          // A chain's full backup and its incrementals, in the order they were applied (decision 0062).
          const from = (g.links ?? [g.backup]).join(', ');
          for (const p of g.problems ?? []) process.stdout.write(`Warning: ${g.name}: ${p}\n`);
          process.stdout.write(`Recovered ${g.name} on ${g.member} from ${from}\n`);
        }
        for (const g of meta.skipped ?? []) process.stdout.write(`Skipped ${g.name}: ${g.reason}\n`);
        if ((meta.recovered ?? []).length === 0 && (meta.skipped ?? []).length === 0)
          process.stdout.write('No backups found\n');
        return;
      }
      const report = await clientOf(cmd).recover();
      for (const g of report.recovered) {
        const snaps = g.snapshots.length > 0 ? ` with snapshots ${g.snapshots.join(', ')}` : '';
        const pool = g.pool ? ` on pool ${g.pool}` : '';
        process.stdout.write(`Recovered ${g.name} (${g.model}, ${g.status})${pool}${snaps}\n`);
      }
      for (const g of report.skipped) process.stdout.write(`Skipped ${g.name}: ${g.reason}\n`);
      if (report.recovered.length === 0 && report.skipped.length === 0)
        process.stdout.write('No guests found on disk\n');
    });

  const storage = program.command('storage').description('Storage pools');

  storage
    .command('create')
    .description(
      'Create a pool: storage create NAME dir|btrfs [size=2GiB] [source=PATH] [shared=true (dir with source, on a cluster: one directory every member sees)]',
    )
    .argument('<name>')
    .argument('<driver>', 'dir or btrfs')
    .argument('[config...]', 'key=value')
    .option('--description <text>', 'what the pool is for')
    .option(
      '--target <member>',
      "on a cluster: only this member's disks hold it (default: every member makes its own)",
    )
    .action(
      async (
        name: string,
        driver: string,
        pairs: string[],
        opts: { description?: string; target?: string },
        cmd: Command,
      ) => {
        const pool = await clientOf(cmd).createPool(
          {
            name,
            driver,
            config: parsePairs(pairs, 'Pool config'),
            ...(opts.description !== undefined && { description: opts.description }),
          },
          opts.target !== undefined ? { target: opts.target } : {},
        );
        const where = pool.shared
          ? `, shared by ${pool.members?.length ?? 0} members (${pool.status}) at ${pool.path}`
          : pool.members
            ? ` on ${pool.members.length} members (${pool.status}), here at ${pool.path}`
            : ` at ${pool.path}`;
        process.stdout.write(`Created storage pool ${pool.name} (${pool.driver})${where}\n`);
      },
    );

  storage
    .command('list')
    .alias('ls')
    .description('List storage pools with their space')
    .addOption(
      new Option('-f, --format <format>', 'output format')
        .choices(['table', 'json', 'yaml'])
        .default('table'),
    )
    .action(async (opts: { format: OutputFormat }, cmd: Command) => {
      const list = await clientOf(cmd).listPools();
      process.stdout.write(
        opts.format === 'table'
          ? renderTable(
              ['NAME', 'DRIVER', 'SHARED', 'STATUS', 'USED', 'TOTAL', 'PATH'],
              list.map((p) => [
                p.name,
                p.driver,
                p.shared ? 'yes' : 'no',
                p.status,
                p.usage ? formatBytes(p.usage.usedBytes) : '-',
                p.usage ? formatBytes(p.usage.totalBytes) : '-',
                p.path,
              ]),
            )
          : renderData(list, opts.format),
      );
    });

  storage
    .command('info')
    .description('Show a storage pool')
    .argument('<name>')
    .addOption(new Option('-f, --format <format>', 'output format').choices(['yaml', 'json']).default('yaml'))
    .option('--target <member>', "on a cluster: that member's instance of a pool on every member")
    .action(async (name: string, opts: { format: 'yaml' | 'json'; target?: string }, cmd: Command) => {
      const options = opts.target !== undefined ? { target: opts.target } : {};
      process.stdout.write(renderData(await clientOf(cmd).getPool(name, options), opts.format));
    });

  storage
    .command('delete')
    .alias('rm')
    .description('Delete an empty storage pool (refused while it holds guests or volumes)')
    .argument('<name>')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      await clientOf(cmd).deletePool(name);
    });
}

/** Throws one clear line unless `path` can be written: its directory exists and is writable, and it is no directory. */
async function assertWritableFile(path: string): Promise<void> {
  const dir = dirname(path);
  const dirStat = await stat(dir).catch(() => null);
  if (!dirStat?.isDirectory()) throw new Error(`Cannot write ${path}: ${dir} is not an existing directory`);
  await access(dir, constants.W_OK).catch(() => {
    throw new Error(`Cannot write ${path}: ${dir} is not writable`);
  });
  if ((await stat(path).catch(() => null))?.isDirectory()) {
    throw new Error(`Cannot write ${path}: it is a directory; give a file name`);
  }
}

/**
 * `, running after 3.1 s, complete after 42.0 s` for a live restore's finished operation (issue
 * 20: its time to running against its time to complete); nothing for any other import.
 */
export function liveTimesText(metadata: Readonly<Record<string, unknown>>): string {
  const t = liveRestoreTimes(metadata);
  const parts = [
    ...(t.runningAfterMs !== undefined ? [`running after ${secondsText(t.runningAfterMs)}`] : []),
    ...(t.completedAfterMs !== undefined ? [`complete after ${secondsText(t.completedAfterMs)}`] : []),
  ];
  return parts.length > 0 ? `: ${parts.join(', ')}` : '';
}
