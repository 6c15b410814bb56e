import { randomBytes, X509Certificate } from 'node:crypto';
import { constants } from 'node:fs';
import { chmod, mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { certificateFingerprint } from '../api/certificates.ts';
import { internal, invalidArgument } from '../core/errors.ts';
import type { ProcessRunner } from '../host/runner.ts';

/** The cluster's certificate authority: what every member's certificate chains to. */
export interface ClusterCa {
  /** PEM. */
  cert: string;
  /** PEM (kept in the cluster store; root-only on disk while it is used). */
  key: string;
  /** SHA-256 of the CA certificate's DER form, hex: what a join token pins. */
  fingerprint: string;
}

/** A member's key and the certificate the cluster CA signed for it. */
export interface MemberCertificate {
  cert: string;
  key: string;
  fingerprint: string;
}

/** Ten years, as the server certificate's (decision 0022): rotation is an administrator's decision. */
const VALID_DAYS = 3650;

/**
 * Makes a new cluster CA with Debian's `openssl` (node:crypto makes keys, not X.509
 * certificates): ECDSA P-256, CA:TRUE, allowed to sign certificates only. `workDir` is
 * a root-only directory for openssl's files; nothing is left in it.
 */
export async function makeClusterCa(workDir: string, options: { runner: ProcessRunner }): Promise<ClusterCa> {
  const dir = await scratchDir(workDir);
  try {
    const keyFile = path.join(dir, 'ca.key');
    const certFile = path.join(dir, 'ca.crt');
    await createPrivateFile(keyFile);
    // A name of its own, so two clusters' CAs are told apart in every message.
    const id = randomBytes(4).toString('hex');
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
      `/O=Trivisor/CN=Trivisor cluster CA ${id}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE,pathlen:0',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
      '-keyout',
      keyFile,
      '-out',
      certFile,
    ]);
    const cert = await readFile(certFile, 'utf8');
    const key = await readFile(keyFile, 'utf8');
    return { cert, key, fingerprint: certificateFingerprint(cert) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * A new private key and a certificate signing request for it (what a joining member
 * sends; its key never leaves it). The CSR's subject is not trusted: the signer sets its own.
 */
export async function makeMemberKey(
  workDir: string,
  options: { runner: ProcessRunner; name: string },
): Promise<{ key: string; csr: string }> {
  const dir = await scratchDir(workDir);
  try {
    const keyFile = path.join(dir, 'member.key');
    const csrFile = path.join(dir, 'member.csr');
    await createPrivateFile(keyFile);
    await options.runner.run([
      'openssl',
      'req',
      '-new',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-sha256',
      '-subj',
      `/O=Trivisor/CN=${options.name}`,
      '-keyout',
      keyFile,
      '-out',
      csrFile,
    ]);
    return { key: await readFile(keyFile, 'utf8'), csr: await readFile(csrFile, 'utf8') };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Signs a member's certificate: subject `O=Trivisor, CN=NAME` whatever the request asked,
 * the member's cluster address as its only IP name (etcd and the member API are reached
 * there), server and client use (the same certificate serves etcd's listeners, the member
 * API, and as the member's client certificate to both). openssl checks the request's own
 * signature, so the caller holds the key it sends.
 */
export async function signMemberCertificate(
  workDir: string,
  options: {
    runner: ProcessRunner;
    ca: Pick<ClusterCa, 'cert' | 'key'>;
    csr: string;
    name: string;
    address: string;
  },
): Promise<string> {
  if (isIP(options.address) === 0) {
    throw invalidArgument(`A member's address must be an IP address, got ${JSON.stringify(options.address)}`);
  }
  if (
    !/^-----BEGIN CERTIFICATE REQUEST-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE REQUEST-----\s*$/.test(
      options.csr,
    )
  ) {
    throw invalidArgument('The certificate signing request is not one PEM block');
  }
  const dir = await scratchDir(workDir);
  try {
    const caKey = path.join(dir, 'ca.key');
    await createPrivateFile(caKey);
    await writeFile(caKey, options.ca.key);
    const caCert = path.join(dir, 'ca.crt');
    await writeFile(caCert, options.ca.cert);
    const csr = path.join(dir, 'member.csr');
    await writeFile(csr, options.csr);
    const ext = path.join(dir, 'member.ext');
    await writeFile(
      ext,
      [
        'basicConstraints=critical,CA:FALSE',
        'keyUsage=critical,digitalSignature,keyEncipherment',
        'extendedKeyUsage=serverAuth,clientAuth',
        `subjectAltName=IP:${options.address}`,
        '',
      ].join('\n'),
    );
    const out = path.join(dir, 'member.crt');
    const result = await options.runner.run(
      [
        'openssl',
        'x509',
        '-req',
        '-in',
        csr,
        '-CA',
        caCert,
        '-CAkey',
        caKey,
        '-set_serial',
        `0x${randomBytes(16).toString('hex')}`,
        '-days',
        String(VALID_DAYS),
        '-sha256',
        '-subj',
        `/O=Trivisor/CN=${options.name}`,
        '-extfile',
        ext,
        '-out',
        out,
      ],
      { allowFailure: true },
    );
    if (result.code !== 0) {
      throw invalidArgument(
        `The certificate signing request cannot be signed: ${(result.stderr.trim().split('\n')[0] ?? '').slice(0, 200)}`,
      );
    }
    return await readFile(out, 'utf8');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Whether `cert` was signed by the CA `caCert` and is a member certificate for `name`
 * (its subject's CN); what both ends of a member-to-member connection check beyond TLS.
 */
export function isMemberCertificate(cert: string | Buffer, caCert: string, name?: string): boolean {
  try {
    const x509 = new X509Certificate(cert);
    const ca = new X509Certificate(caCert);
    if (!x509.checkIssued(ca) || !x509.verify(ca.publicKey)) return false;
    return name === undefined || memberNameOf(x509) === name;
  } catch {
    return false;
  }
}

/** The member name a member certificate is for (its subject's CN). */
export function memberNameOf(cert: X509Certificate): string | undefined {
  return /(?:^|\n)CN=([^\n]+)/.exec(cert.subject)?.[1];
}

/** A private directory under `workDir` for openssl's files (0700). */
async function scratchDir(workDir: string): Promise<string> {
  await mkdir(workDir, { recursive: true, mode: 0o700 });
  const dir = await mkdtemp(path.join(workDir, 'openssl-'));
  await chmod(dir, 0o700);
  return dir;
}

/** Creates `file` empty, 0600, before anything secret is written into it. */
async function createPrivateFile(file: string): Promise<void> {
  const handle = await open(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600).catch(
    (e: unknown) => {
      throw internal(`Cannot create ${path.basename(file)}: ${(e as Error).message}`);
    },
  );
  await handle.close();
}
