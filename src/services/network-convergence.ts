import { setTimeout as sleep } from 'node:timers/promises';
import { conflict, isErrorCode, TrivisorError, unavailable } from '../core/errors.ts';
import type { NetworkSpec } from '../core/types.ts';
import type { KvStore } from '../store/kv.ts';
import { records } from '../store/records.ts';

/** Writes of a network's spec (compared on its revision) and the wait for the controller to answer them. */
export interface Convergence {
  /** Waits until the controller answered `generation` (or deleted the network when `gone`). */
  waitConverged(name: string, generation: number, gone?: boolean): Promise<void>;
  /** Conflict when the spec changed since `modRevision`. */
  writeSpec(next: NetworkSpec, modRevision: number): Promise<void>;
  /** Puts back the spec before a change the host could not apply, unless it changed again meanwhile. */
  rollBack(name: string, failedGen: number, before: NetworkSpec): Promise<void>;
}

export function createConvergence(store: KvStore, waitMs: number): Convergence {
  /** Waits until the controller answered `generation` (or deleted the network when `gone`). */
  async function waitConverged(name: string, generation: number, gone = false): Promise<void> {
    const deadline = Date.now() + waitMs;
    while (Date.now() < deadline) {
      const [s, st] = await Promise.all([
        records.network.at(name).get(store),
        records.networkStatus.at(name).get(store),
      ]);
      if (!s) {
        if (gone) return;
        throw conflict(`Network ${name} was deleted meanwhile`);
      }
      const status = st?.value;
      if (status?.failedGeneration === generation && status.error) {
        // The controller's code (a refusal stays what it was); statuses without one were refusals.
        throw new TrivisorError(
          isErrorCode(status.errorCode) && status.errorCode !== 'Internal'
            ? status.errorCode
            : 'FailedPrecondition',
          status.error,
        );
      }
      if (!gone && status && status.observedGeneration >= generation) return;
      await sleep(50);
    }
    throw unavailable(
      `Network ${name} was not converged within ${waitMs / 1000} s: is the daemon's network controller running?`,
    );
  }

  async function writeSpec(next: NetworkSpec, modRevision: number): Promise<void> {
    const ref = records.network.at(next.name);
    const r = await store.txn({ compare: [ref.unchanged(modRevision)], success: [ref.putOp(next)] });
    if (!r.succeeded) throw conflict(`Network ${next.name} was changed at the same time; retry`);
  }

  /** Puts back the spec before a change the host could not apply, unless it changed again meanwhile. */
  async function rollBack(name: string, failedGen: number, before: NetworkSpec): Promise<void> {
    const now = await records.network.at(name).get(store);
    if (!now || now.value.generation !== failedGen) return;
    await writeSpec({ ...before, generation: failedGen + 1 }, now.modRevision).catch(() => {});
  }

  return { waitConverged, writeSpec, rollBack };
}
