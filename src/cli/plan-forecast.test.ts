import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createFakeServices } from '../../test/fakes/fake-services.ts';
import { buildServer } from '../server/build-server.ts';
import { createConsolidationPlanner } from '../services/consolidation-planner.ts';

const BIN = new URL('../../bin/trivisor', import.meta.url).pathname;

/**
 * Four workloads over 14 days, hourly, each 1.5 cores busy on day 0 growing 10% a week (with a
 * small hourly wobble), 1 GiB: measured they fit one host of 8 cores; their trend carried two
 * weeks ahead does not.
 */
function growingInventory(): string {
  const lines = ['id,cpu,memory,timestamp,cpu_used,memory_used'];
  const start = Date.parse('2026-11-01T00:00:00Z') / 1000;
  for (const id of ['app1', 'app2', 'app3', 'app4']) {
    for (let h = 0; h < 14 * 24; h++) {
      const day = h / 24;
      const used = 1.5 * (1 + (0.1 * day) / 7) * (1 + 0.02 * Math.sin(h + id.length));
      lines.push(`${id},4,4GiB,${start + h * 3600},${used.toFixed(4)},1GiB`);
    }
  }
  return `${lines.join('\n')}\n`;
}

describe('plan consolidate with a growth forecast: the CLI and the API plan alike', () => {
  let dir: string;
  let file: string;
  let app: FastifyInstance;

  const cli = (args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> =>
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
  const viaCli = async (extra: string[]) => {
    const r = await cli(['plan', 'consolidate', file, '--host-size', 'cpu=8', '--format', 'json', ...extra]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout);
  };
  const viaApi = async (query: string) => {
    const res = await app.inject({
      method: 'POST',
      url: `/1.0/plans/consolidate?hostSize=cpu%3D8${query}`,
      payload: await readFile(file),
      headers: { 'content-type': 'text/csv' },
    });
    assert.equal(res.statusCode, 200, res.body);
    const { svg, ...plan } = res.json().metadata;
    assert.match(svg, /^<svg /);
    return plan;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'trivisor-plan-forecast-'));
    file = join(dir, 'growing.csv');
    await writeFile(file, growingInventory());
    const services = { ...createFakeServices(), consolidation: createConsolidationPlanner() };
    app = await buildServer(services, { auth: { type: 'none' }, uploadDir: dir });
    await app.ready();
  });
  after(async () => {
    await app.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('--forecast-days and ?forecastDays= give the same plan, scaled by the trend; without it both plan as measured', async () => {
    const cliPlan = await viaCli(['--forecast-days', '14']);
    const apiPlan = await viaApi('&forecastDays=14');
    assert.deepEqual(apiPlan, cliPlan);
    assert.equal(cliPlan.forecast.aheadDays, 14);
    assert.equal(cliPlan.forecast.days, 14);
    assert.ok(cliPlan.forecast.cpuWeeklyGrowth > 0.08, JSON.stringify(cliPlan.forecast));
    assert.ok(cliPlan.forecast.factor > 1.1, JSON.stringify(cliPlan.forecast));
    assert.match(cliPlan.predicted.basis, /scaled by its trend over the 14 days after it/);
    assert.equal(cliPlan.hosts.length, 2, 'the grown load needs a second host');
    assert.equal(cliPlan.lowerBound, 2);
    assert.equal(cliPlan.forecast.measuredLowerBound, 1, 'the lower bound as measured is told beside it');

    const measuredCli = await viaCli([]);
    assert.deepEqual(await viaApi(''), measuredCli);
    assert.equal(measuredCli.forecast, undefined);
    assert.deepEqual(
      measuredCli.hosts.map((h: { workloads: string[] }) => h.workloads),
      [['app1', 'app2', 'app3', 'app4']],
      'as measured, one host holds all four',
    );
  });

  test('a forecast from less than a week of samples, or a bad number of days, is one line in both', async () => {
    const short = join(dir, 'short.csv');
    const end = Date.parse('2026-11-04T00:00:00Z') / 1000;
    const lines = growingInventory().trim().split('\n');
    await writeFile(
      short,
      `${[lines[0], ...lines.slice(1).filter((l) => Number(l.split(',')[3]) < end)].join('\n')}\n`,
    );
    const r = await cli(['plan', 'consolidate', short, '--host-size', 'cpu=8', '--forecast-days', '7']);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /^Error: A trend needs at least 7 whole days of samples; the inventory has 3\n$/);
    const res = await app.inject({
      method: 'POST',
      url: '/1.0/plans/consolidate?hostSize=cpu%3D8&forecastDays=7',
      payload: await readFile(short),
      headers: { 'content-type': 'text/csv' },
    });
    assert.equal(res.statusCode, 400, res.body);
    assert.match(res.json().error, /^A trend needs at least 7 whole days of samples; the inventory has 3$/);
    const bad = await cli(['plan', 'consolidate', file, '--host-size', 'cpu=8', '--forecast-days', '1.5']);
    assert.equal(bad.code, 1, bad.stdout);
    assert.match(bad.stderr, /^Error: The forecast days \(1\.5\) must be a whole number from 1 to 3660\n$/);
    const badApi = await app.inject({
      method: 'POST',
      url: '/1.0/plans/consolidate?hostSize=cpu%3D8&forecastDays=0',
      payload: await readFile(file),
      headers: { 'content-type': 'text/csv' },
    });
    assert.equal(badApi.statusCode, 400, badApi.body);
  });
});
