import { type Command, Option } from 'commander';
import { createClient } from '../client/client.ts';
import { failedPrecondition, invalidArgument } from '../core/errors.ts';
import { assertProjectName } from '../core/projects.ts';
import {
  assertRemoteName,
  clientCertificate,
  configDir,
  LOCAL_REMOTE,
  loadConfig,
  type RemoteConfig,
  saveConfig,
} from './cli-config.ts';
import { type OutputFormat, renderData, renderTable } from './output.ts';

/** The port the daemon's TCP API listens on unless told otherwise. */
const DEFAULT_PORT = 8443;

/** `https://HOST[:PORT]` from what a user types (`10.0.0.5`, `host:8443`, `https://host`); http is refused. */
export function remoteUrl(text: string): { url: string; host: string; port: number } {
  const withScheme = /^[a-z]+:\/\//i.test(text) ? text : `https://${text}`;
  let parsed: URL;
  try {
    parsed = new URL(withScheme);
  } catch {
    throw invalidArgument(`${JSON.stringify(text)} is not a URL: write e.g. https://10.0.0.5:8443`);
  }
  if (parsed.protocol !== 'https:') {
    throw invalidArgument(`The daemon serves its API over HTTPS only: write https://${parsed.host}`);
  }
  if (parsed.pathname !== '/' || parsed.search || parsed.username) {
    throw invalidArgument(`Give only the scheme, host and port: https://${parsed.host}`);
  }
  const port = Number(parsed.port || DEFAULT_PORT);
  const host = parsed.hostname.replace(/^\[|\]$/g, '');
  return { url: `https://${parsed.hostname}:${port}`, host, port };
}

/**
 * Decides whether to pin the certificate a server presented: the fingerprint given on the
 * command line must match exactly; `--accept-certificate` takes it; otherwise the user is
 * shown the fingerprint and asked once (`ask`). Throws, naming both fingerprints, when a
 * given one differs (a man in the middle, or the wrong server).
 */
export async function acceptFingerprint(
  presented: string,
  options: {
    fingerprint?: string;
    acceptCertificate?: boolean;
    url: string;
    ask: (question: string) => Promise<string>;
  },
): Promise<void> {
  if (options.fingerprint !== undefined) {
    const { normalizeFingerprint } = await import('../api/certificates.ts');
    const expected = normalizeFingerprint(options.fingerprint);
    if (expected !== presented) {
      throw failedPrecondition(
        `The server at ${options.url} presented a certificate with fingerprint ${presented}, not ${expected}: someone may be intercepting the connection, or it is another server; nothing was saved`,
      );
    }
    return;
  }
  if (options.acceptCertificate) return;
  const answer = await options.ask(`Certificate fingerprint: ${presented}\nok (y/n)? `);
  if (!/^y(es)?$/i.test(answer.trim())) {
    throw failedPrecondition('The certificate was not accepted; nothing was saved');
  }
}

/** One line from stdin after the question (src/cli/ask.ts, loaded only when asking). */
const askOnStdin = async (question: string): Promise<string> =>
  (await import('./ask.ts')).askOnStdin(question);

