import { flushCompileCache } from 'node:module';
import { type Command, Option } from 'commander';
import type { TrivisorEvent } from '../api/types.ts';
import { clientOf, stateDir } from './context.ts';
import { daemonReexecArgv } from './daemon-heap.ts';
import { imageInfo, imageTable, type OutputFormat, operationTable, renderData } from './output.ts';
import { waitWithProgress } from './progress.ts';

const formatOption = (choices: OutputFormat[], fallback?: OutputFormat) => {
  const o = new Option('-f, --format <format>', 'output format').choices(choices);
  return fallback ? o.default(fallback) : o;
};

/** image list|build|import|info|delete. */
export function addImageCommands(program: Command): void {
  const image = program.command('image').description('Manage images');

  image
    .command('list')
    .alias('ls')
    .description('List images')
    .addOption(formatOption(['table', 'json', 'yaml'], 'table'))
    .action(async (opts: { format: OutputFormat }, cmd: Command) => {
      const images = await clientOf(cmd).listImages();
      process.stdout.write(opts.format === 'table' ? imageTable(images) : renderData(images, opts.format));
    });

  image
    .command('build')
    .description('Build an image from a source such as debian/bookworm')
    .argument('<source>')
    .option('--alias <alias>', 'alias of the new image (default: the source)')
    .action(async (source: string, opts: { alias?: string }, cmd: Command) => {
      const client = clientOf(cmd);
      const request: { source: string; alias?: string } = { source };
      if (opts.alias) request.alias = opts.alias;
      const op = await waitWithProgress(client, await client.buildImage(request), {
        label: `Building ${source}`,
      });
      const fingerprint = op.metadata.fingerprint;
      process.stdout.write(
        `Image ${opts.alias ?? source}${typeof fingerprint === 'string' ? ` ${fingerprint.slice(0, 12)}` : ''}\n`,
      );
    });

  image
    .command('import')
    .description(
      'Import a root file system tarball, or a whole-disk image (qcow2 or raw, with its own boot loader) for vm guests',
    )
    .argument('<file>')
    .requiredOption('--alias <alias>', 'alias of the new image')
    .option(
      '--checksum <algorithm:hex>',
      'sha256:HEX or sha512:HEX the file must have, e.g. from the publisher (nothing is imported otherwise)',
    )
    .action(async (file: string, opts: { alias: string; checksum?: string }, cmd: Command) => {
      const client = clientOf(cmd);
      const op = await client.importImage(file, {
        alias: opts.alias,
        ...(opts.checksum !== undefined && { checksum: opts.checksum }),
      });
      const done = await waitWithProgress(client, op, { label: `Importing ${opts.alias}` });
      const fingerprint = done.metadata.fingerprint;
      process.stdout.write(
        `Image ${opts.alias}${typeof fingerprint === 'string' ? ` ${fingerprint.slice(0, 12)}` : ''}\n`,
      );
    });

  image
    .command('info')
    .alias('show')
    .description('Show an image')
    .argument('<ref>', 'alias or fingerprint')
    .addOption(formatOption(['json', 'yaml']))
    .action(async (ref: string, opts: { format?: 'json' | 'yaml' }, cmd: Command) => {
      const record = await clientOf(cmd).getImage(ref);
      process.stdout.write(opts.format ? renderData(record, opts.format) : imageInfo(record));
    });

  image
    .command('delete')
    .alias('rm')
    .description('Delete images (refused while guests use them)')
    .argument('<refs...>')
    .action(async (refs: string[], _opts: unknown, cmd: Command) => {
      const client = clientOf(cmd);
      for (const ref of refs) await client.deleteImage(ref);
    });
}

/** operation list|wait|cancel. */
export function addOperationCommands(program: Command): void {
  const operation = program.command('operation').description('List, wait for and cancel operations');
  operation
    .command('list')
    .alias('ls')
    .addOption(formatOption(['table', 'json', 'yaml'], 'table'))
    .action(async (opts: { format: OutputFormat }, cmd: Command) => {
      const ops = await clientOf(cmd).listOperations();
      process.stdout.write(opts.format === 'table' ? operationTable(ops) : renderData(ops, opts.format));
    });
  operation
    .command('wait')
    .argument('<id>')
    .description('Wait for an operation to end (fails when it fails)')
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      const client = clientOf(cmd);
      await waitWithProgress(client, await client.getOperation(id));
    });
  operation
    .command('cancel')
    .argument('<id>')
    .description('Cancel an operation')
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      await clientOf(cmd).cancelOperation(id);
    });
}

/** monitor: print events as they come. */
export function addMonitorCommand(program: Command): void {
  program
    .command('monitor')
    .description('Print events as they happen (one JSON object per line, or YAML documents)')
    .option('--type <types>', 'comma-separated event types: lifecycle,operation,logging, or audit (admins)')
    .addOption(formatOption(['json', 'yaml'], 'json'))
    .action(async (opts: { type?: string; format: 'json' | 'yaml' }, cmd: Command) => {
      const types = opts.type
        ?.split(',')
        .map((t) => t.trim())
        .filter(Boolean) as TrivisorEvent['type'][] | undefined;
      const sub = await clientOf(cmd).events(
        (event) => {
          process.stdout.write(
            opts.format === 'json' ? `${JSON.stringify(event)}\n` : `---\n${renderData(event, 'yaml')}`,
          );
        },
        types ? { types } : {},
      );
      process.once('SIGINT', () => sub.close());
      await sub.closed;
    });
}

/** daemon: run the daemon in the foreground. */
export function addDaemonCommand(program: Command): void {
  program
    .command('daemon')
    .description('Run the Trivisor daemon in the foreground')
    .option(
      '--listen <address>',
      'also serve the API on HTTPS, e.g. 127.0.0.1:8443 (a token or a trusted client certificate required)',
    )
    .action(async (opts: { listen?: string }) => {
      // The heap flags are the process's own (decision 0092): once, same pid, before anything runs.
      const reexec = daemonReexecArgv(
        process.execPath,
        process.execArgv,
        process.argv,
        process.env.NODE_OPTIONS,
      );
      if (reexec && process.execve) process.execve(process.execPath, reexec, process.env);
      // Imported late: the CLI must not load the daemon's dependencies for client commands
      // (in the bundle the daemon is a chunk of its own, loaded here only).
      // runDaemon serves until SIGTERM/SIGINT and resolves once it has shut down.
      const { runDaemon } = await import('../main.ts');
      const options: { stateDir?: string; listen?: string } = { stateDir: stateDir() };
      if (opts.listen) options.listen = opts.listen;
      const served = runDaemon(options);
      // Node writes its compile cache (bin/trivisor.mjs turns it on for the bundle) at exit, which a
      // daemon that is killed never reaches: write it once start-up code has run.
      setTimeout(() => flushCompileCache(), 10_000).unref();
      await served;
    });
}
