import { runDriverConformance } from './conformance.ts';
import { makeCtFixture } from './ct-fixture.ts';

runDriverConformance('ct (unprivileged, user namespace)', () => makeCtFixture());
runDriverConformance('ct (privileged)', () =>
  makeCtFixture({ guestConfig: { 'security.privileged': 'true' } }),
);
