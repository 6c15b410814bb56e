import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createFakeServices } from '../../test/fakes/fake-services.ts';
import { buildServer } from '../server/build-server.ts';
import { listenUnix } from '../server/listen.ts';
import { type MetricsHistory, openMetricsHistory } from '../services/metrics-history.ts';

const BIN = new URL('../../bin/trivisor', import.meta.url).pathname;
const GIB = 1024 ** 3;

describe('trivisor plan consolidate --from-history against a fake daemon with a metric history', () => {
  let dir: string;
  let app: FastifyInstance;
  let history: MetricsHistory;

  const trivisor = (args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> =>
    new Promise((resolve, reject) => {
      const child = spawn(BIN, args, {
        env: { ...process.env, TRIVISOR_DIR: dir, TRIVISOR_REMOTE: '', TRIVISOR_TOKEN: '' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => {
        stdout += c;
      });
      child.stderr.on('data', (c: Buffer) => {
        stderr += c;
      });
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'trivisor-plan-history-'));
    history = openMetricsHistory(':memory:');
    // The fake's one guest, web1, sampled over the last two hours: 1 and 3 busy cores in turn, 1 GiB.
    const now = Date.now();
    for (let i = 0; i < 24; i++) {
      history.record(
        [{ series: 'guest/web1', values: { cpu: i % 2 === 0 ? 1 : 3, memoryBytes: GIB } }],
        now - i * 300_000,
      );
    }
    app = await buildServer({ ...createFakeServices(), metricsHistory: history }, { auth: { type: 'none' } });
    await listenUnix(app, join(dir, 'trivisor.sock'));
  });
  after(async () => {
    await app.close();
    history.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('the guests are planned from their history, read through the API', async () => {
    const run = await trivisor([
      'plan',
      'consolidate',
      '--from-history',
      'day',
      '--host-size',
      'cpu=4,memory=2GiB',
      '--format',
      'json',
    ]);
    assert.equal(run.code, 0, run.stderr);
    const out = JSON.parse(run.stdout);
    assert.deepEqual(
      out.hosts.map((h: { name: string; workloads: string[] }) => [h.name, h.workloads]),
      [['host1', ['web1']]],
    );
    assert.equal(out.lowerBound, 1);
    assert.equal(out.replay.hostIntervalsOver100, 0);
  });

  test('a host too small for a guest, and a file given with --from-history, are one line each', async () => {
    const small = await trivisor([
      'plan',
      'consolidate',
      '--from-history',
      'day',
      '--host-size',
      'cpu=2,memory=2GiB',
    ]);
    assert.equal(small.code, 1);
    assert.match(small.stderr, /^Error: guest\/web1:1: web1 needs cpu 3 cores at its 99th percentile.*\n$/);
    const both = await trivisor([
      'plan',
      'consolidate',
      'x.csv',
      '--from-history',
      'day',
      '--host-size',
      'cpu=2',
    ]);
    assert.equal(both.code, 1);
    assert.match(
      both.stderr,
      /^Error: Give either an inventory file or --from-history RANGE, not both or neither\n$/,
    );
  });
});
