import { cancelled, conflict, isErrorCode, TrivisorError } from '../core/errors.ts';
import type { GuestSpec, GuestStatus } from '../core/types.ts';
import type { KvStore, Watcher } from '../store/kv.ts';
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
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    let checking = false;
    let again = false;
    const finish = (err?: Error) => {
      if (settled) return;
      settled = true;
      w1.cancel();
      w2.cancel();
      signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve();
    };
    const check = async () => {
      if (checking) {
        again = true;
        return;
      }
      checking = true;
      try {
        do {
          again = false;
          const [s, st] = await Promise.all([
            records.guest.at(name).get(store),
            records.guestStatus.at(name).get(store),
          ]);
          const verdict = judge(s?.value, st?.value);
          if (verdict === true) return finish();
          if (verdict instanceof Error) return finish(verdict);
        } while (again && !settled);
      } catch (e) {
        finish(e as Error);
      } finally {
        checking = false;
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
              void check();
            },
          },
          () => void check(),
        );
      };
      open();
      return { cancel: () => watcher.cancel() };
    };
    const w1 = follow(records.guest.key(name));
    const w2 = follow(records.guestStatus.key(name));
    signal?.addEventListener('abort', onAbort);
    void check();
  });
}

/**
 * The failure a stored status records, with its code: the controller that failed may be
 * another member's, and its code (FailedPrecondition, NotSupported…) is what the caller
 * must get, not Internal. Statuses written before codes were stored have none: Internal.
 */
export function convergenceError(status: { error: string; errorCode?: string | undefined }): TrivisorError {
  return new TrivisorError(isErrorCode(status.errorCode) ? status.errorCode : 'Internal', status.error);
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
