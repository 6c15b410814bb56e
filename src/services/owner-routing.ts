import { unavailable } from '../core/errors.ts';
import { isDnsLabel } from '../core/names.ts';
import { projectOfRecord } from '../core/projects.ts';
import type { KvStore } from '../store/kv.ts';
import { records } from '../store/records.ts';

/** Where a request about a guest must be answered. */
export type GuestPlace =
  | {
      here: true;
      /** A pool defined on every member (decision 0038): any member could answer; a new guest on it is the scheduler's. */
      anyMember?: boolean;
    }
  | { here: false; member: string };

/**
 * Runs a guest-scoped request on the guest's owner (docs/decisions/0028). Interactive and
 * streaming requests (exec, console, files, display), point-in-time storage actions
 * (snapshots, restores, backups and their files) and reads of what only the owner's host
 * knows (live usage, NIC counters) must run where the guest is; desired-state writes
 * (state, config, delete) need not, and any member takes them.
 */
export interface OwnerRouting {
  /**
   * Here when this member owns the guest, or nobody does, or it is not `project`'s (then the
   * request answers NotFound here, worded as for a guest that does not exist: decision 21).
   */
  placeOf(guest: string, options?: { project?: string }): Promise<GuestPlace>;
  /**
   * Runs `here` when this member owns the guest; otherwise Unavailable naming the owner. The
   * API passes such requests on to the owner before they get here (server/forward.ts, decision
   * 0034): this answers a member that cannot, or a request passed on to a member that no longer
   * owns the guest.
   */
  onOwner<T>(guest: string, here: () => Promise<T>, options?: { project?: string }): Promise<T>;
  /**
   * Where a change of a storage pool or of one of its custom volumes must run: on the member
   * whose disks hold it (decision 0034). A volume that exists is its own member's; otherwise
   * the pool's; the default pool is every member's own (its directory under each state dir).
   * A pool defined on every member (decision 0038) is answered by the member `target` names
   * (`?target=`), else here.
   */
  placeOfStorage(pool: string, volume?: string, target?: string): Promise<GuestPlace>;
}

/** Each member has a default pool of its own: the directory under its state directory. */
const DEFAULT_POOL_NAME = 'default';

export function createOwnerRouting(deps: { store: KvStore; member: string }): OwnerRouting {
  const routing: OwnerRouting = {
    async placeOf(guest, options = {}) {
      if (!isDnsLabel(guest)) return { here: true };
      const spec = (
        await records.guest
          .at(guest)
          .get(deps.store)
          .catch(() => undefined)
      )?.value;
      if (!spec || (options.project !== undefined && projectOfRecord(spec) !== options.project)) {
        return { here: true };
      }
      // The location key is the owner's record (keys.guestLocation); a guest recorded before it
      // is its spec's `location`'s until that member's controller writes the key.
      const location = (await records.guestLocation.at(guest).get(deps.store))?.value ?? spec.location;
      return location === deps.member ? { here: true } : { here: false, member: location };
    },
    async placeOfStorage(pool, volume, target) {
      if (!isDnsLabel(pool)) return { here: true };
      if (volume !== undefined && isDnsLabel(volume)) {
        const found = (
          await records.volume
            .at(pool, volume)
            .get(deps.store)
            .catch(() => undefined)
        )?.value;
        if (found?.location !== undefined)
          return found.location === deps.member ? { here: true } : { here: false, member: found.location };
      }
      // Every member has a default pool, as every member has an instance of a pool on every member.
      if (pool === DEFAULT_POOL_NAME) {
        return target === undefined || target === deps.member
          ? { here: true }
          : { here: false, member: target };
      }
      const record = (
        await records.pool
          .at(pool)
          .get(deps.store)
          .catch(() => undefined)
      )?.value;
      if (record?.everyMember) {
        if (target === undefined) return { here: true, anyMember: true };
        return target === deps.member ? { here: true } : { here: false, member: target };
      }
      if (record?.location === undefined || record.location === deps.member) return { here: true };
      return { here: false, member: record.location };
    },
    async onOwner(guest, here, options = {}) {
      const place = await routing.placeOf(guest, options);
      if (place.here) return here();
      throw unavailable(
        `Guest ${guest} is on member ${place.member}, not on ${deps.member}: ask ${place.member}`,
      );
    },
  };
  return routing;
}
