import type { GuestSpec, GuestStatus, ImageRecord } from '../../src/core/types.ts';

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

/** The busybox image record the guests above are made from (fingerprint `ab…ab`). */
export const BUSYBOX_IMAGE: ImageRecord = {
  fingerprint: 'ab'.repeat(32),
  aliases: ['busybox'],
  description: 'test',
  os: 'busybox',
  release: '1',
  architecture: 'x86_64',
  source: 'builtin',
  sizeBytes: 1,
  createdAt: new Date(0).toISOString(),
  properties: {},
};
