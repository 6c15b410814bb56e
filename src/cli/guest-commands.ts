import { type Command, Option } from 'commander';
import type { CreateGuestBody, Model, StateChangeBody } from '../api/types.ts';
import { invalidArgument } from '../core/errors.ts';
import { formatBytes } from '../core/sizes.ts';
import { clientOf, collect, parsePairs } from './context.ts';
import { injectedFileConfig } from './file-commands.ts';
import { guestInfo, guestTable, type OutputFormat, renderData } from './output.ts';
import { waitWithProgress } from './progress.ts';
import { addDeviceCommands, isoVolumeOf } from './vm-media-commands.ts';

const formatOption = (choices: OutputFormat[], fallback: OutputFormat) =>
  new Option('-f, --format <format>', 'output format').choices(choices).default(fallback);

const NIC_KEYS = new Set(['hwaddr', 'ipv4.address', 'limits.ingress', 'limits.egress']);

/** `-n NET[,key=value...]`: a NIC on NET with optional hwaddr, ipv4.address, limits.ingress, limits.egress. */
function nicOf(spec: string): NonNullable<CreateGuestBody['devices']>[string] {
  const [network = '', ...pairs] = spec.split(',');
  const nic: NonNullable<CreateGuestBody['devices']>[string] = { type: 'nic', network };
  for (const [key, value] of Object.entries(parsePairs(pairs, 'NIC option'))) {
    if (!NIC_KEYS.has(key)) {
      throw invalidArgument(`Unknown NIC option ${key}: use ${[...NIC_KEYS].join(', ')}`);
    }
    nic[key as 'hwaddr'] = value;
  }
  return nic;
}

