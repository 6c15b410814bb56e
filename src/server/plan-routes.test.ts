import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import type { FastifyInstance } from 'fastify';
import { createFakeServices } from '../../test/fakes/fake-services.ts';
import type { Guest } from '../core/types.ts';
import { createConsolidationPlanner } from '../services/consolidation-planner.ts';
import { openMetricsHistory } from '../services/metrics-history.ts';
import { buildServer } from './build-server.ts';
import { PLAN_UPLOAD_LIMIT_BYTES } from './plan-routes.ts';

const DAY_NIGHT = readFileSync(
  path.join(import.meta.dirname, '../../test/fixtures/planner/day-night.csv'),
  'utf8',
);
const URL_ = '/1.0/plans/consolidate';
const FIXTURES = path.join(import.meta.dirname, '../../test/fixtures/planner');
const MODELS = path.join(FIXTURES, 'models.json');

describe('POST /1.0/plans/consolidate', () => {
  let app: FastifyInstance;
  let uploadDir: string;
  const fake = createFakeServices();
  const history = openMetricsHistory(':memory:');

  before(async () => {
    uploadDir = await mkdtemp(path.join(tmpdir(), 'plan-routes-test-'));
    fake.consolidation = createConsolidationPlanner({ measurementsFile: MODELS });
    fake.metricsHistory = history;
    app = await buildServer(fake, { auth: { type: 'none' }, uploadDir });
    await app.ready();
  });
  after(async () => {
    await app.close();
    history.close();
    await rm(uploadDir, { recursive: true, force: true });
  });

  const post = (query: string, body?: string | Buffer, type = 'text/csv') =>
    app.inject({
      method: 'POST',
      url: `${URL_}?${query}`,
      ...(body === undefined ? {} : { payload: body, headers: { 'content-type': type } }),
    });

  test('plans an uploaded CSV: the CLI’s JSON object with the hosts, the lower bound and the picture', async () => {
    const res = await post('hostSize=cpu%3D4%2Cmemory%3D16GiB', DAY_NIGHT);
    assert.equal(res.statusCode, 200, res.body);
    const plan = res.json().metadata;
    assert.equal(plan.hosts.length, 2);
    assert.equal(plan.lowerBound, 2);
    // Day and night workloads share a host: the planner saw the correlation.
    for (const h of plan.hosts)
      assert.equal(h.workloads.filter((w: string) => w.startsWith('web')).length, 1);
    assert.deepEqual(plan.hostSize, { cpu: 4, memoryBytes: 16 * 1024 ** 3 });
    assert.equal(plan.inventory.workloads, 4);
    assert.equal(plan.replay.hostIntervalsOver100, 0);
    assert.match(plan.svg, /^<svg [^>]*>\n<text[^>]*>2 hosts of cpu=4,memory=16GiB: load over time<\/text>/);
    assert.equal((plan.svg.match(/<polyline /g) ?? []).length, 2);
    assert.deepEqual(readdirSync(uploadDir), [], 'nothing of the upload is kept');
  });

  test("a gzip'd upload is told by its bytes and plans the same", async () => {
    const res = await post('hostSize=cpu%3D4', gzipSync(DAY_NIGHT), 'application/gzip');
    assert.equal(res.statusCode, 200, res.body);
    assert.equal(res.json().metadata.hosts.length, 2);
  });

  test('a bad inventory is one line naming the upload and its line, a 400, and nothing is kept', async () => {
    const bad = DAY_NIGHT.replace(
      'web1,4,8GiB,2026-12-01T00:05:00Z,3,3GiB',
      'web1,4,8GiB,2026-12-01T00:05:00Z,-3,3GiB',
    );
    const res = await post('hostSize=cpu%3D4', bad);
    assert.equal(res.statusCode, 400, res.body);
    const body = res.json();
    assert.equal(body.code, 'InvalidArgument');
    assert.equal(body.error, 'inventory.csv:4: cpu_used of web1 -3 is negative');
    assert.deepEqual(readdirSync(uploadDir), []);
    const header = await post('hostSize=cpu%3D4', 'name,cpu\nx,1\n');
    assert.equal(header.statusCode, 400);
    assert.match(
      header.json().error,
      /^inventory\.csv:1: the header "name,cpu" is none of the inventory layouts/,
    );
  });

  test('a workload larger than the host is a 400 FailedPrecondition naming it', async () => {
    const res = await post('hostSize=cpu%3D2', DAY_NIGHT);
    assert.equal(res.statusCode, 400, res.body);
    assert.equal(res.json().code, 'FailedPrecondition');
    assert.match(res.json().error, /^inventory\.csv:\d+: \w+ needs cpu 3 cores at its 99th percentile/);
  });

  test('bad requests are one line and a 400: host size, percentile, no inventory, both inventories', async () => {
    const cases: Array<[string, string | undefined, RegExp]> = [
      ['hostSize=cpu%3Dmany', DAY_NIGHT, /The host's cpu "many" must be a positive number/],
      ['hostSize=cpu%3D4&percentile=101', DAY_NIGHT, /percentile/],
      ['hostSize=cpu%3D4', undefined, /Send the inventory as the body/],
      ['hostSize=cpu%3D4&fromHistory=day', DAY_NIGHT, /not both/],
      ['percentile=99', DAY_NIGHT, /hostSize/],
    ];
    for (const [query, body, re] of cases) {
      const res = await post(query, body);
      assert.equal(res.statusCode, 400, `${query}: ${res.body}`);
      assert.match(res.json().error, re, query);
      assert.doesNotMatch(res.json().error, /\n/);
    }
    const empty = await post('hostSize=cpu%3D4', '');
    assert.equal(empty.statusCode, 400, empty.body);
  });

  test('an upload over the limit is a 413 and leaves nothing', async () => {
    const res = await post('hostSize=cpu%3D4', Buffer.alloc(PLAN_UPLOAD_LIMIT_BYTES + 1, 'a'));
    assert.equal(res.statusCode, 413, res.body);
    assert.match(res.json().error, /larger than 64 MiB/);
    assert.deepEqual(readdirSync(uploadDir), []);
    // Sent without a Content-Length: counted as it arrives, refused past the limit.
    const chunk = Buffer.alloc(1024 ** 2, 'a');
    const streamed = await app.inject({
      method: 'POST',
      url: `${URL_}?hostSize=cpu%3D4`,
      headers: { 'content-type': 'text/csv' },
      payload: Readable.from(
        (function* () {
          for (let i = 0; i <= 64; i++) yield chunk;
        })(),
      ),
    });
    assert.equal(streamed.statusCode, 413, streamed.body);
    assert.deepEqual(readdirSync(uploadDir), []);
  });

  test('?fromHistory plans the project’s guests from their metric history', async () => {
    fake.guestMap.clear();
    const now = Date.now();
    for (const name of ['day1', 'night1']) fake.guestMap.set(name, { name, project: 'default' } as Guest);
    for (let t = now - 23 * 3600_000; t <= now; t += 300_000) {
      const dayTime = new Date(t).getUTCHours() < 12;
      history.record(
        [
          { series: 'guest/day1', values: { cpu: dayTime ? 1.5 : 0.2, memoryBytes: 1e9 } },
          { series: 'guest/night1', values: { cpu: dayTime ? 0.2 : 1.5, memoryBytes: 1e9 } },
        ],
        t,
      );
    }
    const res = await post('hostSize=cpu%3D2&fromHistory=day');
    assert.equal(res.statusCode, 200, res.body);
    const plan = res.json().metadata;
    assert.deepEqual(
      plan.hosts.map((h: { workloads: string[] }) => h.workloads),
      [['day1', 'night1']],
    );
  });

  test('?advise=true adds a model per workload with its reason, the CLI --advise’s JSON; the plan is the same', async () => {
    const plain = await post('hostSize=cpu%3D4%2Cmemory%3D16GiB', DAY_NIGHT);
    const res = await post('hostSize=cpu%3D4%2Cmemory%3D16GiB&advise=true', DAY_NIGHT);
    assert.equal(res.statusCode, 200, res.body);
    const { models, ...plan } = res.json().metadata;
    assert.equal(plain.json().metadata.models, undefined, 'not asked for, not given');
    assert.deepEqual(plan, plain.json().metadata);
    assert.equal(models.measurements.measuredAt, '2026-12-05T11:26:47.919Z');
    assert.deepEqual(models.advice.map((a: { id: string }) => a.id).sort(), [
      'batch1',
      'batch2',
      'web1',
      'web2',
    ]);
    for (const a of models.advice) assert.match(a.reason, new RegExp(`^${a.model}: `));
    assert.equal(models.counts.ct + models.counts.pvm + models.counts.vm, 4);
    // The same advice as the CLI's plan consolidate --advise on the same file and table.
    const file = path.join(uploadDir, 'day-night.csv');
    writeFileSync(file, DAY_NIGHT);
    try {
      const cli = spawnSync(
        process.execPath,
        [
          path.join(import.meta.dirname, '../cli/main.ts'),
          ...['plan', 'consolidate', file, '--host-size', 'cpu=4,memory=16GiB', '--format', 'json'],
          ...['--advise', '--measurements', MODELS],
        ],
        { encoding: 'utf8', env: { ...process.env, TRIVISOR_DIR: path.join(uploadDir, 'no-daemon') } },
      );
      assert.equal(cli.status, 0, cli.stderr);
      assert.deepEqual(JSON.parse(cli.stdout).models, models);
    } finally {
      rmSync(file, { force: true });
      rmSync(path.join(uploadDir, 'no-daemon'), { recursive: true, force: true });
    }
    // A PlanetLab inventory (MIPS) has no profile: the plan, and why there is no model.
    const pl = await post('hostSize=cpu%3D5320&advise=true', 'vm,t0,t1\n1,10,20\n2,30,40\n');
    assert.equal(pl.statusCode, 200, pl.body);
    assert.equal(pl.json().metadata.hosts.length, 1);
    assert.deepEqual(pl.json().metadata.models.advice, []);
    assert.match(pl.json().metadata.models.unavailable, /MIPS/);
    const bad = await post('hostSize=cpu%3D4&advise=maybe', DAY_NIGHT);
    assert.equal(bad.statusCode, 400, bad.body);
    assert.match(bad.json().error, /advise/);
  });

  test("POST /1.0/plans/advise: each profile's model and reason from the three-model table; a bad profile is one line", async () => {
    const res = await app.inject({
      method: 'POST',
      url: '/1.0/plans/advise',
      headers: { 'content-type': 'text/csv' },
      payload: readFileSync(path.join(FIXTURES, 'advisor-profile.csv')),
    });
    assert.equal(res.statusCode, 200, res.body);
    const answer = res.json().metadata;
    assert.equal(answer.measuredAt, '2026-12-05T11:26:47.919Z');
    assert.deepEqual(
      answer.advice.map((a: { id: string; model: string }) => [a.id, a.model]),
      [
        ['web', 'ct'],
        ['dns', 'pvm'],
        ['win2019', 'vm'],
      ],
    );
    assert.equal(answer.advice[2].reason, 'vm: needs a non-Linux kernel');
    const bad = await app.inject({
      method: 'POST',
      url: '/1.0/plans/advise',
      headers: { 'content-type': 'text/csv' },
      payload: 'id,os\nweb,beos\n',
    });
    assert.equal(bad.statusCode, 400, bad.body);
    assert.match(bad.json().error, /^profiles:2: /);
    assert.doesNotMatch(bad.json().error, /trivisor-advise-/);
    const none = await app.inject({ method: 'POST', url: '/1.0/plans/advise' });
    assert.equal(none.statusCode, 400, none.body);
    assert.deepEqual(readdirSync(uploadDir), []);
  });

  test('one plan at a time: a second one meanwhile is a 503, the first answers', async () => {
    const [a, b] = await Promise.all([
      post('hostSize=cpu%3D4', DAY_NIGHT),
      new Promise((resolve) => setTimeout(resolve, 50)).then(() => post('hostSize=cpu%3D4', DAY_NIGHT)),
    ]);
    assert.deepEqual([a.statusCode, b.statusCode].sort(), [200, 503], `${a.body} ${b.body}`);
    const refused = a.statusCode === 503 ? a : b;
    assert.match(refused.json().error, /computing another plan already/);
  });
});
