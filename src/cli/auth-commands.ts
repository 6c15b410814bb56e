import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Command, Option } from 'commander';
import type { AuditEntryBody } from '../api/auth-schemas.ts';
import { createClient, type TrivisorClient } from '../client/client.ts';
import { invalidArgument } from '../core/errors.ts';
import { type GlobalOptions, remoteOf, stateDir } from './context.ts';
import { type OutputFormat, renderData, renderTable } from './output.ts';

const formatOption = () =>
  new Option('-f, --format <format>', 'output format').choices(['table', 'json', 'yaml']).default('table');

const ROLES = ['viewer', 'operator', 'admin'];

/**
 * A client that acts in no project: tokens, certificates and the audit log are the host's.
 * The global `--project` means something else here (the projects a token is bound to, or
 * which entries to show), so it is not sent as the request's project.
 */
function hostClient(cmd: Command): TrivisorClient {
  const { project: _, ...globals } = cmd.optsWithGlobals<GlobalOptions>();
  return createClient(remoteOf(globals).target);
}

/**
 * `--project p1,p2` or `*` as a list. The program's own `--project` takes the value wherever
 * it is written (commander parses global options after a subcommand too), so it is read there.
 */
function projectsOf(cmd: Command): string[] {
  const text = cmd.optsWithGlobals<GlobalOptions>().project ?? '';
  const list = text
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean);
  if (list.length === 0) throw invalidArgument('Give the projects: --project p1,p2 (or * for all of them)');
  return list;
}

/** auth token create|list|revoke, auth trust add|list|remove. */
export function addAuthCommands(program: Command): void {
  const auth = program
    .command('auth')
    .description('API tokens and trusted client certificates (host admins)');
  const token = auth.command('token').description('Tokens for scripts and remote clients');

  token
    .command('create')
    .description('Create a token bound to projects with a role; prints its secret once (only a hash is kept)')
    .argument('<name>')
    .addOption(new Option('--role <role>', 'what it may do').choices(ROLES).makeOptionMandatory())
    .option('--project <projects>', 'comma-separated projects, or * for all of them and the host (required)')
    .option('--description <text>', 'what it is for')
    .action(async (name: string, opts: { role: string; description?: string }, cmd: Command) => {
      const { token: made, secret } = await hostClient(cmd).createToken({
        name,
        role: opts.role as 'viewer',
        projects: projectsOf(cmd),
        ...(opts.description !== undefined && { description: opts.description }),
      });
      process.stderr.write(
        `Token ${made.name} (${made.role} in ${made.projects.join(', ')}): its secret follows, shown this once\n`,
      );
      process.stdout.write(`${secret}\n`);
    });

  token
    .command('list')
    .alias('ls')
    .description('List tokens (never their secrets)')
    .addOption(formatOption())
    .action(async (opts: { format: OutputFormat }, cmd: Command) => {
      const tokens = await hostClient(cmd).listTokens();
      if (opts.format !== 'table') {
        process.stdout.write(renderData(tokens, opts.format));
        return;
      }
      process.stdout.write(
        renderTable(
          ['NAME', 'ROLE', 'PROJECTS', 'CREATED', 'BY', 'DESCRIPTION'],
          tokens.map((t) => [t.name, t.role, t.projects.join(','), t.createdAt, t.createdBy, t.description]),
        ),
      );
    });

  token
    .command('revoke')
    .description('Revoke tokens: their next request is refused')
    .argument('<names...>')
    .action(async (names: string[], _opts: unknown, cmd: Command) => {
      const client = hostClient(cmd);
      for (const name of names) await client.revokeToken(name);
    });

  const trust = auth
    .command('trust')
    .description('Client certificates that authenticate like tokens (over TLS)');

  trust
    .command('add')
    .description('Trust a client certificate (PEM file) with a role in projects')
    .argument('<certificate>', 'PEM file')
    .addOption(new Option('--role <role>', 'what it may do').choices(ROLES).makeOptionMandatory())
    .option('--project <projects>', 'comma-separated projects, or * for all of them and the host (required)')
    .option('--name <name>', 'its name (default: from its common name)')
    .action(async (file: string, opts: { role: string; name?: string }, cmd: Command) => {
      const projects = projectsOf(cmd);
      const certificate = await readFile(file, 'utf8');
      const info = await hostClient(cmd).trustCertificate({
        certificate,
        role: opts.role as 'viewer',
        projects,
        ...(opts.name !== undefined && { name: opts.name }),
      });
      process.stdout.write(
        `Trusted certificate ${info.name} (${info.fingerprint.slice(0, 12)}): ${info.role} in ${info.projects.join(', ')}\n`,
      );
    });

  trust
    .command('list')
    .alias('ls')
    .description('List trusted client certificates')
    .addOption(formatOption())
    .action(async (opts: { format: OutputFormat }, cmd: Command) => {
      const certs = await hostClient(cmd).listCertificates();
      if (opts.format !== 'table') {
        process.stdout.write(renderData(certs, opts.format));
        return;
      }
      process.stdout.write(
        renderTable(
          ['NAME', 'FINGERPRINT', 'ROLE', 'PROJECTS', 'EXPIRES'],
          certs.map((c) => [c.name, c.fingerprint.slice(0, 12), c.role, c.projects.join(','), c.notAfter]),
        ),
      );
    });

  trust
    .command('remove')
    .alias('rm')
    .description('Stop trusting a client certificate')
    .argument('<fingerprint>', 'its fingerprint, or its first 8 or more hex digits')
    .action(async (fingerprint: string, _opts: unknown, cmd: Command) => {
      const info = await hostClient(cmd).untrustCertificate(fingerprint);
      process.stdout.write(`No longer trusted: ${info.name} (${info.fingerprint.slice(0, 12)})\n`);
    });
}

