import type { Model } from '../../src/api/types.ts';
import { parseBytes } from '../../src/core/sizes.ts';

/*
 * The limits each model takes, for the create wizard (issue 15: each model with its own limits).
 * The API publishes no minimums or defaults, so these repeat the drivers' own figures (vm:
 * qemu-command.ts, pvm: pvm-context.ts, config-keys.ts); test/web/model-limits.test.ts fails when
 * one of them changes without this table, and checks each offered key against the daemon's
 * validateConfig.
 */

export type LimitKey = 'limits.cpu' | 'limits.memory' | 'limits.disk' | 'limits.processes';

const MiB = 2 ** 20;

/** What the wizard offers a model. */
export interface ModelLimits {
  /** The limit keys that mean something to the model, in the wizard's order. */
  keys: readonly LimitKey[];
  /** Below this a guest is refused (ct) or cannot boot (pvm, vm). */
  minMemoryBytes: number;
  /** What a guest gets without limits.memory; null: no limit (a ct guest shares the host's). */
  defaultMemoryBytes: number | null;
  /** What limits.disk does for the model. */
  diskHint: string;
}

export const MODEL_LIMITS: Record<Model, ModelLimits> = {
  ct: {
    keys: ['limits.cpu', 'limits.memory', 'limits.disk', 'limits.processes'],
    minMemoryBytes: 8 * MiB,
    defaultMemoryBytes: null,
    diskHint: 'e.g. 2GiB: only on a btrfs storage pool',
  },
  pvm: {
    keys: ['limits.cpu', 'limits.memory', 'limits.disk', 'limits.processes'],
    minMemoryBytes: 32 * MiB,
    defaultMemoryBytes: 128 * MiB,
    diskHint: "e.g. 2GiB: the root disk's size, at least the image's",
  },
  // A vm's processes are its own kernel's: the API refuses limits.processes for it.
  vm: {
    keys: ['limits.cpu', 'limits.memory', 'limits.disk'],
    minMemoryBytes: 64 * MiB,
    defaultMemoryBytes: 256 * MiB,
    diskHint: "e.g. 2GiB: the root disk's size, at least the image's",
  },
};

const mib = (bytes: number) => `${bytes / MiB}MiB`;

/** The memory a `model` guest gets without limits.memory, as text; null when it has no limit. */
export function defaultMemory(model: Model): string | null {
  const bytes = MODEL_LIMITS[model].defaultMemoryBytes;
  return bytes === null ? null : mib(bytes);
}

/** The memory field's hint for `model`: its default and its least. */
export function memoryHint(model: Model): string {
  const least = mib(MODEL_LIMITS[model].minMemoryBytes);
  return `e.g. 512MiB or 1GiB; default ${defaultMemory(model) ?? 'no limit'}, at least ${least}`;
}

/** Why `text` cannot be `model`'s limits.memory, or null when it can ('' is the default). */
export function memoryProblem(model: Model, text: string): string | null {
  if (!text.trim()) return null;
  let bytes: number;
  try {
    bytes = parseBytes(text, 'memory');
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
  const least = MODEL_LIMITS[model].minMemoryBytes;
  return bytes < least ? `A ${model} guest needs at least ${mib(least)} of memory` : null;
}
