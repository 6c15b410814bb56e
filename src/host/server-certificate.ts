import { createPrivateKey, X509Certificate } from 'node:crypto';
import { constants } from 'node:fs';
import { chmod, open, readFile, rename, rm } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { certificateFingerprint } from '../api/certificates.ts';
import type { ProcessRunner } from './runner.ts';

/** The daemon's TLS identity: what clients pin (`trivisor remote add` shows the fingerprint). */
export interface ServerCertificate {
  /** PEM. */
  key: string;
  /** PEM, self-signed. */
  cert: string;
  /** SHA-256 of the certificate's DER form, hex. */
  fingerprint: string;
  /** Where they are kept. */
  certPath: string;
  keyPath: string;
}

/** Ten years, as Incus's: clients pin this certificate, so replacing it means re-adding every remote. */
const VALID_DAYS = 3650;

/**
 * The server's certificate and key (`server.crt`, and `server.key` mode 0600) in the state
 * dir, made on first start by Debian's `openssl` (node:crypto makes keys, not X.509
 * certificates): ECDSA P-256, self-signed, its subject and names the host's. A pair that
 * cannot be read as one is made again (nothing can have pinned a certificate whose key is
 * gone); a whole one is kept, expired or not, since replacing it breaks every client's pin.
 */
export async function ensureServerCertificate(
  stateDir: string,
  options: { runner: ProcessRunner; hostName: string; listenHost?: string },
): Promise<ServerCertificate> {
  const certPath = path.join(stateDir, 'server.crt');
  const keyPath = path.join(stateDir, 'server.key');
  const existing = await readPair(certPath, keyPath);
  if (existing) {
    await chmod(keyPath, 0o600);
    return { ...existing, certPath, keyPath };
  }
  const host = options.hostName.replace(/[^A-Za-z0-9.-]/g, '-').slice(0, 60) || 'trivisor';
  const names = [`DNS:${host}`, 'DNS:localhost', 'IP:127.0.0.1', 'IP:::1'];
  const listen = options.listenHost;
  if (listen && isIP(listen) && !['0.0.0.0', '::', '127.0.0.1', '::1'].includes(listen))
    names.push(`IP:${listen}`);
  const tmpKey = `${keyPath}.new`;
  const tmpCert = `${certPath}.new`;
  await rm(tmpKey, { force: true });
  // The key file exists, root's and 0600, before openssl writes a byte into it.
  await (await open(tmpKey, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600)).close();
  try {
    await options.runner.run([
      'openssl',
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-sha256',
      '-days',
      String(VALID_DAYS),
      '-subj',
      `/O=Trivisor/CN=trivisor@${host}`,
      '-addext',
      `subjectAltName=${names.join(',')}`,
      '-keyout',
      tmpKey,
      '-out',
      tmpCert,
    ]);
    await chmod(tmpKey, 0o600);
    await chmod(tmpCert, 0o644);
    // Key first: a crash between the renames leaves a key without a certificate, made again next start.
    await rename(tmpKey, keyPath);
    await rename(tmpCert, certPath);
  } catch (e) {
    await rm(tmpKey, { force: true });
    await rm(tmpCert, { force: true });
    throw e;
  }
  const made = await readPair(certPath, keyPath);
  if (!made) throw new Error(`openssl made a certificate ${certPath} that cannot be read back`);
  return { ...made, certPath, keyPath };
}

async function readPair(
  certPath: string,
  keyPath: string,
): Promise<{ key: string; cert: string; fingerprint: string } | undefined> {
  const [cert, key] = await Promise.all([
    readFile(certPath, 'utf8').catch(() => undefined),
    readFile(keyPath, 'utf8').catch(() => undefined),
  ]);
  if (cert === undefined || key === undefined) return undefined;
  try {
    const x509 = new X509Certificate(cert);
    if (!x509.checkPrivateKey(createPrivateKey(key))) return undefined;
    return { key, cert, fingerprint: certificateFingerprint(cert) };
  } catch {
    return undefined;
  }
}
