import { join } from 'node:path';
import type { Command } from 'commander';
import { createClient, type TrivisorClient } from '../client/client.ts';
import { invalidArgument } from '../core/errors.ts';
import { assertProjectName, DEFAULT_PROJECT } from '../core/projects.ts';

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

/** The client for `--remote/--token` (or TRIVISOR_REMOTE/TRIVISOR_TOKEN), else the local unix socket. */
export function clientOf(command: Command): TrivisorClient {
  const opts = command.optsWithGlobals<GlobalOptions>();
  const remote = opts.remote ?? process.env.TRIVISOR_REMOTE;
  if (remote) {
    const token = opts.token ?? process.env.TRIVISOR_TOKEN;
    if (!token) throw invalidArgument('A remote needs its API token: give --token or set TRIVISOR_TOKEN');
    if (!/^https?:\/\//.test(remote)) {
      throw invalidArgument(
        `The remote ${JSON.stringify(remote)} is not a URL: write e.g. http://10.0.0.5:8443`,
      );
    }
    return createClient({ url: remote, token, project: projectFor(opts) });
  }
  return createClient({ socketPath: join(stateDir(), 'trivisor.sock'), project: projectFor(opts) });
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
