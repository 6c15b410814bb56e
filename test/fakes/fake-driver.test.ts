import { runDriverConformance } from '../drivers/conformance.ts';
import { createFakeDriver, type FakeGuests } from './fake-driver.ts';

// The fake the unit tests of services and controllers stand on answers as the real drivers do:
// the same suite, minus what needs programs running in a guest (it runs none).
runDriverConformance('fake (in memory)', async () => {
  const host: FakeGuests = new Map();
  const driver = createFakeDriver('ct', host);
  return {
    driver,
    image: {
      record: {
        fingerprint: 'busybox-test',
        aliases: ['busybox'],
        description: 'fake busybox',
        os: 'busybox',
        release: '1',
        architecture: 'x86_64',
        source: 'builtin',
        sizeBytes: 0,
        createdAt: new Date(0).toISOString(),
        properties: {},
      },
      rootfs: '/nonexistent/fake-rootfs',
      baseDisk: () => Promise.reject(new Error('the fake image has no base disk')),
    },
    async cleanup() {},
    reopen: () => createFakeDriver('ct', host),
    noGuestPrograms: 'the fake driver runs no programs in its guests',
    killInit: (spec) => driver.kill(spec.name),
    async assertNoLeftovers(spec, options) {
      const g = host.get(spec.name);
      if (options?.runtimeOnly) {
        if (g?.process) throw new Error(`fake guest ${spec.name} still has an init`);
      } else if (g) throw new Error(`fake guest ${spec.name} is still on the fake host`);
    },
  };
});
