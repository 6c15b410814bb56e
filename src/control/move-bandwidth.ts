import type { LinkBandwidth } from '../autonomic/cluster-state.ts';
import { asTrivisorError } from '../core/errors.ts';
import type { Logger } from '../host/logger.ts';
import type { GuestMover } from '../services/guest-move.ts';
import type { OperationService } from '../services/types.ts';
import type { KvStore } from '../store/kv.ts';
import { records } from '../store/records.ts';

/**
 * The migration bandwidth between members, learnt from finished moves (issue 14 §2): each move
 * that copied bytes (a cold move's archive, a live move's disk and RAM) records bytes over the
 * seconds the copy took for its pair of members, in the cluster store, so that whichever member
 * plans reads it. The rebalancer's cost uses a pair's average once it has one, and 1 Gbit/s
 * (said as assumed) until then.
 */

/** The weight of a new move in the moving average: recent moves count most, one odd move does not rule. */
export const MOVE_BANDWIDTH_WEIGHT = 0.3;

/** Copies shorter than this or smaller than this say more about latency than bandwidth: not recorded. */
const MIN_SECONDS = 0.05;
const MIN_BYTES = 1024 * 1024;

export interface MoveSample {
  from: string;
  to: string;
  bytes: number;
  seconds: number;
  atMs: number;
}

/** Folds one finished move into its pair's average; a copy too small or too short to measure is left out. */
export async function recordMoveBandwidth(store: KvStore, sample: MoveSample): Promise<boolean> {
  if (!(sample.bytes >= MIN_BYTES) || !(sample.seconds >= MIN_SECONDS) || sample.from === sample.to)
    return false;
  const rate = sample.bytes / sample.seconds;
  if (!Number.isFinite(rate) || rate <= 0) return false;
  const ref = records.moveBandwidth.at(sample.from, sample.to);
  // Two moves of the same pair finishing together: the second reads again.
  for (let attempt = 0; attempt < 5; attempt++) {
    const before = await ref.get(store);
    const next = before
      ? {
          bytesPerSecond:
            MOVE_BANDWIDTH_WEIGHT * rate + (1 - MOVE_BANDWIDTH_WEIGHT) * before.value.bytesPerSecond,
          moves: before.value.moves + 1,
          lastAt: new Date(sample.atMs).toISOString(),
        }
      : { bytesPerSecond: rate, moves: 1, lastAt: new Date(sample.atMs).toISOString() };
    const r = await store.txn({
      compare: [before ? ref.unchanged(before.modRevision) : ref.absent()],
      success: [ref.putOp(next)],
    });
    if (r.succeeded) return true;
  }
  return false;
}

/** Every measured link, by source member then destination. */
export async function readLinks(store: KvStore): Promise<Map<string, Record<string, LinkBandwidth>>> {
  const out = new Map<string, Record<string, LinkBandwidth>>();
  for (const item of (await records.moveBandwidth.list(store)).items) {
    const [from, to] = records.moveBandwidth.nameOf(item.key).split('/');
    if (!from || !to) continue;
    const links = out.get(from) ?? {};
    links[to] = { bytesPerSecond: item.value.bytesPerSecond, moves: item.value.moves };
    out.set(from, links);
  }
  return out;
}

/**
 * The bytes and seconds of a finished move's copy, from the mover's result (its operation's
 * metadata): a live move's disk and RAM over their phases, a cold move's archive over its send.
 * Undefined when nothing was copied (a shared pool) or the result does not say.
 */
export function copyOf(
  result: Record<string, unknown> | undefined,
): { bytes: number; seconds: number } | undefined {
  if (!result || result.sharedDisk === true || result.shared === true) {
    // A live move on a shared pool still sends its RAM.
    if (
      result?.live === true &&
      typeof result.ramTransferredBytes === 'number' &&
      typeof result.ramMs === 'number'
    ) {
      return { bytes: result.ramTransferredBytes, seconds: result.ramMs / 1000 };
    }
    return undefined;
  }
  const n = (k: string) => (typeof result[k] === 'number' ? (result[k] as number) : undefined);
  if (result.live === true) {
    const bytes = (n('diskMirroredBytes') ?? 0) + (n('ramTransferredBytes') ?? 0);
    const ms = (n('mirrorMs') ?? 0) + (n('ramMs') ?? 0);
    return bytes > 0 && ms > 0 ? { bytes, seconds: ms / 1000 } : undefined;
  }
  const bytes = n('copiedBytes');
  const ms = n('copyMs');
  return bytes !== undefined && ms !== undefined && ms > 0 ? { bytes, seconds: ms / 1000 } : undefined;
}

/**
 * The mover, with each of its finished moves measured: once a move's operation succeeds, its
 * copy's bytes and seconds are folded into the pair's average (this member → the target).
 */
export function measuringMover(
  mover: GuestMover,
  deps: {
    store: KvStore;
    operations: Pick<OperationService, 'wait'>;
    hostName: string;
    log: Logger;
    now?: () => number;
  },
): GuestMover {
  return {
    pinned: (spec) => mover.pinned(spec),
    async move(name, request) {
      const op = await mover.move(name, request);
      void deps.operations
        .wait(op.id)
        .then(async (end) => {
          if (end.status !== 'Success') return;
          const copy = copyOf(end.metadata);
          if (!copy) return;
          await recordMoveBandwidth(deps.store, {
            from: deps.hostName,
            to: request.target,
            ...copy,
            atMs: (deps.now ?? Date.now)(),
          });
        })
        .catch((e: unknown) =>
          deps.log.warn(
            { guest: name, err: asTrivisorError(e).message },
            "a move's bandwidth was not recorded",
          ),
        );
      return op;
    },
  };
}
