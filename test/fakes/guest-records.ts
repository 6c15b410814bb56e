import type { GuestSpec, GuestStatus } from '../../src/core/types.ts';

/**
 * A guest's spec and status as the unit tests of controllers and services build them: a running
 * busybox ct guest `web` on member h1, converged on its first generation. Each test says only
 * what it changes.
 */
export function aGuestSpec(more: Partial<GuestSpec> = {}): GuestSpec {
  return {
    name: 'web',
    project: 'default',
    model: 'ct',
    image: 'ab'.repeat(32),
    imageAlias: 'busybox',
    config: {},
    desired: 'Running',
    generation: 1,
    restartRequest: 0,
    stopTimeoutMs: 1000,
    stopForce: false,
    deleting: false,
    location: 'h1',
    createdAt: new Date(0).toISOString(),
    ...more,
  };
}

export function aGuestStatus(more: Partial<GuestStatus> = {}): GuestStatus {
  return {
    status: 'Running',
    observedGeneration: 1,
    observedRestartRequest: 0,
    restartCount: 0,
    provisioned: true,
    appliedConfig: {},
    pendingRestart: [],
    ...more,
  };
}
