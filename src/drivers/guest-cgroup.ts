import { createHash } from 'node:crypto';

/**
 * The cgroup parent shared by every guest of one state dir, whatever its model:
 * `/trivisor-<8 hex of sha256(stateDir)>`. Two daemons on one host (tests, cluster members in
 * namespaces) keep their guests apart by it.
 */
export function cgroupParentOf(stateDir: string): string {
  return `/trivisor-${createHash('sha256').update(stateDir).digest('hex').slice(0, 8)}`;
}
