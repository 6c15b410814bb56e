import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { certificateFingerprint, normalizeFingerprint, parseCertificate } from '../api/certificates.ts';
import { ALL_PROJECTS, type Caller, ROLES, type Role } from '../core/access.ts';
import { alreadyExists, invalidArgument, notFound } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { assertDnsLabel } from '../core/names.ts';
import type { KvStore } from '../store/kv.ts';
import { records, type Stored, type TokenRecord, valuesOf } from '../store/records.ts';

/** A token as listed: never its secret, nor the secret's hash. */
export interface TokenInfo {
  name: string;
  description: string;
  role: Role;
  /** Project names, or `*` for all of them and the host. */
  projects: string[];
  createdAt: string;
  /** Who made it (`token admin`, `root on the unix socket`…). */
  createdBy: string;
}

/** A trusted client certificate: it authenticates as a token does, with its role and projects. */
export interface CertificateInfo {
  fingerprint: string;
  name: string;
  role: Role;
  projects: string[];
  /** The certificate (PEM): public. */
  certificate: string;
  /** Its subject's common name and validity, for listings. */
  subject: string;
  notAfter: string;
  createdAt: string;
  createdBy: string;
}

/** Tokens and trusted certificates (issue 11): made, listed and revoked by host admins; checked on every TCP request. */
export interface AuthService {
  /** Makes a token; its secret is in the answer only, never stored or shown again. */
  createToken(
    request: { name: string; role: Role; projects: string[]; description?: string },
    createdBy: string,
  ): Promise<{ token: TokenInfo; secret: string }>;
  listTokens(): Promise<TokenInfo[]>;
  /** NotFound for an unknown name. */
  revokeToken(name: string): Promise<void>;
  trustCertificate(
    request: { certificate: string; name?: string; role: Role; projects: string[] },
    createdBy: string,
  ): Promise<CertificateInfo>;
  listCertificates(): Promise<CertificateInfo[]>;
  /** By fingerprint or a unique prefix of it (at least 8 digits); NotFound otherwise. */
  untrustCertificate(fingerprint: string): Promise<CertificateInfo>;
  /**
   * The caller an issued token's secret or a (TLS-verified) client certificate stands for,
   * or undefined when neither is known (the daemon's own token is server/auth.ts's to check).
   */
  authenticate(credentials: {
    bearer?: string;
    certificateFingerprint?: string;
    /**
     * The caller another member authenticated and passed a request on for (decision 0034):
     * only a cluster member's certificate may bring one (cluster/member-auth.ts); anywhere
     * else the request authenticates nobody.
     */
    forwardedCaller?: string;
  }): Promise<Caller | undefined>;
}

/** Keys of tokens and certificates, as core/keys.ts defines them (for the web sessions' checks). */
export const authKeys = {
  tokens: keys.tokenPrefix,
  token: keys.token,
  certificates: keys.certificatePrefix,
  certificate: keys.certificate,
} as const;

/** The name of the daemon's own token (`$TRIVISOR_DIR/token`): the host admin's, for local scripts. */
export const ADMIN_TOKEN_NAME = 'admin';

/** Issued secrets: `trv_` + the token's name + `_` + 256 random bits; the name says which record to check. */
const SECRET_PREFIX = 'trv_';
const SECRET = /^trv_([a-z0-9-]{1,63})_([A-Za-z0-9_-]{43})$/;

const sha256 = (text: string): Buffer => createHash('sha256').update(text).digest();

function checkBinding(request: { role: unknown; projects: unknown }): { role: Role; projects: string[] } {
  const { role, projects } = request;
  if (typeof role !== 'string' || !ROLES.includes(role as Role)) {
    throw invalidArgument(`Unknown role ${JSON.stringify(role)}: use ${ROLES.join(', ')}`);
  }
  if (!Array.isArray(projects) || projects.length === 0) {
    throw invalidArgument('Give the projects the role holds in (--project p1,p2), or * for all of them');
  }
  const unique = [...new Set(projects as unknown[])];
  for (const p of unique) if (p !== ALL_PROJECTS) assertDnsLabel(p, 'project name');
  if (unique.includes(ALL_PROJECTS) && unique.length > 1) {
    throw invalidArgument('* already means every project: give it alone');
  }
  return { role: role as Role, projects: unique as string[] };
}

/**
 * Tokens and certificates live in the store (`/trivisor/auth/…`), so that every member of a
 * cluster knows them. A token's secret has 256 random bits, so a plain SHA-256 of it is
 * enough to store (no slow hash: nothing to guess); it is compared in constant time.
 */