/** launch, create, list, info, start/stop/restart/freeze/unfreeze, delete. */
export function addGuestCommands(program: Command): void {
  for (const [verb, start] of [
    ['launch', true],
    ['create', false],
  ] as const) {
    program
      .command(verb)
      .description(start ? 'Create and start a guest' : 'Create a guest without starting it')
      .argument('<image>', 'image alias or fingerprint (with --empty: the guest name)')
      .argument('[name]', 'guest name')
      .addOption(new Option('-m, --model <model>', 'virtualization model').choices(['ct', 'pvm', 'vm']))
      .option('-c, --config <key=value>', 'config key (repeatable)', collect, [])
      .option(
        '-n, --network <network>',
        'add a NIC: NETWORK[,ipv4.address=…,limits.ingress=10Mbit,limits.egress=…] (repeatable: eth0, eth1…)',
        collect,
        [],
      )
      .option(
        '-s, --storage <pool>',
        "storage pool for the guest (dir or btrfs; on btrfs a ct guest's limits.disk is a quota)",
      )
      .option(
        '--file <guest-path=local-file>',
        'write a file into the guest at every start: /etc/motd=./motd[,mode=0600,uid=N,gid=N] (repeatable)',
        collect,
        [],
      )
      .option(
        '--target <member>',
        'the cluster member to place the guest on (default: the member with the most free memory that can hold it)',
      )
      .option('--empty', 'no image: a vm guest with a blank disk of limits.disk, to install from an ISO')
      .option(
        '--iso <file-or-volume>',
        'an ISO in the CD-ROM drive (a local file, uploaded as an iso volume, or an iso volume [POOL/]NAME): the guest boots from it until an OS is installed',
      )
      .action(
        async (
          imageOrName: string,
          maybeName: string | undefined,
          opts: {
            model?: Model;
            config: string[];
            network: string[];
            storage?: string;
            target?: string;
            file: string[];
            empty?: boolean;
            iso?: string;
          },
          cmd: Command,
        ) => {
          const client = clientOf(cmd);
          if (opts.empty && maybeName !== undefined) {
            throw invalidArgument(`--empty takes no image: ${verb} NAME --empty --model vm`);
          }
          if (!opts.empty && maybeName === undefined) {
            throw invalidArgument(
              `Give an image and a name (${verb} IMAGE NAME), or --empty (${verb} NAME --empty)`,
            );
          }
          const name = opts.empty ? imageOrName : (maybeName ?? '');
          if ((opts.empty || opts.iso !== undefined) && (opts.model ?? 'vm') !== 'vm') {
            throw invalidArgument(
              `${opts.empty ? '--empty' : '--iso'} is for vm guests (a blank disk and a CD-ROM drive); a ${opts.model} guest boots an image's root file system`,
            );
          }
          const request: CreateGuestBody = opts.empty
            ? { name, source: { type: 'none' }, start: start && opts.iso === undefined, model: 'vm' }
            : { name, image: imageOrName, start: start && opts.iso === undefined };
          if (opts.model) request.model = opts.model;
          if (opts.storage) request.storage = opts.storage;
          if (opts.network.length > 0) {
            request.devices = Object.fromEntries(opts.network.map((spec, i) => [`eth${i}`, nicOf(spec)]));
          }
          if (opts.config.length > 0) request.config = parsePairs(opts.config, 'Config');
          for (const spec of opts.file) {
            const [key, value] = await injectedFileConfig(spec);
            request.config = { ...request.config, [key]: value };
          }
          // The ISO goes in before the first start, so that the guest boots from it.
          const iso = opts.iso !== undefined ? await isoVolumeOf(client, opts.iso, {}) : undefined;
          const op = await client.createGuest(
            request,
            opts.target !== undefined ? { target: opts.target } : {},
          );
          await waitWithProgress(client, op, { label: `${start ? 'Launching' : 'Creating'} ${name}` });
          if (iso) {
            try {
              await client.attachVolume(iso.pool, iso.name, { guest: name });
            } catch (e) {
              // Nothing half-made: the guest goes again when its medium cannot go in.
              await waitWithProgress(client, await client.deleteGuest(name, { force: true }), {
                label: `Deleting ${name}`,
              }).catch(() => {});
              throw e;
            }
            if (start) {
              await waitWithProgress(client, await client.changeGuestState(name, { action: 'start' }), {
                label: `Starting ${name}`,
              });
            }
          }
          process.stdout.write(
            `${start ? 'Launched' : 'Created'} ${name}${iso ? ` with ISO ${iso.name}` : ''}\n`,
          );
        },
      );
  }

  program
    .command('list')
    .alias('ls')
    .description('List guests')
    .addOption(formatOption(['table', 'json', 'yaml'], 'table'))
    .option('--all-projects', "list every project's guests, with a PROJECT column")
    .action(async (opts: { format: OutputFormat; allProjects?: boolean }, cmd: Command) => {
      const all = opts.allProjects === true;
      const guests = await clientOf(cmd).listGuests({ usage: true, allProjects: all });
      process.stdout.write(
        opts.format === 'table' ? guestTable(guests, { withProject: all }) : renderData(guests, opts.format),
      );
    });

  program
    .command('info')
    .description(
      'Show a guest (status, model, image, usage, config), or with --host this host and its drivers',
    )
    .argument('[name]')
    .option('--host', 'show the host: engines, versions, the vm accelerator and why')
    .addOption(new Option('-f, --format <format>', 'json or yaml instead of text').choices(['json', 'yaml']))
    .action(
      async (name: string | undefined, opts: { format?: 'json' | 'yaml'; host?: boolean }, cmd: Command) => {
        if (opts.host || name === undefined) {
          const info = (await clientOf(cmd).serverInfo()) as { environment?: HostInfo };
          const env = info.environment;
          if (!env) throw new Error('The daemon did not describe its host: check --remote and --token');
          process.stdout.write(opts.format ? renderData(env, opts.format) : hostInfo(env));
          return;
        }
        const guest = await clientOf(cmd).getGuest(name);
        process.stdout.write(opts.format ? renderData(guest, opts.format) : guestInfo(guest));
      },
    );

  const actions: Array<[StateChangeBody['action'], string, boolean]> = [
    ['start', 'Start guests', false],
    ['stop', 'Stop guests (clean shutdown, killed after --timeout)', true],
    ['restart', 'Restart guests', true],
    ['freeze', 'Freeze (pause) guests', false],
    ['unfreeze', 'Unfreeze (resume) guests', false],
  ];
  for (const [action, description, stopping] of actions) {
    const command = program.command(action).description(description).argument('<names...>');
    if (stopping) {
      command
        .option('--timeout <seconds>', 'seconds to wait for a clean shutdown (-1: forever)')
        .option('--force', 'kill at once');
    }
    command.action(async (names: string[], opts: { timeout?: string; force?: boolean }, cmd: Command) => {
      const client = clientOf(cmd);
      const request: StateChangeBody = { action };
      if (opts.timeout !== undefined) {
        const timeout = Number(opts.timeout);
        if (!Number.isInteger(timeout) || timeout < -1) {
          throw invalidArgument(`--timeout ${JSON.stringify(opts.timeout)} is not a whole number of seconds`);
        }
        request.timeout = timeout;
      }
      if (opts.force) request.force = true;
      for (const name of names) {
        const op = await client.changeGuestState(name, request);
        await waitWithProgress(client, op, { label: `${action} ${name}` });
      }
    });
  }

  program
    .command('move')
    .alias('mv')
    .description(
      'Move a guest to another member of the cluster (stopped, moved, started again there if it ran; --live: a running vm guest keeps running)',
    )
    .argument('<name>')
    .requiredOption('--target <member>', 'the member to move it to')
    .option(
      '--live',
      'keep it running through the move (vm: its disk mirrored and its RAM copied; refused, with the reason, for ct and pvm)',
    )
    .option('--stateless', 'stop it, move it, start it again (the default)')
    .action(
      async (name: string, opts: { target: string; live?: boolean; stateless?: boolean }, cmd: Command) => {
        if (opts.live && opts.stateless) throw invalidArgument('Give --live or --stateless, not both');
        const client = clientOf(cmd);
        const op = await client.moveGuest(name, opts.target, { live: opts.live === true });
        await waitWithProgress(client, op, { label: `Moving ${name} to ${opts.target}` });
      },
    );

  program
    .command('delete')
    .alias('rm')
    .description('Delete guests')
    .argument('<names...>')
    .option('--force', 'stop running guests first')
    .action(async (names: string[], opts: { force?: boolean }, cmd: Command) => {
      const client = clientOf(cmd);
      for (const name of names) {
        const op = await client.deleteGuest(name, { force: opts.force === true });
        await waitWithProgress(client, op, { label: `Deleting ${name}` });
      }
    });
}

