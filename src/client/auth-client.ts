import type {
  AuditEntryBody,
  CertificateInfo,
  CreatedToken,
  CreateTokenBody,
  TokenInfo,
  TrustCertificateBody,
} from '../api/auth-schemas.ts';
import type { WebLink } from '../api/web-schemas.ts';

/** Tokens, trusted certificates and the audit log (a host admin's; the audit log a project admin's too). */
export interface AuthClient {
  listTokens(): Promise<TokenInfo[]>;
  /** The answer holds the token's secret: the only time it is ever shown. */
  createToken(request: CreateTokenBody): Promise<CreatedToken>;
  revokeToken(name: string): Promise<void>;
  listCertificates(): Promise<CertificateInfo[]>;
  trustCertificate(request: TrustCertificateBody): Promise<CertificateInfo>;
  /** By fingerprint or its first 8 or more hex digits; answers the certificate that was removed. */
  untrustCertificate(fingerprint: string): Promise<CertificateInfo>;
  /**
   * Audit entries, oldest first: since a duration back (`2h`) or a time; of `project`, or of
   * all projects and the host (`allProjects`, a host admin's), or of the client's project.
   */
  audit(options?: {
    since?: string;
    limit?: number;
    project?: string;
    allProjects?: boolean;
  }): Promise<AuditEntryBody[]>;
  /** A one-time login link for the web UI, as the host admin who asks (its `path`, on the HTTPS listener). */
  createWebLink(): Promise<WebLink>;
}

type Call = <T>(method: string, path: string, json?: unknown) => Promise<T>;

const enc = encodeURIComponent;

export function authMethods(call: Call): AuthClient {
  return {
    listTokens: () => call('GET', '/1.0/auth/tokens'),
    createToken: (request) => call('POST', '/1.0/auth/tokens', request),
    async revokeToken(name) {
      await call('DELETE', `/1.0/auth/tokens/${enc(name)}`);
    },
    listCertificates: () => call('GET', '/1.0/auth/certificates'),
    trustCertificate: (request) => call('POST', '/1.0/auth/certificates', request),
    untrustCertificate: (fingerprint) => call('DELETE', `/1.0/auth/certificates/${enc(fingerprint)}`),
    createWebLink: () => call('POST', '/1.0/auth/web-links'),
    audit(o = {}) {
      const query = new URLSearchParams();
      if (o.since !== undefined) query.set('since', o.since);
      if (o.limit !== undefined) query.set('limit', String(o.limit));
      if (o.project !== undefined) query.set('project', o.project);
      if (o.allProjects) query.set('all-projects', 'true');
      const qs = query.toString();
      return call('GET', `/1.0/audit${qs ? `?${qs}` : ''}`);
    },
  };
}
