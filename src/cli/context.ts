import { join } from 'node:path';
import type { Command } from 'commander';
import { createClient, type TrivisorClient } from '../client/client.ts';
import type { ClientTarget } from '../client/transport.ts';
import { invalidArgument } from '../core/errors.ts';
import { assertProjectName, DEFAULT_PROJECT } from '../core/projects.ts';
import { clientCertificate, configDir, LOCAL_REMOTE, loadConfig } from './cli-config.ts';

/** Global options every command sees. */
export interface GlobalOptions {
  remote?: string;
  token?: string;
  /** `--project NAME`: the project every command acts in. */
  project?: string;
}

/**
 * The project a command acts in: `--project`, else TRIVISOR_PROJECT, else the remote's own
 * default project (`remoteDefault`, from the CLI config file that remotes are kept in),
 * else `default`. Checked here so that a typo is one clear line before any request.
 */
export function projectFor(opts: GlobalOptions, remoteDefault?: string): string {
  const project =
    opts.project ?? (process.env.TRIVISOR_PROJECT || undefined) ?? remoteDefault ?? DEFAULT_PROJECT;
  assertProjectName(project);
  return project;
}

/** Where the daemon keeps its state and socket (TRIVISOR_DIR). */
export function stateDir(): string {
  return process.env.TRIVISOR_DIR || '/var/lib/trivisor';
}

/** The client of the remote a command names (`--remote`, TRIVISOR_REMOTE, else the default remote). */
export function clientOf(command: Command): TrivisorClient {
  const opts = command.optsWithGlobals<GlobalOptions>();
  const remote = remoteOf(opts);
  return createClient({ ...remote.target, project: projectFor(opts, remote.project) });
}

/**
 * The daemon a command talks to: `--remote NAME` (or TRIVISOR_REMOTE), else the config's
 * default remote (`trivisor remote switch`), else `local`, the unix socket. A remote is
 * reached over HTTPS, its certificate pinned when it was added (cli-config.ts); a URL is
 * taken only if it is a remote's. `--token` (TRIVISOR_TOKEN) overrides the remote's own.
 */
export function remoteOf(opts: GlobalOptions): { name: string; target: ClientTarget; project?: string } {
  const config = loadConfig();
  const asked = opts.remote ?? (process.env.TRIVISOR_REMOTE || undefined) ?? config.defaultRemote;
  const local = config.remotes[LOCAL_REMOTE]?.project;
  if (asked === LOCAL_REMOTE) {
    return {
      name: LOCAL_REMOTE,
      target: { socketPath: join(stateDir(), 'trivisor.sock') },
      ...(local !== undefined && { project: local }),
    };
  }
  let name = asked;
  if (asked.includes('://')) {
    const found = Object.entries(config.remotes).find(
      ([, r]) => r.url?.replace(/\/$/, '') === asked.replace(/\/$/, ''),
    );
    if (!found) {
      throw invalidArgument(
        `${asked} is not a remote yet: add it with trivisor remote add NAME ${asked.replace(/^http:/, 'https:')} (which pins its certificate), then use --remote NAME`,
      );
    }
    name = found[0];
  }
  const remote = config.remotes[name];
  if (!remote?.url || !remote.fingerprint) {
    throw invalidArgument(
      `No remote is named ${name}: see trivisor remote list, or add it with trivisor remote add`,
    );
  }
  const token = opts.token ?? (process.env.TRIVISOR_TOKEN || undefined) ?? remote.token;
  const certificate = clientCertificate();
  if (!token && !certificate) {
    throw invalidArgument(
      `Remote ${name} has no token and there is no client certificate in ${configDir()}: give --token or add the remote again with --token`,
    );
  }
  return {
    name,
    target: {
      url: remote.url,
      serverFingerprint: remote.fingerprint,
      ...(token !== undefined && { token }),
      ...(certificate !== undefined && { clientCertificate: certificate }),
    },
    ...(remote.project !== undefined && { project: remote.project }),
  };
}

/** Collects a repeatable option into a list. */
export const collect = (value: string, previous: string[]): string[] => [...previous, value];

/** Parses `key=value` pairs into a map. */
export function parsePairs(pairs: string[], what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of pairs) {
    const i = pair.indexOf('=');
    if (i <= 0) throw invalidArgument(`${what} ${JSON.stringify(pair)} is not key=value`);
    out[pair.slice(0, i)] = pair.slice(i + 1);
  }
  return out;
}
