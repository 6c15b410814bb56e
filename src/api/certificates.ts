import { createHash, X509Certificate } from 'node:crypto';
import { invalidArgument } from '../core/errors.ts';

/**
 * Certificate fingerprints as Trivisor shows and pins them: SHA-256 of the DER encoding, 64
 * lower-case hex digits (Incus's form). The server's certificate, which clients pin, and
 * trusted client certificates are both named by it.
 */
export function certificateFingerprint(pem: string): string {
  return createHash('sha256').update(parseCertificate(pem).raw).digest('hex');
}

/** The one certificate in `pem`; InvalidArgument naming what is wrong otherwise. */
export function parseCertificate(pem: string): X509Certificate {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length !== 1) {
    throw invalidArgument(
      blocks.length === 0
        ? 'No PEM certificate found: give one "-----BEGIN CERTIFICATE-----" block'
        : `Give one certificate, not ${blocks.length}`,
    );
  }
  try {
    return new X509Certificate(blocks[0]!);
  } catch {
    throw invalidArgument('The PEM certificate cannot be parsed');
  }
}

/**
 * A fingerprint as a user may type it (`AB:CD:…`, upper or lower case, with or without
 * colons, a `sha256:` prefix) in the canonical form; InvalidArgument unless it is 32 bytes.
 */
export function normalizeFingerprint(text: string): string {
  const hex = text
    .trim()
    .replace(/^sha256:/i, '')
    .replaceAll(':', '')
    .toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) {
    throw invalidArgument(
      `${JSON.stringify(text.slice(0, 100))} is not a SHA-256 fingerprint: give 64 hex digits (colons allowed)`,
    );
  }
  return hex;
}

/** The DER SHA-256 of a peer certificate as node:tls reports it (`AB:CD:…`), canonical. */
export function fingerprintOfPeer(peer: { fingerprint256?: string }): string | undefined {
  const f = peer.fingerprint256;
  return f ? f.replaceAll(':', '').toLowerCase() : undefined;
}
