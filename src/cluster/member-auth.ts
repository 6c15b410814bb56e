import { ALL_PROJECTS, type Caller } from '../core/access.ts';
import type { AuthService } from '../services/auth-service.ts';
import type { KvStore } from '../store/kv.ts';
import { records } from '../store/records.ts';

/**
 * The member API's authentication (decision 0032): a client certificate that is a current
 * member's — its SHA-256 is the one the member's record names — is that member, with the
 * rights of the host's admin (a member runs the cluster; forwarded requests carry their
 * own caller later). Anything else is as the daemon's TLS API would take it (tokens,
 * trusted certificates). A removed member's certificate names no record and counts for
 * nothing here at its next request.
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
