import { invalidArgument } from './errors.ts';

const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** Throws InvalidArgument unless `name` is a DNS label (RFC 1123): what guests, networks and pools are named. */
export function assertDnsLabel(name: unknown, what = 'name'): asserts name is string {
  if (typeof name !== 'string' || name.length === 0) {
    throw invalidArgument(`The ${what} must not be empty`);
  }
  if (name.length > 63) {
    throw invalidArgument(
      `The ${what} "${name.slice(0, 20)}…" is ${name.length} characters long; at most 63 are allowed`,
    );
  }
  if (!DNS_LABEL.test(name)) {
    throw invalidArgument(
      `The ${what} ${JSON.stringify(name)} is not a DNS label: use lower-case letters, digits and inner hyphens only`,
    );
  }
}

/** Whether `name` is a DNS label, without saying why not. */
export function isDnsLabel(name: unknown): name is string {
  return typeof name === 'string' && DNS_LABEL.test(name);
}

const ALIAS = /^[a-z0-9][a-z0-9._-]{0,62}(\/[a-z0-9][a-z0-9._-]{0,62}){0,2}$/;

/** Image aliases may have slashes (`debian/bookworm`) but no `..`, upper case or spaces. */
export function assertImageAlias(alias: unknown): asserts alias is string {
  if (typeof alias !== 'string' || !ALIAS.test(alias) || alias.includes('..')) {
    throw invalidArgument(
      `The image alias ${JSON.stringify(alias)} is not valid: use lower-case letters, digits, '.', '_', '-' and up to two '/'`,
    );
  }
}