/** config set|unset|get|show. */
export function addConfigCommands(program: Command): void {
  const config = program.command('config').description('Show and change guest configuration');

  config
    .command('set')
    .description('Set config keys: config set NAME key=value... (or NAME key value)')
    .argument('<name>')
    .argument('<pairs...>')
    .action(async (name: string, pairs: string[], _opts: unknown, cmd: Command) => {
      const set =
        pairs.length === 2 && !pairs[0]?.includes('=')
          ? { [pairs[0] ?? '']: pairs[1] ?? '' }
          : parsePairs(pairs, 'Config');
      const result = await clientOf(cmd).updateGuestConfig(name, { set });
      if (result.pendingRestart.length > 0) {
        process.stderr.write(`Takes effect at the next restart: ${result.pendingRestart.join(', ')}\n`);
      }
    });

  config
    .command('set-file')
    .description(
      'Write a local file into the guest at every start: config set-file NAME /etc/motd=./motd[,mode=0600,uid=N,gid=N]',
    )
    .argument('<name>')
    .argument('<files...>')
    .action(async (name: string, files: string[], _opts: unknown, cmd: Command) => {
      const set: Record<string, string> = {};
      for (const spec of files) {
        const [key, value] = await injectedFileConfig(spec);
        set[key] = value;
      }
      const result = await clientOf(cmd).updateGuestConfig(name, { set });
      if (result.pendingRestart.length > 0) {
        process.stderr.write(`Takes effect at the next restart: ${result.pendingRestart.join(', ')}\n`);
      }
    });

  config
    .command('unset')
    .description('Remove config keys')
    .argument('<name>')
    .argument('<keys...>')
    .action(async (name: string, keys: string[], _opts: unknown, cmd: Command) => {
      await clientOf(cmd).updateGuestConfig(name, { unset: keys });
    });

  config
    .command('get')
    .description('Print the value of a config key (empty when unset)')
    .argument('<name>')
    .argument('<key>')
    .action(async (name: string, key: string, _opts: unknown, cmd: Command) => {
      const guest = await clientOf(cmd).getGuest(name);
      process.stdout.write(`${guest.config[key] ?? ''}\n`);
    });

  config
    .command('show')
    .description("Show a guest's configuration")
    .argument('<name>')
    .addOption(formatOption(['yaml', 'json'], 'yaml'))
    .action(async (name: string, opts: { format: 'yaml' | 'json' }, cmd: Command) => {
      const g = await clientOf(cmd).getGuest(name);
      const shown = { name: g.name, model: g.model, image: g.imageAlias || g.image, config: g.config };
      process.stdout.write(renderData(shown, opts.format));
    });

  addDeviceCommands(config);
}

