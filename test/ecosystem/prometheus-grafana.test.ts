import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { promtool } from './promtool.ts';

/*
 * docs/prometheus/rules.yml and docs/grafana/trivisor.json as Prometheus takes them (decision
 * 0030): promtool checks the rules, runs their unit tests below on made-up series, and parses
 * every query of the dashboard; every metric they name is one the daemon exports.
 */

const root = path.resolve(import.meta.dirname, '../..');
const rulesFile = path.join(root, 'docs/prometheus/rules.yml');
const dashboardFile = path.join(root, 'docs/grafana/trivisor.json');
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
const tempDir = async () => {
  const d = await mkdtemp(path.join(tmpdir(), 'trivisor-promtool-'));
  dirs.push(d);
  return d;
};

/** Metric names the daemon exports (src/services/host-service.ts), plus Prometheus's own `up`. */
async function exportedMetrics(): Promise<Set<string>> {
  const source = await readFile(path.join(root, 'src/services/host-service.ts'), 'utf8');
  return new Set([...source.matchAll(/'(trivisor_[a-z0-9_]+)'/g)].map((m) => m[1]!));
}

const named = (expr: string) => [...expr.matchAll(/\b(trivisor_[a-z0-9_]+)/g)].map((m) => m[1]!);

describe('Prometheus alerting rules', () => {
  test('promtool check rules accepts docs/prometheus/rules.yml', async () => {
    const r = await promtool(['check', 'rules', rulesFile]);
    assert.equal(r.code, 0, r.output);
    assert.match(r.output, /SUCCESS: 6 rules found/);
  });

  test('the rules name only metrics the daemon exports', async () => {
    const exported = await exportedMetrics();
    for (const name of named(await readFile(rulesFile, 'utf8')))
      assert.ok(exported.has(name), `${name} is not exported`);
  });

  test('a guest down, a member down, a nearly full pool and a memory squeeze alert; a guest stopped on purpose does not', async () => {
    const dir = await tempDir();
    const g = (name: string) => `member="m1",project="default",name="${name}",model="ct"`;
    const tests = {
      rule_files: [rulesFile],
      evaluation_interval: '1m',
      tests: [
        {
          interval: '1m',
          input_series: [
            // down1 should run and has not for 3 minutes; off1 was stopped on purpose; ok1 runs.
            { series: `trivisor_guest_desired_running{${g('down1')}}`, values: '1x5' },
            { series: `trivisor_guest_up{${g('down1')}}`, values: '1 0x4' },
            { series: `trivisor_guest_desired_running{${g('off1')}}`, values: '0x5' },
            { series: `trivisor_guest_up{${g('off1')}}`, values: '0x5' },
            { series: `trivisor_guest_desired_running{${g('ok1')}}`, values: '1x5' },
            { series: `trivisor_guest_up{${g('ok1')}}`, values: '1x5' },
            { series: 'up{job="trivisor",instance="m2:8443"}', values: '1 0x4' },
            { series: 'up{job="trivisor",instance="m1:8443"}', values: '1x5' },
            {
              series: 'trivisor_storage_pool_used_bytes{member="m1",pool="full",driver="btrfs"}',
              values: '95x15',
            },
            {
              series: 'trivisor_storage_pool_size_bytes{member="m1",pool="full",driver="btrfs"}',
              values: '100x15',
            },
            {
              series: 'trivisor_storage_pool_used_bytes{member="m1",pool="half",driver="dir"}',
              values: '50x15',
            },
            {
              series: 'trivisor_storage_pool_size_bytes{member="m1",pool="half",driver="dir"}',
              values: '100x15',
            },
            { series: 'trivisor_host_memory_available_bytes{member="m1"}', values: '5x10' },
            { series: 'trivisor_host_memory_bytes{member="m1"}', values: '100x10' },
            { series: `trivisor_guest_memory_bytes{${g('big1')}}`, values: '99x10' },
            { series: `trivisor_guest_memory_limit_bytes{${g('big1')}}`, values: '100x10' },
            { series: `trivisor_guest_memory_bytes{${g('ok1')}}`, values: '10x10' },
            { series: `trivisor_guest_memory_limit_bytes{${g('ok1')}}`, values: '100x10' },
          ],
          alert_rule_test: [
            {
              eval_time: '4m',
              alertname: 'TrivisorGuestDown',
              exp_alerts: [
                {
                  exp_labels: {
                    severity: 'warning',
                    member: 'm1',
                    project: 'default',
                    name: 'down1',
                    model: 'ct',
                  },
                  exp_annotations: {
                    summary: 'Guest down1 (project default) should run on m1 and does not',
                    description:
                      'Its desired state is Running, but it has not run for 2 minutes: see trivisor info down1 and trivisor console down1 --show-log.',
                  },
                },
              ],
            },
            // Not yet: down for one minute only.
            { eval_time: '2m', alertname: 'TrivisorGuestDown', exp_alerts: [] },
            {
              eval_time: '3m',
              alertname: 'TrivisorMemberDown',
              exp_alerts: [
                {
                  exp_labels: { severity: 'critical', job: 'trivisor', instance: 'm2:8443' },
                  exp_annotations: {
                    summary: 'Trivisor member m2:8443 does not answer',
                    description:
                      'Prometheus has not scraped m2:8443 for a minute: its daemon or the host is down (guests may still run; journalctl -u trivisor on the host).',
                  },
                },
              ],
            },
            {
              eval_time: '12m',
              alertname: 'TrivisorPoolNearlyFull',
              exp_alerts: [
                {
                  exp_labels: { severity: 'warning', member: 'm1', pool: 'full', driver: 'btrfs' },
                  exp_annotations: {
                    summary: 'Storage pool full on m1 is 95% full',
                    description:
                      'Guests on it will fail to write when it fills: free space, or move guests to another pool (trivisor copy --storage).',
                  },
                },
              ],
            },
            {
              eval_time: '6m',
              alertname: 'TrivisorHostMemorySqueeze',
              exp_alerts: [
                {
                  exp_labels: { severity: 'warning', member: 'm1' },
                  exp_annotations: {
                    summary: 'Member m1 has 5% of its memory left',
                    description:
                      'Guests are close to being reclaimed or killed by the host: lower their limits.memory or move some away.',
                  },
                },
              ],
            },
            {
              eval_time: '6m',
              alertname: 'TrivisorGuestMemorySqueeze',
              exp_alerts: [
                {
                  exp_labels: {
                    severity: 'warning',
                    member: 'm1',
                    project: 'default',
                    name: 'big1',
                    model: 'ct',
                  },
                  exp_annotations: {
                    summary: 'Guest big1 (project default) uses 99% of its memory limit',
                    description:
                      "It is about to be squeezed (ct: reclaim and the OOM killer; vm, pvm: its own kernel's): raise limits.memory.",
                  },
                },
              ],
            },
          ],
        },
      ],
    };
    const file = path.join(dir, 'rules.test.json');
    // promtool reads YAML, and JSON is YAML.
    await writeFile(file, JSON.stringify(tests, null, 2));
    const r = await promtool(['test', 'rules', file]);
    assert.equal(r.code, 0, r.output);
    assert.match(r.output, /SUCCESS/);
  });
});

interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  gridPos: { h: number; w: number; x: number; y: number };
  targets?: Array<{ expr: string; refId: string }>;
}

describe('Grafana dashboard', () => {
  test('docs/grafana/trivisor.json is a dashboard whose every query promtool parses and names exported metrics only', async () => {
    const dashboard = JSON.parse(await readFile(dashboardFile, 'utf8')) as {
      uid: string;
      schemaVersion: number;
      panels: Panel[];
      templating: { list: Array<{ name: string; type: string; query: unknown }> };
    };
    assert.equal(dashboard.uid, 'trivisor');
    assert.ok(dashboard.schemaVersion >= 36, 'a schema Grafana 9 and later reads');
    const variables = dashboard.templating.list.map((v) => v.name);
    assert.deepEqual(variables, ['datasource', 'member', 'project', 'guest']);
    const ids = new Set<number>();
    const exported = await exportedMetrics();
    const exprs: string[] = [];
    for (const p of dashboard.panels) {
      assert.ok(!ids.has(p.id), `panel id ${p.id} twice`);
      ids.add(p.id);
      assert.ok(p.gridPos.w > 0 && p.gridPos.x + p.gridPos.w <= 24, `${p.title} fits the grid`);
      if (p.type === 'row') continue;
      assert.deepEqual(
        p.datasource,
        // biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's variable, not a template
        { type: 'prometheus', uid: '${datasource}' },
        `${p.title} uses the chosen data source`,
      );
      assert.ok((p.targets ?? []).length > 0, `${p.title} has a query`);
      for (const t of p.targets ?? []) exprs.push(t.expr);
    }
    for (const v of dashboard.templating.list) {
      if (v.type !== 'query') continue;
      const q = (v.query as { query: string }).query;
      // label_values(METRIC_SELECTOR, LABEL) is Grafana's: its selector is PromQL.
      const m = /^label_values\((.+), *\w+\)$/.exec(q);
      assert.ok(m, `${v.name}: ${q}`);
      exprs.push(m[1]!);
    }
    for (const e of exprs)
      for (const name of named(e)) assert.ok(exported.has(name), `${name} is not exported`);
    // Every query as a recording rule, Grafana's variables replaced as Grafana would.
    const substituted = exprs.map((e) =>
      e
        .replaceAll('$__rate_interval', '5m')
        .replaceAll('$member', '.*')
        .replaceAll('$project', '.*')
        .replaceAll('$guest', '.*'),
    );
    const groups = [
      { name: 'dashboard', rules: substituted.map((expr, i) => ({ record: `dashboard:query${i}`, expr })) },
    ];
    const dir = await tempDir();
    const file = path.join(dir, 'dashboard-queries.json');
    await writeFile(file, JSON.stringify({ groups }));
    const r = await promtool(['check', 'rules', file]);
    assert.equal(r.code, 0, r.output);
    assert.match(r.output, new RegExp(`SUCCESS: ${exprs.length} rules found`));
  });
});
