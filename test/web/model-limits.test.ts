import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  DEFAULT_VM_MEMORY_BYTES,
  type HostCapacity,
  PVM_DEFAULT_MEMORY_BYTES,
  validateConfig,
} from '../../src/core/config-keys.ts';
import { PVM_MIN_MEMORY_BYTES } from '../../src/drivers/pvm/pvm-context.ts';
import { MIN_VM_MEMORY_BYTES } from '../../src/drivers/vm/qemu-command.ts';
import { MODEL_LIMITS, memoryProblem } from '../../web/src/model-limits.ts';

const MiB = 2 ** 20;
const host: HostCapacity = { cpus: 2, memoryBytes: 24 * 2 ** 30 };
const ALL = ['limits.cpu', 'limits.memory', 'limits.disk', 'limits.processes'] as const;
const sample: Record<(typeof ALL)[number], string> = {
  'limits.cpu': '1',
  'limits.memory': '256MiB',
  'limits.disk': '2GiB',
  'limits.processes': '500',
};

test("the wizard's memory figures for each model are the drivers' own", () => {
  assert.equal(MODEL_LIMITS.vm.minMemoryBytes, MIN_VM_MEMORY_BYTES);
  assert.equal(MODEL_LIMITS.vm.defaultMemoryBytes, DEFAULT_VM_MEMORY_BYTES);
  assert.equal(MODEL_LIMITS.pvm.minMemoryBytes, PVM_MIN_MEMORY_BYTES);
  assert.equal(MODEL_LIMITS.pvm.defaultMemoryBytes, PVM_DEFAULT_MEMORY_BYTES);
  assert.equal(MODEL_LIMITS.ct.defaultMemoryBytes, null);
  // The daemon's least for any guest, which is the ct's.
  assert.throws(() =>
    validateConfig({ 'limits.memory': `${MODEL_LIMITS.ct.minMemoryBytes - 1}` }, host, 'ct'),
  );
  validateConfig({ 'limits.memory': `${MODEL_LIMITS.ct.minMemoryBytes / MiB}MiB` }, host, 'ct');
});

test('the wizard offers a model exactly the limit keys the daemon takes for it', () => {
  for (const model of ['ct', 'pvm', 'vm'] as const) {
    for (const key of ALL) {
      const offered = MODEL_LIMITS[model].keys.includes(key);
      const take = () => validateConfig({ [key]: sample[key] }, host, model);
      if (offered) take();
      else assert.throws(take, /only applies to/, `${key} for ${model}`);
    }
  }
});

test("a memory below the model's least is refused in the wizard's words; a size that is none, in the API's", () => {
  assert.equal(memoryProblem('vm', '32MiB'), 'A vm guest needs at least 64MiB of memory');
  assert.equal(memoryProblem('vm', '64MiB'), null);
  assert.equal(memoryProblem('pvm', '31MiB'), 'A pvm guest needs at least 32MiB of memory');
  assert.equal(memoryProblem('ct', '32MiB'), null);
  assert.equal(memoryProblem('ct', ''), null);
  assert.match(memoryProblem('ct', 'lots') ?? '', /is not a size/);
});
