import type { FastifyInstance } from 'fastify';
import { buildServer } from '../server/build-server.ts';
import type { MemberForwarding } from '../server/forward.ts';
import type { Services } from '../services/types.ts';
import type { KvStore } from '../store/kv.ts';
import { withMemberCertificates } from './member-auth.ts';
import type { MemberTls } from './member-client.ts';

/**
 * The member API (decision 0032): the whole API, served on the cluster address over HTTPS
 * only, with this member's certificate and the cluster CA as its chain (a joiner checks the
 * chain against the CA its token pins). Other members prove themselves with their own
 * certificate, looked up by fingerprint in the member records; tokens and trusted client
 * certificates work as on the daemon's TLS listener. Not listening yet: see listen.ts.
 */
export function buildMemberApi(
  services: Services & { auth: NonNullable<Services['auth']> },
  options: { store: KvStore; tls: MemberTls; token: string; uploadDir?: string; forward?: MemberForwarding },
): Promise<FastifyInstance> {
  return buildServer(
    { ...services, auth: withMemberCertificates(services.auth, options.store) },
    {
      auth: { type: 'token', token: options.token },
      logger: false,
      ...(options.uploadDir !== undefined && { uploadDir: options.uploadDir }),
      ...(options.forward !== undefined && { forward: options.forward }),
      https: { key: options.tls.key, cert: `${options.tls.cert.trim()}\n${options.tls.ca}` },
    },
  );
}