export function createAuthService(deps: {
  store: KvStore;
  /** NotFound for a project that does not exist (tokens are bound to existing ones). */
  assertProjectExists?: (name: string) => Promise<void>;
  now?: () => Date;
}): AuthService {
  const now = deps.now ?? (() => new Date());

  const checkProjects = async (projects: string[]) => {
    for (const p of projects) if (p !== ALL_PROJECTS) await deps.assertProjectExists?.(p);
  };

  /** A record that does not decode authenticates nobody: authentication fails closed. */
  const orNothing = <T>(read: Promise<Stored<T> | undefined>): Promise<T | undefined> =>
    read.then(
      (found) => found?.value,
      () => undefined,
    );
  const publicToken = ({ secretSha256: _, ...info }: TokenRecord): TokenInfo => info;

  const certificateByPrefix = async (text: string): Promise<CertificateInfo> => {
    const prefix = text.trim().replaceAll(':', '').toLowerCase();
    if (!/^[0-9a-f]{8,64}$/.test(prefix)) {
      throw invalidArgument(
        `${JSON.stringify(text.slice(0, 80))} is not a certificate fingerprint: give at least its first 8 hex digits`,
      );
    }
    const { kvs } = await deps.store.list(keys.certificate(prefix));
    if (kvs.length === 0) throw notFound(`No trusted certificate has the fingerprint ${prefix}`);
    if (kvs.length > 1)
      throw invalidArgument(`${prefix} matches ${kvs.length} certificates: give more digits`);
    return records.certificate.decode(kvs[0]!);
  };

  return {
    async createToken(request, createdBy) {
      assertDnsLabel(request.name, 'token name');
      if (request.name === ADMIN_TOKEN_NAME) {
        throw invalidArgument(`"${ADMIN_TOKEN_NAME}" names the daemon's own token: choose another name`);
      }
      const binding = checkBinding(request);
      await checkProjects(binding.projects);
      const description = request.description ?? '';
      if (typeof description !== 'string' || description.length > 256) {
        throw invalidArgument('The description must be a string of at most 256 characters');
      }
      const secret = `${SECRET_PREFIX}${request.name}_${randomBytes(32).toString('base64url')}`;
      const record: TokenRecord = {
        name: request.name,
        description,
        ...binding,
        createdAt: now().toISOString(),
        createdBy,
        secretSha256: sha256(secret).toString('hex'),
      };
      const ref = records.token.at(request.name);
      if (!(await deps.store.txn({ compare: [ref.absent()], success: [ref.putOp(record)] })).succeeded) {
        throw alreadyExists(`Token ${request.name} already exists: revoke it first or choose another name`);
      }
      return { token: publicToken(record), secret };
    },
    async listTokens() {
      return valuesOf(await records.token.list(deps.store)).map(publicToken);
    },
    async revokeToken(name) {
      assertDnsLabel(name, 'token name');
      const { deleted } = await deps.store.delete(keys.token(name));
      if (deleted === 0) {
        throw notFound(
          name === ADMIN_TOKEN_NAME
            ? `The daemon's own token is not revoked through the API: replace $TRIVISOR_DIR/token and restart the daemon`
            : `No token is named ${name}`,
        );
      }
    },
    async trustCertificate(request, createdBy) {
      if (typeof request.certificate !== 'string') throw invalidArgument('Give the certificate in PEM form');
      const cert = parseCertificate(request.certificate);
      const fingerprint = certificateFingerprint(request.certificate);
      const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1] ?? '';
      const name =
        request.name ??
        cn
          .replace(/[^a-z0-9-]+/gi, '-')
          .toLowerCase()
          .replace(/^-+|-+$/g, '');
      assertDnsLabel(name, 'certificate name (give one with --name)');
      const binding = checkBinding(request);
      await checkProjects(binding.projects);
      if (new Date(cert.validTo).getTime() < now().getTime()) {
        throw invalidArgument(`The certificate expired on ${new Date(cert.validTo).toISOString()}`);
      }
      const info: CertificateInfo = {
        fingerprint,
        name,
        ...binding,
        certificate: cert.toString(),
        subject: cert.subject.replaceAll('\n', ', '),
        notAfter: new Date(cert.validTo).toISOString(),
        createdAt: now().toISOString(),
        createdBy,
      };
      const ref = records.certificate.at(fingerprint);
      if (!(await deps.store.txn({ compare: [ref.absent()], success: [ref.putOp(info)] })).succeeded) {
        throw alreadyExists(
          `The certificate ${fingerprint.slice(0, 12)} is already trusted: remove it first`,
        );
      }
      return info;
    },
    async listCertificates() {
      return valuesOf(await records.certificate.list(deps.store));
    },
    async untrustCertificate(fingerprint) {
      const info = await certificateByPrefix(fingerprint);
      await deps.store.delete(keys.certificate(info.fingerprint));
      return info;
    },
    async authenticate({ bearer, certificateFingerprint: fp, forwardedCaller }) {
      // Only a member may pass a caller on (cluster/member-auth.ts); a trusted client may not.
      if (forwardedCaller !== undefined) return undefined;
      if (bearer !== undefined) {
        const digest = sha256(bearer);
        const m = SECRET.exec(bearer);
        if (!m) return undefined;
        const record = await orNothing(records.token.at(m[1]!).get(deps.store));
        if (!record || !timingSafeEqual(digest, Buffer.from(record.secretSha256, 'hex'))) return undefined;
        return { method: 'token', name: record.name, role: record.role, projects: record.projects };
      }
      if (fp !== undefined) {
        const info = await orNothing(records.certificate.at(normalizeFingerprint(fp)).get(deps.store));
        // TLS checked that the client holds the key; the dates are ours to check (self-signed, no chain).
        if (!info || Date.parse(info.notAfter) < now().getTime()) return undefined;
        return {
          method: 'certificate',
          name: info.name,
          fingerprint: info.fingerprint,
          role: info.role,
          projects: info.projects,
        };
      }
      return undefined;
    },
  };
}