/** admin audit, admin web-link. */
export function addAdminCommands(program: Command): void {
  // `admin recover` made it already (storage-commands.ts): audit joins it.
  const admin =
    program.commands.find((c) => c.name() === 'admin') ??
    program.command('admin').description('Administration of the daemon');
  admin
    .command('web-link')
    .description('Print a one-time link that signs a browser into the web UI as you (good for 10 minutes)')
    .action(async (_opts: unknown, cmd: Command) => {
      const globals = cmd.optsWithGlobals<GlobalOptions>();
      const remote = remoteOf(globals);
      const link = await hostClient(cmd).createWebLink();
      // The browser reaches the HTTPS listener: a remote's URL, or the local daemon's (daemon.json).
      let base = 'url' in remote.target ? remote.target.url : undefined;
      if (!base) {
        const info = JSON.parse(
          await readFile(join(stateDir(), 'daemon.json'), 'utf8').catch(() => '{}'),
        ) as {
          url?: string | null;
        };
        base = info.url ?? undefined;
      }
      if (!base) {
        throw invalidArgument(
          'The daemon serves no HTTPS listener (TRIVISOR_LISTEN=none): the web UI is served there; start it with --listen HOST:PORT',
        );
      }
      process.stdout.write(`${base.replace(/\/$/, '')}${link.path}\n`);
      process.stderr.write(`Good once, for ${Math.round(link.expiresInSeconds / 60)} minutes.\n`);
    });
  admin
    .command('audit')
    .description(
      'Show the audit log: every request that changed something, or tried to (all projects, or --project P)',
    )
    .option('--since <when>', 'a duration back (2h, 30d) or a time (2026-12-04T10:00:00Z)')
    .option('--limit <n>', 'the newest this many entries (default 1000)', (v) => Number(v))
    .addOption(formatOption())
    .action(async (opts: { since?: string; limit?: number; format: OutputFormat }, cmd: Command) => {
      if (opts.limit !== undefined && !(Number.isInteger(opts.limit) && opts.limit > 0)) {
        throw invalidArgument('--limit must be a whole number above 0');
      }
      const globals = cmd.optsWithGlobals<GlobalOptions>();
      // A project named anywhere (--project, TRIVISOR_PROJECT, the remote's default) filters; none: all of them.
      const project =
        globals.project ?? (process.env.TRIVISOR_PROJECT || undefined) ?? remoteOf(globals).project;
      const entries = await hostClient(cmd).audit({
        ...(opts.since !== undefined && { since: opts.since }),
        ...(opts.limit !== undefined && { limit: opts.limit }),
        ...(project !== undefined ? { project } : { allProjects: true }),
      });
      if (opts.format !== 'table') {
        process.stdout.write(
          opts.format === 'json' ? `${JSON.stringify(entries, null, 2)}\n` : renderData(entries, 'yaml'),
        );
        return;
      }
      process.stdout.write(auditTable(entries));
    });
}

/** The audit log for people: one line per request. */
export function auditTable(entries: AuditEntryBody[]): string {
  return renderTable(
    ['TIME', 'WHO', 'FROM', 'REQUEST', 'PROJECT', 'RESULT', 'OPERATION'],
    entries.map((e) => [
      e.time,
      `${e.actor.method}:${e.actor.name}`,
      e.source,
      `${e.request.method} ${e.request.path}`,
      e.request.project,
      e.result.error ? `${e.result.status} ${e.result.error}` : String(e.result.status),
      e.operation ?? '',
    ]),
  );
}
