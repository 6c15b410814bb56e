import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { parse, stringify } from 'yaml';
import { invalidArgument } from '../core/errors.ts';

/** The remote that is the local daemon's unix socket: always there, never removed. */
export const LOCAL_REMOTE = 'local';

/**
 * One remote: a daemon's HTTPS URL, the certificate it presented when it was added (pinned:
 * nothing is sent to a server that presents another), how to authenticate, and the project
 * commands act in there by default. `local` has only `project`.
 */
export interface RemoteConfig {
  url?: string;
  /** SHA-256 of the server's certificate (hex). */
  fingerprint?: string;
  /** A token's secret (`trivisor auth token create`); absent: a client certificate authenticates. */
  token?: string;
  /** The default project on this remote (`--project` and TRIVISOR_PROJECT win). */
  project?: string;
}

/** What the CLI keeps between runs (`~/.config/trivisor/config.yml`, mode 0600: it holds tokens). */
export interface CliConfig {
  defaultRemote: string;
  remotes: Record<string, RemoteConfig>;
}

/**
 * The config directory: $TRIVISOR_CONFIG_DIR, else $XDG_CONFIG_HOME/trivisor, else
 * ~/.config/trivisor. It also holds the optional client certificate (client.crt, client.key).
 */
export function configDir(): string {
  if (process.env.TRIVISOR_CONFIG_DIR) return process.env.TRIVISOR_CONFIG_DIR;
  const base = process.env.XDG_CONFIG_HOME || join(homedir(), '.config');
  return join(base, 'trivisor');
}

export const configPath = (): string => join(configDir(), 'config.yml');

/** The config; an empty one (only `local`) when there is no file yet. */
export function loadConfig(): CliConfig {
  const file = configPath();
  if (!existsSync(file)) return { defaultRemote: LOCAL_REMOTE, remotes: {} };
  let raw: unknown;
  try {
    raw = parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw invalidArgument(
      `${file} is not valid YAML (${(e as Error).message.split('\n')[0]}): fix or remove it`,
    );
  }
  const doc = (raw ?? {}) as { 'default-remote'?: unknown; remotes?: unknown };
  if (typeof doc !== 'object' || Array.isArray(doc))
    throw invalidArgument(`${file} must hold a YAML mapping`);
  const remotes: Record<string, RemoteConfig> = {};
  const given = (doc.remotes ?? {}) as Record<string, unknown>;
  if (typeof given !== 'object' || Array.isArray(given))
    throw invalidArgument(`${file}: remotes must be a mapping`);
  for (const [name, value] of Object.entries(given)) {
    if (typeof value !== 'object' || value === null)
      throw invalidArgument(`${file}: remote ${name} must be a mapping`);
    const r = value as Record<string, unknown>;
    const remote: RemoteConfig = {};
    for (const key of ['url', 'fingerprint', 'token', 'project'] as const) {
      if (r[key] === undefined || r[key] === null) continue;
      if (typeof r[key] !== 'string')
        throw invalidArgument(`${file}: remotes.${name}.${key} must be a string`);
      remote[key] = r[key] as string;
    }
    if (name !== LOCAL_REMOTE && (!remote.url || !remote.fingerprint)) {
      throw invalidArgument(`${file}: remote ${name} needs url and fingerprint: remove it and add it again`);
    }
    remotes[name] = remote;
  }
  const defaultRemote = doc['default-remote'] ?? LOCAL_REMOTE;
  if (typeof defaultRemote !== 'string') throw invalidArgument(`${file}: default-remote must be a string`);
  return { defaultRemote, remotes };
}

/** Writes the config: the directory 0700, the file 0600 (it holds tokens), replaced whole by a rename. */
export function saveConfig(config: CliConfig): void {
  const file = configPath();
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const doc = { 'default-remote': config.defaultRemote, remotes: config.remotes };
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, stringify(doc), { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, file);
}

/** The client certificate in the config dir, if both of its files are there. */
export function clientCertificate(): { cert: string; key: string } | undefined {
  const dir = configDir();
  const certFile = join(dir, 'client.crt');
  const keyFile = join(dir, 'client.key');
  if (!existsSync(certFile) || !existsSync(keyFile)) return undefined;
  return { cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') };
}

/** A remote's name: a DNS label, as Incus's are in practice (`prod`, `lab-2`). */
export function assertRemoteName(name: string): void {
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(name)) {
    throw invalidArgument(
      `The remote name ${JSON.stringify(name)} is not valid: use lower-case letters, digits and inner hyphens`,
    );
  }
}
