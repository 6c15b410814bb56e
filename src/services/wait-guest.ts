import { cancelled, conflict, isErrorCode, TrivisorError } from '../core/errors.ts';
import type { GuestSpec, GuestStatus } from '../core/types.ts';
import { type KvStore, readTogether, type Watcher } from '../store/kv.ts';
import { records } from '../store/records.ts';

/** Verdict of a wait predicate: keep waiting (undefined), done (true), or failed (an Error). */
export type WaitVerdict = undefined | true | Error;

/**
 * Resolves when `judge` says the guest's records reached the wanted state. Works
 * through store watches, so it works the same when another host's controller
 * does the work.
 */
export async function waitForGuest(
  store: KvStore,
  name: string,
  judge: (spec: GuestSpec | undefined, status: GuestStatus | undefined) => WaitVerdict,
  signal?: AbortSignal,
  /** How often the records are read again beside the watches (REREAD_MS; tests shorten it). */
  rereadMs = REREAD_MS,
): Promise<void> {
  const specKey = records.guest.key(name);
  const statusKey = records.guestStatus.key(name);
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    let reread: NodeJS.Timeout | undefined;
    /**
     * Each record as last seen and the revision it was seen at: a watch event carries the value
     * it wrote, so a change is judged without reading the store again (a round trip on etcd).
     * A read and the watch may cross: whichever saw the later revision wins.
     */
    const seen = new Map<string, { value: string | undefined; revision: number }>();
    const finish = (err?: Error) => {
      if (settled) return;
      settled = true;
      clearInterval(reread);
      w1.cancel();
      w2.cancel();
      signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve();
    };
    const see = (key: string, value: string | undefined, revision: number) => {
      const before = seen.get(key);
      if (!before || revision > before.revision) seen.set(key, { value, revision });
    };
    const decide = () => {
      const spec = seen.get(specKey);
      const status = seen.get(statusKey);
      // Until both are known (the first read answers), an event of one says nothing of the other.
      if (settled || !spec || !status) return;
      try {
        const verdict = judge(
          spec.value === undefined ? undefined : records.guest.decode({ key: specKey, value: spec.value }),
          status.value === undefined
            ? undefined
            : records.guestStatus.decode({ key: statusKey, value: status.value }),
        );
        if (verdict === true) finish();
        else if (verdict instanceof Error) finish(verdict);
      } catch (e) {
        finish(e as Error);
      }
    };
    /** Both records in one read, at one revision: what is absent is known absent at that revision. */
    const read = async () => {
      try {
        const r = await readTogether(store, [{ key: specKey }, { key: statusKey }]);
        const [spec, status] = r.kvs.map((kvs) => kvs[0]?.value);
        see(specKey, spec, r.revision);
        see(statusKey, status, r.revision);
        decide();
      } catch (e) {
        finish(e as Error);
      }
    };
    const onAbort = () => finish(cancelled(`Waiting for guest ${name} was cancelled`));
    // A lost watch (the store cancelled it) is opened again, and the records read again.
    const follow = (key: string): Watcher => {
      let watcher: Watcher;
      const open = () => {
        watcher = store.watch(
          key,
          {
            prefix: false,
            onLost: () => {
              if (settled) return;
              open();
              void read();
            },
          },
          (events, revision) => {
            for (const e of events) see(e.kv.key, e.type === 'put' ? e.kv.value : undefined, revision);
            decide();
          },
        );
      };
      open();
      return { cancel: () => watcher.cancel() };
    };
    const w1 = follow(specKey);
    const w2 = follow(statusKey);
    // Read again now and then: a watch that stalls without saying so must not leave the wait
    // (and the operation that holds it) hanging for good.
    reread = setInterval(() => void read(), rereadMs);
    reread.unref();
    signal?.addEventListener('abort', onAbort);
    void read();
  });
}

/** How often a wait reads the records again beside its watches. */
const REREAD_MS = 30_000;

/**
 * The failure a stored status records, with its code: the controller that failed may be
 * another member's, and its code (FailedPrecondition, NotSupported…) is what the caller
 * must get, not Internal. Statuses written before codes were stored have none: Internal.
 */
export function convergenceError(status: { error: string; errorCode?: string | undefined }): TrivisorError {
  return new TrivisorError(isErrorCode(status.errorCode) ? status.errorCode : 'Internal', status.error);
}

/** Judge for "the guest's (new) member has made its files at generation `gen`" (a move's, a recovery's hand-over). */
export function provisionedAt(gen: number): (spec?: GuestSpec, status?: GuestStatus) => WaitVerdict {
  const converged = convergedTo(gen);
  return (spec, status) => {
    const verdict = converged(spec, status);
    return verdict === true && !status?.provisioned ? undefined : verdict;
  };
}

/** Judge for "the controller has acted on generation `gen`". */
export function convergedTo(gen: number): (spec?: GuestSpec, status?: GuestStatus) => WaitVerdict {
  return (spec, status) => {
    if (!spec) return conflict('The guest was deleted meanwhile');
    if (!status || status.observedGeneration < gen) return undefined;
    if (status.failedGeneration !== undefined && status.failedGeneration >= gen && status.error) {
      return convergenceError({ error: status.error, errorCode: status.errorCode });
    }
    return true;
  };
}
