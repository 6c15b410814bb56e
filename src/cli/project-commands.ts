import { type Command, Option } from 'commander';
import type { Project } from '../core/projects.ts';
import { formatBytes } from '../core/sizes.ts';
import { clientOf, parsePairs } from './context.ts';
import { type OutputFormat, renderData, renderTable } from './output.ts';

const formatOption = (choices: OutputFormat[], fallback?: OutputFormat) => {
  const o = new Option('-f, --format <format>', 'output format').choices(choices);
  return fallback ? o.default(fallback) : o;
};

/** What a project uses of each limit, for people: `2 of 4`, `512MiB of 1GiB`, `3 (no limit)`. */
function usageLines(p: Project): string[] {
  const rows: Array<[string, string, string]> = [
    ['guests', 'limits.guests', String(p.usage.guests)],
    ['memory', 'limits.memory', formatBytes(p.usage.memoryBytes).replace(/^0B$/, '0')],
    ['cpu', 'limits.cpu', String(p.usage.cpus)],
    ['disk', 'limits.disk', formatBytes(p.usage.diskBytes).replace(/^0B$/, '0')],
    ['networks', 'limits.networks', String(p.usage.networks)],
  ];
  return rows.map(([what, key, used]) => {
    const limit = p.config[key];
    return `  ${`${what}:`.padEnd(10)}${used} ${limit === undefined ? '(no limit)' : `of ${limit} (${key})`}`;
  });
}

export function projectInfo(p: Project): string {
  const lines = [`Name: ${p.name}`];
  if (p.description) lines.push(`Description: ${p.description}`);
  lines.push(`Created: ${p.createdAt}`, 'Usage:', ...usageLines(p));
  const other = Object.entries(p.config).filter(([k]) => !k.startsWith('limits.'));
  if (other.length > 0) lines.push('Config:', ...other.map(([k, v]) => `  ${k}: ${v}`));
  if (p.usedBy.length > 0) lines.push('Holds:', ...p.usedBy.map((u) => `  ${u}`));
  return `${lines.join('\n')}\n`;
}

function projectTable(projects: Project[]): string {
  const limit = (p: Project, key: string, used: string) =>
    p.config[key] === undefined ? used : `${used}/${p.config[key]}`;
  return renderTable(
    ['NAME', 'GUESTS', 'MEMORY', 'CPU', 'DISK', 'NETWORKS', 'DESCRIPTION'],
    projects.map((p) => [
      p.name,
      limit(p, 'limits.guests', String(p.usage.guests)),
      limit(p, 'limits.memory', formatBytes(p.usage.memoryBytes)),
      limit(p, 'limits.cpu', String(p.usage.cpus)),
      limit(p, 'limits.disk', formatBytes(p.usage.diskBytes)),
      limit(p, 'limits.networks', String(p.usage.networks)),
      p.description,
    ]),
  );
}

/** `project create|list|info|set|unset|delete` (Incus's project commands). */
export function addProjectCommands(program: Command): void {
  const project = program
    .command('project')
    .description(
      'Manage projects: guests, networks, volumes, images and operations belong to one, with quotas',
    );

  project
    .command('create')
    .description('Create a project: project create NAME [limits.guests=4] [limits.memory=2GiB] …')
    .argument('<name>')
    .argument('[pairs...]', 'config keys as key=value')
    .option('--description <text>')
    .action(async (name: string, pairs: string[], opts: { description?: string }, cmd: Command) => {
      const config = parsePairs(pairs, 'Config');
      await clientOf(cmd).createProject({
        name,
        config,
        ...(opts.description !== undefined && { description: opts.description }),
      });
      process.stdout.write(`Project ${name} created\n`);
    });

  project
    .command('list')
    .alias('ls')
    .description('List projects with their usage (used/limit)')
    .addOption(formatOption(['table', 'json', 'yaml'], 'table'))
    .action(async (opts: { format: OutputFormat }, cmd: Command) => {
      const list = await clientOf(cmd).listProjects();
      process.stdout.write(opts.format === 'table' ? projectTable(list) : renderData(list, opts.format));
    });

  project
    .command('info')
    .alias('show')
    .description('Show a project: its limits and what it uses of them, and what it holds')
    .argument('<name>')
    .addOption(formatOption(['json', 'yaml']))
    .action(async (name: string, opts: { format?: 'json' | 'yaml' }, cmd: Command) => {
      const p = await clientOf(cmd).getProject(name);
      process.stdout.write(opts.format ? renderData(p, opts.format) : projectInfo(p));
    });

  project
    .command('set')
    .description('Set project keys: project set NAME limits.guests=4 …')
    .argument('<name>')
    .argument('[pairs...]', 'key=value')
    .option('--description <text>')
    .action(async (name: string, pairs: string[], opts: { description?: string }, cmd: Command) => {
      const set = parsePairs(pairs, 'Config');
      await clientOf(cmd).updateProject(name, {
        set,
        ...(opts.description !== undefined && { description: opts.description }),
      });
      process.stdout.write(`Project ${name} updated\n`);
    });

  project
    .command('unset')
    .description('Remove project keys (a limit removed is no limit)')
    .argument('<name>')
    .argument('<keys...>')
    .action(async (name: string, keys: string[], _opts: unknown, cmd: Command) => {
      await clientOf(cmd).updateProject(name, { unset: keys });
      process.stdout.write(`Project ${name} updated\n`);
    });

  project
    .command('delete')
    .alias('rm')
    .description('Delete an empty project (default cannot be deleted)')
    .argument('<name>')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      await clientOf(cmd).deleteProject(name);
      process.stdout.write(`Project ${name} deleted\n`);
    });
}
