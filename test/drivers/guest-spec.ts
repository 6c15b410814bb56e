import type { GuestSpec, Model } from '../../src/core/types.ts';

/** A GuestSpec for driver tests: defaults for everything but name, model and config. */
export function testGuestSpec(name: string, model: Model, config: Record<string, string> = {}): GuestSpec {
  return {
    name,
    project: 'default',
    model,
    image: 'busybox-test',
    imageAlias: 'busybox',
    config,
    desired: 'Running',
    generation: 1,
    restartRequest: 0,
    stopTimeoutMs: 10_000,
    stopForce: false,
    deleting: false,
    location: 'test-host',
    createdAt: new Date(0).toISOString(),
  };
}
