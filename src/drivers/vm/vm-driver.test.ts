import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fakeRunner } from '../../../test/fakes/fake-runner.ts';
import { isTrivisorError } from '../../core/errors.ts';
import type { GuestSpec } from '../../core/types.ts';
import { silentLogger } from '../../host/logger.ts';
import { createVmDriver } from './vm-driver.ts';

const spec = (config: Record<string, string>, name = 'v1'): GuestSpec => ({
  name,
  project: 'default',
  model: 'vm',
  image: 'fp',
  imageAlias: 'busybox',
  config,
  desired: 'Running',
  generation: 1,
  restartRequest: 0,
  stopTimeoutMs: 10_000,
  stopForce: false,
  deleting: false,
  location: 'h',
  createdAt: new Date(0).toISOString(),
});

const code = (work: () => void): string => {
  try {
    work();
  } catch (e) {
    assert.ok(isTrivisorError(e), String(e));
    return `${e.code}: ${e.message}`;
  }
  return 'ok';
};

describe('vm driver validation', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp('/tmp/trivisor-vmval-');
    await writeFile(join(dir, 'vmlinuz-6.1.0-56-cloud-amd64'), '');
  });
  after(() => rm(dir, { recursive: true, force: true }));
  const driver = (options: { bootDir?: string; kernelPath?: string } = {}) =>
    createVmDriver(
      { runner: fakeRunner(), log: silentLogger(), stateDir: join(dir, 'state'), idmapBase: 1_000_000 },
      { accelerator: 'tcg', bootDir: dir, ...options },
    );

  test('a guest that fits the host and has a kernel passes', () => {
    assert.equal(
      code(() => driver().validate(spec({ 'limits.memory': '128MiB', 'limits.cpu': '1' }))),
      'ok',
    );
  });

  test('memory too small to boot the cloud kernel is InvalidArgument', () => {
    assert.match(
      code(() => driver().validate(spec({ 'limits.memory': '32MiB' }))),
      /^InvalidArgument: .*at least 64MiB/,
    );
  });

  test('more CPUs than the host has is InvalidArgument', () => {
    const cpus = String(availableParallelism() + 1);
    assert.match(
      code(() => driver().validate(spec({ 'limits.cpu': cpus }))),
      /^InvalidArgument: limits.cpu=\d+ is more/,
    );
  });

  test('a missing kernel is FailedPrecondition naming the package or the path', () => {
    assert.match(
      code(() => driver({ bootDir: join(dir, 'nothing') }).validate(spec({}))),
      /^FailedPrecondition: .*linux-image-cloud-amd64/,
    );
    assert.match(
      code(() => driver({ kernelPath: join(dir, 'vmlinuz-gone') }).validate(spec({}))),
      /^FailedPrecondition: .*vmlinuz-gone does not exist/,
    );
  });

  test('a name that is not a DNS label is InvalidArgument', () => {
    assert.match(
      code(() => driver().validate(spec({}, 'Bad_Name'))),
      /^InvalidArgument/,
    );
  });
});
