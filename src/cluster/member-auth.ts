import { ALL_PROJECTS, type Caller } from '../core/access.ts';
import { decodeCaller } from '../server/forward.ts';
import type { AuthService } from '../services/auth-service.ts';
import type { KvStore } from '../store/kv.ts';
import { records } from '../store/records.ts';

/**
 * The member API's authentication (decision 0032): a client certificate that is a current
 * member's — its SHA-256 is the one the member's record names — is that member, with the
 * rights of the host's admin (a member runs the cluster; forwarded requests carry their
 * own caller later). Anything else is as the daemon's TLS API would take it (tokens,
 * trusted certificates). A removed member's certificate names no record and counts for
 * nothing here at its next request. A member that passes a request on sends its caller along
 * (decision 0034), and only a member's certificate may.
 */
export function withMemberCertificates(auth: AuthService, store: KvStore): AuthService {
  return {
    ...auth,
    async authenticate(credentials) {
      const fingerprint = credentials.certificateFingerprint;
      if (fingerprint !== undefined && credentials.bearer === undefined) {
        const member = (await records.member.list(store)).items.find(
          (m) => m.value.certificateFingerprint === fingerprint,
        );
        // A request another member passed on is its first caller's, with that caller's role and
        // projects (decision 0034): the member checked them, and this member checks them again.
        if (credentials.forwardedCaller !== undefined) {
          return member ? decodeCaller(credentials.forwardedCaller) : undefined;
        }
        if (member) {
          const caller: Caller = {
            method: 'certificate',
            name: `member ${member.value.name}`,
            fingerprint,
            role: 'admin',
            projects: [ALL_PROJECTS],
          };
          return caller;
        }
      }
      return auth.authenticate(credentials);
    },
  };
}