/** remote add|list|remove|switch|get-default|set-project (Incus's `remote`). */
export function addRemoteCommands(program: Command): void {
  const remote = program
    .command('remote')
    .description('Daemons to talk to over HTTPS, their pinned certificates and tokens');

  remote
    .command('add')
    .description('Add a remote: show its certificate fingerprint, pin it once accepted, check the token')
    .argument('<name>')
    .argument('<url>', 'https://HOST[:PORT] (port 8443 by default)')
    .option(
      '--token <secret>',
      'API token (trivisor auth token create prints one); else a client certificate',
    )
    .option('--accept-certificate', 'pin the presented certificate without asking (scripts)')
    .option('--fingerprint <sha256>', 'pin only if the server presents this certificate (scripts)')
    .option('--project <name>', 'default project on this remote')
    .action(
      async (
        name: string,
        url: string,
        local: { acceptCertificate?: boolean; fingerprint?: string },
        cmd: Command,
      ) => {
        // --token and --project are also the program's own options, which take them wherever they
        // are written (commander): read with the globals.
        const opts = { ...local, ...cmd.optsWithGlobals<{ token?: string; project?: string }>() };
        assertRemoteName(name);
        if (name === LOCAL_REMOTE)
          throw invalidArgument(`"${LOCAL_REMOTE}" is the unix socket: choose another name`);
        if (opts.project !== undefined) assertProjectName(opts.project);
        const target = remoteUrl(url);
        const config = loadConfig();
        if (config.remotes[name]) throw invalidArgument(`Remote ${name} already exists: remove it first`);
        // Loaded here only: TLS and X.509 code that other commands never need (decision 0013).
        const { normalizeFingerprint } = await import('../api/certificates.ts');
        const { fetchServerCertificate } = await import('../client/tls-connect.ts');
        if (opts.fingerprint !== undefined) normalizeFingerprint(opts.fingerprint);
        const certificate = clientCertificate();
        const presented = await fetchServerCertificate({ host: target.host, port: target.port });
        await acceptFingerprint(presented.fingerprint, {
          ...(opts.fingerprint !== undefined && { fingerprint: opts.fingerprint }),
          ...(opts.acceptCertificate !== undefined && { acceptCertificate: opts.acceptCertificate }),
          url: target.url,
          ask: askOnStdin,
        });
        // Only now, over the pinned connection, does the token go anywhere.
        const info = await createClient({
          url: target.url,
          serverFingerprint: presented.fingerprint,
          ...(opts.token !== undefined && { token: opts.token }),
          ...(certificate !== undefined && { clientCertificate: certificate }),
        }).serverInfo();
        if (info.auth !== 'trusted') {
          throw failedPrecondition(
            opts.token !== undefined
              ? `${target.url} refused the token (revoked, or from another daemon); nothing was saved`
              : `${target.url} does not trust this client: give --token, or have an admin trust ${configDir()}/client.crt (trivisor auth trust add); nothing was saved`,
          );
        }
        const entry: RemoteConfig = { url: target.url, fingerprint: presented.fingerprint };
        if (opts.token !== undefined) entry.token = opts.token;
        if (opts.project !== undefined) entry.project = opts.project;
        config.remotes[name] = entry;
        saveConfig(config);
        const as = `${info.auth_user_method ?? 'token'} ${info.auth_user_name ?? ''}`.trim();
        const role = info.auth_role ? `, ${info.auth_role} in ${(info.auth_projects ?? []).join(', ')}` : '';
        process.stdout.write(`Remote ${name} added: ${target.url} (as ${as}${role})\n`);
      },
    );

  remote
    .command('list')
    .alias('ls')
    .description('List remotes (* marks the default)')
    .addOption(
      new Option('-f, --format <format>', 'output format')
        .choices(['table', 'json', 'yaml'])
        .default('table'),
    )
    .action((opts: { format: OutputFormat }) => {
      const config = loadConfig();
      const rows = [
        {
          name: LOCAL_REMOTE,
          url: 'unix socket',
          fingerprint: '',
          auth: 'unix',
          project: config.remotes.local?.project,
        },
        ...Object.entries(config.remotes)
          .filter(([n]) => n !== LOCAL_REMOTE)
          .map(([n, r]) => ({
            name: n,
            url: r.url ?? '',
            fingerprint: r.fingerprint ?? '',
            auth: r.token ? 'token' : 'certificate',
            project: r.project,
          })),
      ].map((r) => ({ ...r, project: r.project ?? 'default', default: r.name === config.defaultRemote }));
      if (opts.format !== 'table') {
        process.stdout.write(renderData(rows, opts.format));
        return;
      }
      process.stdout.write(
        renderTable(
          ['NAME', 'URL', 'FINGERPRINT', 'AUTH', 'PROJECT'],
          rows.map((r) => [
            r.default ? `${r.name} *` : r.name,
            r.url,
            r.fingerprint.slice(0, 12),
            r.auth,
            r.project,
          ]),
        ),
      );
    });

  remote
    .command('remove')
    .alias('rm')
    .description('Forget a remote, its pinned certificate and its token')
    .argument('<name>')
    .action((name: string) => {
      if (name === LOCAL_REMOTE)
        throw invalidArgument(`"${LOCAL_REMOTE}" (the unix socket) cannot be removed`);
      const config = loadConfig();
      if (!config.remotes[name]) throw invalidArgument(`No remote is named ${name}`);
      delete config.remotes[name];
      if (config.defaultRemote === name) config.defaultRemote = LOCAL_REMOTE;
      saveConfig(config);
    });

  remote
    .command('switch')
    .description('Make a remote the default of every command')
    .argument('<name>')
    .action((name: string) => {
      const config = loadConfig();
      if (name !== LOCAL_REMOTE && !config.remotes[name]) throw invalidArgument(`No remote is named ${name}`);
      config.defaultRemote = name;
      saveConfig(config);
    });

  remote
    .command('get-default')
    .description('Print the default remote')
    .action(() => {
      process.stdout.write(`${loadConfig().defaultRemote}\n`);
    });

  remote
    .command('set-project')
    .description("Set a remote's default project (--project and TRIVISOR_PROJECT still win)")
    .argument('<name>')
    .argument('<project>')
    .action((name: string, project: string) => {
      assertProjectName(project);
      const config = loadConfig();
      if (name !== LOCAL_REMOTE && !config.remotes[name]) throw invalidArgument(`No remote is named ${name}`);
      config.remotes[name] = { ...config.remotes[name], project };
      saveConfig(config);
    });
}
