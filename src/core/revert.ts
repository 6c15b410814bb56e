/**
 * Collects undo steps for multi-step work (Incus's `revert`): on failure
 * `fail()` runs them newest first; after `success()` they are dropped.
 */
export interface Reverter {
  add(undo: () => unknown | Promise<unknown>): void;
  success(): void;
  fail(): Promise<void>;
}

export function reverter(): Reverter {
  let steps: Array<() => unknown | Promise<unknown>> = [];
  return {
    add(undo) {
      steps.push(undo);
    },
    success() {
      steps = [];
    },
    async fail() {
      const todo = steps.reverse();
      steps = [];
      for (const undo of todo) {
        try {
          await undo();
        } catch {
          // Best effort: one failed undo must not stop the others.
        }
      }
    },
  };
}

/** Runs `work` with a reverter that is rolled back if `work` throws. */
export async function withRevert<T>(work: (r: Reverter) => Promise<T>): Promise<T> {
  const r = reverter();
  try {
    const result = await work(r);
    r.success();
    return result;
  } catch (e) {
    await r.fail();
    throw e;
  }
}
