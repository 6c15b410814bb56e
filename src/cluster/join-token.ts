import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { invalidArgument } from '../core/errors.ts';

/**
 * What a join token carries (decision 0032): everything the joining host needs to find
 * and trust the cluster before it has anything of its own — the member name it joins
 * as, the addresses of the members it may ask, the SHA-256 of the cluster CA (the
 * certificate those members present must chain to exactly that CA), a single-use
 * secret, and when the token expires.
 */
export interface JoinToken {
  name: string;
  addresses: string[];
  caFingerprint: string;
  secret: string;
  expiresAt: string;
}

/** Tokens start with this, so that a pasted token is recognised (and a pasted anything else is not). */
const PREFIX = 'trvjoin_';

/** A fresh secret: 256 random bits, hex. */
export const newJoinSecret = (): string => randomBytes(32).toString('hex');

/** The SHA-256 a token record keeps of its secret (hex). */
export const secretDigest = (secret: string): string => createHash('sha256').update(secret).digest('hex');

/** Whether `secret` is the one whose digest is `sha256` (constant time). */
export function secretMatches(secret: string, sha256: string): boolean {
  const a = createHash('sha256').update(secret).digest();
  const b = Buffer.from(sha256, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The token as one line: `trvjoin_` and base64url JSON. */
export function encodeJoinToken(token: JoinToken): string {
  return `${PREFIX}${Buffer.from(JSON.stringify(token)).toString('base64url')}`;
}

/** Reads a token; InvalidArgument in one line when it is not one (cut short, mistyped). */
export function decodeJoinToken(text: string): JoinToken {
  const trimmed = text.trim();
  const bad = () =>
    invalidArgument(
      'That is not a join token (cut short or mistyped?): copy the whole line that trivisor cluster add printed',
    );
  if (!trimmed.startsWith(PREFIX) || !/^[A-Za-z0-9_-]+$/.test(trimmed.slice(PREFIX.length))) throw bad();
  let value: Partial<JoinToken>;
  try {
    value = JSON.parse(Buffer.from(trimmed.slice(PREFIX.length), 'base64url').toString('utf8'));
  } catch {
    throw bad();
  }
  const strings = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === 'string');
  if (
    typeof value !== 'object' ||
    value === null ||
    typeof value.name !== 'string' ||
    !strings(value.addresses) ||
    value.addresses.length === 0 ||
    typeof value.caFingerprint !== 'string' ||
    !/^[0-9a-f]{64}$/.test(value.caFingerprint) ||
    typeof value.secret !== 'string' ||
    !/^[0-9a-f]{64}$/.test(value.secret) ||
    typeof value.expiresAt !== 'string' ||
    Number.isNaN(Date.parse(value.expiresAt))
  ) {
    throw bad();
  }
  return {
    name: value.name,
    addresses: value.addresses,
    caFingerprint: value.caFingerprint,
    secret: value.secret,
    expiresAt: value.expiresAt,
  };
}