interface HostInfo {
  name: string;
  version: string;
  kernel: string;
  cpus: number;
  memoryBytes: number;
  store: string;
  sysctls?: Array<{
    key: string;
    before: number | null;
    value: number | null;
    atLeast: number;
    changed: boolean;
    error?: string;
  }>;
  drivers: Array<{
    model: string;
    supported: boolean;
    version: string;
    warnings: string[];
    details: Record<string, string>;
  }>;
  ksm?: {
    available: boolean;
    run: number;
    enabledByTrivisor: boolean;
    pagesToScan: number;
    sleepMillisecs: number;
    savedBytes: number;
  };
}

/** KSM in one line: whether it merges, who started it, what it saves. */
function ksmLine(k: NonNullable<HostInfo['ksm']>): string {
  if (!k.available) return 'not in this kernel';
  const state = k.run === 1 ? 'merging' : k.run === 2 ? 'stopped, unmerged' : 'stopped';
  const who = k.enabledByTrivisor ? ' (started by Trivisor while vm guests run)' : '';
  return `${state}${who}, ${formatBytes(k.savedBytes)} saved (${k.pagesToScan} pages every ${k.sleepMillisecs} ms)`;
}

/** `info --host` for people: the host, then one block per model. */
function hostInfo(h: HostInfo): string {
  const lines = [
    `Host: ${h.name}`,
    `Trivisor: ${h.version}`,
    `Kernel: ${h.kernel}`,
    `CPUs: ${h.cpus}`,
    `Memory: ${formatBytes(h.memoryBytes)}`,
    `Store: ${h.store}`,
    ...(h.ksm ? [`KSM: ${ksmLine(h.ksm)}`] : []),
    'Models:',
  ];
  for (const d of h.drivers) {
    lines.push(
      `  ${d.model}: ${d.supported ? 'available' : 'unavailable'} (${d.version || 'not installed'})`,
    );
    for (const [k, v] of Object.entries(d.details)) lines.push(`    ${k}: ${v}`);
    for (const w of d.warnings) lines.push(`    warning: ${w}`);
  }
  if (h.sysctls?.length) lines.push('Kernel settings (raised for dense hosts, never lowered):');
  for (const s of h.sysctls ?? []) {
    const what = s.changed ? `raised from ${s.before} to ${s.value}` : `${s.value ?? 'absent'}, kept`;
    lines.push(
      `  ${s.key}: ${what} (wanted at least ${s.atLeast})${s.error ? `; could not raise: ${s.error}` : ''}`,
    );
  }
  return `${lines.join('\n')}\n`;
}
