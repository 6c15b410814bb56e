import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { validateConfig } from './config-keys.ts';
import { isTrivisorError } from './errors.ts';
import { canDo } from './guest-state.ts';
import { assertDnsLabel, assertImageAlias } from './names.ts';
import { formatBytes, parseBytes, parseDurationMs } from './sizes.ts';

const host = { memoryBytes: 2 * 2 ** 30, cpus: 2 };
const invalid = (fn: () => unknown) =>
  assert.throws(fn, (e: unknown) => isTrivisorError(e) && e.code === 'InvalidArgument');

describe('names', () => {
  test('DNS labels are accepted and everything else is refused', () => {
    for (const ok of ['a', 'web1', 'a-b', 'x'.repeat(63), '0']) assertDnsLabel(ok);
    for (const bad of ['', '../x', 'a/b', 'x'.repeat(64), 'Upper', '-a', 'a-', 'a_b', 'a.b', ' a']) {
      invalid(() => assertDnsLabel(bad));
    }
    invalid(() => assertDnsLabel(42));
  });
  test('image aliases may hold up to two slashes but no dot-dot', () => {
    for (const ok of ['busybox', 'debian/bookworm', 'a/b/c', 'my.os_1']) assertImageAlias(ok);
    for (const bad of ['', '/x', 'a/../b', 'a/b/c/d', 'A', 'a b', '..']) invalid(() => assertImageAlias(bad));
  });
});

describe('sizes', () => {
  test('binary and decimal units parse into bytes', () => {
    assert.equal(parseBytes('256MiB'), 256 * 2 ** 20);
    assert.equal(parseBytes('1GiB'), 2 ** 30);
    assert.equal(parseBytes('1.5GB'), 1.5e9);
    assert.equal(parseBytes('4096'), 4096);
  });
  test('malformed, zero and negative sizes are refused', () => {
    for (const bad of ['lots', '-1', '0', '1XB', '', 'MiB', '1e9']) invalid(() => parseBytes(bad));
  });
  test('formatBytes rounds for people and durations parse', () => {
    assert.equal(formatBytes(256 * 2 ** 20), '256MiB');
    assert.equal(formatBytes(1536), '1.5KiB');
    assert.equal(parseDurationMs('30s'), 30_000);
    assert.equal(parseDurationMs('500ms'), 500);
    assert.equal(parseDurationMs('2'), 2000);
    invalid(() => parseDurationMs('soon'));
  });
});

describe('config keys', () => {
  test('known keys with good values pass', () => {
    validateConfig(
      {
        'limits.memory': '64MiB',
        'limits.cpu': '0.5',
        'limits.processes': '100',
        'boot.autostart': 'true',
        'boot.restart_policy': 'on-failure',
        'security.privileged': 'false',
        'environment.FOO': 'bar',
        'user.note': 'anything',
      },
      host,
    );
  });
  test('unknown keys and bad values are refused with the key named', () => {
    assert.throws(
      () => validateConfig({ 'limits.bogus': '1' }, host),
      /Unknown configuration key "limits.bogus"/,
    );
    for (const [k, v] of [
      ['limits.memory', 'lots'],
      ['limits.memory', '-5MiB'],
      ['limits.memory', '1MiB'],
      ['limits.memory', '3GiB'],
      ['limits.cpu', '3'],
      ['limits.cpu', '-1'],
      ['limits.cpu', 'two'],
      ['limits.processes', '0'],
      ['limits.processes', '1.5'],
      ['boot.autostart', 'yes'],
      ['boot.restart_policy', 'sometimes'],
      ['environment.', 'x'],
      ['vm.machine', 'isapc'],
      ['vm.machine', 'microvm'],
    ] as const) {
      assert.throws(
        () => validateConfig({ [k]: v }, host),
        (e: unknown) => isTrivisorError(e) && e.code === 'InvalidArgument',
        `${k}=${v}`,
      );
    }
  });
  test('a model-specific key is refused on the other models', () => {
    validateConfig({ 'vm.machine': 'pc' }, host, 'vm');
    validateConfig({ 'limits.processes': '100' }, host, 'pvm');
    assert.throws(
      () => validateConfig({ 'limits.processes': '100' }, host, 'vm'),
      /limits.processes only applies to ct and pvm guests, not vm/,
    );
    for (const model of ['ct', 'pvm'] as const) {
      assert.throws(
        () => validateConfig({ 'vm.machine': 'q35' }, host, model),
        (e: unknown) =>
          isTrivisorError(e) &&
          e.code === 'InvalidArgument' &&
          /only applies to vm guests, not/.test(e.message),
      );
    }
  });
});

describe('guest state machine', () => {
  test('actions are allowed only in the states that make sense', () => {
    assert.ok(canDo('start', 'Stopped'));
    assert.ok(!canDo('start', 'Running'));
    assert.ok(canDo('freeze', 'Running'));
    assert.ok(!canDo('freeze', 'Frozen'));
    assert.ok(canDo('unfreeze', 'Frozen'));
    assert.ok(!canDo('delete', 'Running'));
    assert.ok(canDo('delete', 'Error'));
    assert.ok(!canDo('exec', 'Stopped'));
  });
});
