import { randomUUID } from 'node:crypto';
import { asTrivisorError, failedPrecondition, isErrorCode, notFound, TrivisorError } from '../core/errors.ts';
import { DEFAULT_PROJECT } from '../core/projects.ts';
import type { Operation } from '../core/types.ts';
import type { EventBus, OperationService, OperationSpec } from './types.ts';

interface Entry {
  op: Operation;
  abort: AbortController;
  done: Promise<void>;
}

/** Finished operations are kept this long for `operation list` and late waiters (Incus keeps 5 s; we keep more). */
const KEEP_FINISHED_MS = 5 * 60_000;
const KEEP_FINISHED_MAX = 1000;

/** In-memory operations of this daemon, as in Incus: they end with the daemon. */
export function createOperationService(
  events: EventBus,
  options: { location?: string } = {},
): OperationService {
  const ops = new Map<string, Entry>();

  const snapshot = (op: Operation): Operation => structuredClone(op);
  const emit = (op: Operation) =>
    events.publish({ type: 'operation', project: op.project, metadata: { operation: snapshot(op) } });
  const touch = (op: Operation) => {
    op.updatedAt = new Date().toISOString();
    emit(op);
  };

  const prune = () => {
    const finished = [...ops.values()].filter((e) => isFinal(e.op));
    const now = Date.now();
    for (const [i, e] of finished.entries()) {
      const old = now - Date.parse(e.op.updatedAt) > KEEP_FINISHED_MS;
      if (old || finished.length - i > KEEP_FINISHED_MAX) ops.delete(e.op.id);
    }
  };

  const entryOf = (id: string): Entry => {
    const e = ops.get(id);
    if (!e) throw notFound(`Operation ${id} not found`);
    return e;
  };

  return {
    has: (id) => ops.has(id),
    start(spec: OperationSpec) {
      prune();
      const now = new Date().toISOString();
      const op: Operation = {
        id: randomUUID(),
        project: spec.project ?? DEFAULT_PROJECT,
        description: spec.description,
        status: 'Running',
        createdAt: now,
        updatedAt: now,
        progress: null,
        progressText: null,
        resources: spec.resources ?? {},
        metadata: {},
        mayCancel: spec.mayCancel ?? false,
        error: null,
        ...(options.location !== undefined && { location: options.location }),
      };
      const abort = new AbortController();
      const done = (async () => {
        try {
          const result = await spec.run({
            signal: abort.signal,
            progress(percent, text) {
              op.progress = percent;
              op.progressText = text ?? null;
              touch(op);
            },
            setMetadata(metadata) {
              op.metadata = { ...op.metadata, ...metadata };
              touch(op);
            },
          });
          op.metadata = { ...op.metadata, ...(result ?? {}) };
          op.status = 'Success';
          if (op.progress !== null) op.progress = 100;
        } catch (e) {
          const err = asTrivisorError(e);
          op.status = abort.signal.aborted ? 'Cancelled' : 'Failure';
          op.error = abort.signal.aborted ? 'The operation was cancelled' : err.message;
          op.metadata = { ...op.metadata, errorCode: abort.signal.aborted ? 'Cancelled' : err.code };
        }
        op.mayCancel = false;
        touch(op);
      })();
      ops.set(op.id, { op, abort, done });
      emit(op);
      return snapshot(op);
    },
    list() {
      prune();
      return [...ops.values()].map((e) => snapshot(e.op));
    },
    get(id) {
      return snapshot(entryOf(id).op);
    },
    async wait(id, timeoutMs) {
      const e = entryOf(id);
      if (timeoutMs === undefined || timeoutMs < 0) {
        await e.done;
      } else {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([e.done, new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
        clearTimeout(timer);
      }
      return snapshot(e.op);
    },
    cancel(id) {
      const e = entryOf(id);
      if (isFinal(e.op)) throw failedPrecondition(`Operation ${id} has already finished (${e.op.status})`);
      if (!e.op.mayCancel)
        throw failedPrecondition(`Operation ${id} (${e.op.description}) cannot be cancelled`);
      e.abort.abort();
      return snapshot(e.op);
    },
  };
}

export function isFinal(op: Operation): boolean {
  return op.status === 'Success' || op.status === 'Failure' || op.status === 'Cancelled';
}

/**
 * Waits for an operation to end and answers it when it succeeded; otherwise throws its error
 * with the code it ended with (a caller that started another service's operation fails as that
 * operation did, not with Internal).
 */
export async function succeeded(
  operations: Pick<OperationService, 'wait'>,
  op: Operation,
): Promise<Operation> {
  const end = await operations.wait(op.id);
  if (end.status === 'Success') return end;
  const code = typeof end.metadata.errorCode === 'string' ? end.metadata.errorCode : 'Internal';
  throw new TrivisorError(
    isErrorCode(code) ? code : 'Internal',
    end.error ?? `${end.description} ended ${end.status}`,
  );
}
