import { useSignal } from '@preact/signals';
import type { AdviceAnswer, ConsolidationPlanWire, PlanHistoryRange } from '../../src/api/plan-schemas.ts';
import { api } from './state.ts';
import { Field, Form, Page } from './ui.tsx';

/*
 * The consolidation planner (issue 14 §4, decision 0065): an administrator uploads an inventory
 * (or plans the project's guests from their metric history), sets the host size, and sees what
 * `trivisor plan consolidate` shows: hosts needed against the lower bound, the overload and
 * headroom of the traces replayed on the plan, each host's workloads, and its load over time.
 */

const pct = (v: number, digits = 2) => `${(v * 100).toFixed(digits)}%`;

/** The first workloads of a host, as the CLI's IDS column shows them; all of them in the title. */
function ids(workloads: string[]): string {
  return workloads.slice(0, 6).join(', ') + (workloads.length > 6 ? `, … (${workloads.length})` : '');
}

/**
 * The recommended model per workload (decision 0054's advisor), when profiles were given: an
 * inventory alone carries no OS or system-call profile to decide on.
 */
function Models(props: { plan: ConsolidationPlanWire; advice: AdviceAnswer | null }) {
  if (!props.advice)
    return (
      <p class="muted" data-testid="plan-models">
        Model per workload: give the workloads' profiles (OS, kernel, system calls, I/O:
        docs/advisor-profile.md) to have ct, pvm or vm recommended for each; an inventory alone carries none.
      </p>
    );
  const hostOf = new Map(props.plan.hosts.flatMap((h) => h.workloads.map((w) => [w, h.name] as const)));
  const advised = new Set(props.advice.advice.map((a) => a.id));
  const without = [...hostOf.keys()].filter((w) => !advised.has(w));
  return (
    <>
      <h2>Recommended model per workload</h2>
      <div class="panel table-wrap">
        <table aria-label="Recommended models">
          <thead>
            <tr>
              <th>Workload</th>
              <th>Host</th>
              <th>Model</th>
              <th>Reason</th>
            </tr>
          </thead>
          <tbody>
            {props.advice.advice.map((a) => (
              <tr key={a.id} data-workload={a.id}>
                <td>{a.id}</td>
                <td>{hostOf.get(a.id) ?? 'not in the inventory'}</td>
                <td>{a.model}</td>
                <td>{a.reason}</td>
              </tr>
            ))}
          </tbody>
        </table>
        <p class="muted">
          From the three-model table measured on the daemon's host
          {props.advice.measuredAt ? ` at ${props.advice.measuredAt}` : ''} (bench/models.ts).
          {without.length > 0 ? ` No profile for ${without.length} workload(s): ${ids(without)}.` : ''}
        </p>
      </div>
    </>
  );
}

const growth = (v: number) => `${v >= 0 ? '+' : '−'}${Math.abs(v * 100).toFixed(1)}%`;

/** What a growth forecast (`forecastDays`) did: the trend it found and how it changed the plan. */
function Forecast(props: { plan: ConsolidationPlanWire }) {
  const f = props.plan.forecast;
  if (!f) return null;
  const memory = f.memoryWeeklyGrowth === undefined ? '' : `, memory ${growth(f.memoryWeeklyGrowth)}`;
  return (
    <div class="panel" data-testid="plan-forecast">
      <strong>Forecast</strong>: planned for the {f.aheadDays} days after the inventory's {f.days} whole days.
      Its trend (a line through each day's summed load) is CPU {growth(f.cpuWeeklyGrowth)}
      {memory} a week;{' '}
      {f.rawFactor > 1
        ? `the load was scaled by ×${f.factor.toFixed(3)}: lower bound ${props.plan.lowerBound} hosts, ${f.measuredLowerBound} as measured.`
        : `it does not rise (×${f.rawFactor.toFixed(3)}), so the plan is for the load as measured (lower bound ${f.measuredLowerBound}).`}
    </div>
  );
}

function PlanResult(props: { plan: ConsolidationPlanWire; source: string; advice: AdviceAnswer | null }) {
  const p = props.plan;
  const inv = p.inventory;
  const memory = p.hostSize.memoryBytes === undefined ? '' : `, ${p.hostSize.memoryBytes / 1024 ** 3} GiB`;
  return (
    <section class="plan" aria-label="Plan" data-testid="plan-result">
      <p class="muted" data-testid="plan-source">
        {props.source}: {inv.workloads} workloads ({inv.format}, {inv.samples} samples of{' '}
        {inv.intervalSeconds} s), hosts of {p.hostSize.cpu} {p.cpuUnit}
        {memory}; {p.method}.
      </p>
      <section class="cards" aria-label="Plan figures">
        <div class="panel card">
          <div class="muted">Hosts needed</div>
          <div class="big" data-testid="plan-hosts">
            {p.hosts.length}
          </div>
          <div class="muted" data-testid="plan-lower-bound">
            lower bound {p.lowerBound} ({(p.hosts.length / p.lowerBound).toFixed(2)}×)
          </div>
        </div>
        <div class="panel card">
          <div class="muted">Over 100%</div>
          <div class="big" data-testid="plan-overload">
            {pct(p.replay.overloadFraction)}
          </div>
          <div class="muted">
            of host-intervals ({p.replay.hostIntervalsOver100} of {p.replay.hostIntervals}); some host over in{' '}
            {pct(p.replay.anyHostOverFraction)} of intervals
          </div>
        </div>
        <div class="panel card">
          <div class="muted">Headroom</div>
          <div class="big" data-testid="plan-headroom">
            {p.replay.headroomPercent.toFixed(1)} points
          </div>
          <div class="muted">
            100 − each host's 95th-percentile load, averaged
            {p.predicted.headroomPercentByPeriod && p.predicted.headroomPercentByPeriod.length > 1
              ? `; its ${p.predicted.periodDays === 7 ? 'weeks' : 'days'} ${Math.min(...p.predicted.headroomPercentByPeriod).toFixed(1)} to ${Math.max(...p.predicted.headroomPercentByPeriod).toFixed(1)}`
              : ''}
          </div>
        </div>
      </section>
      <Forecast plan={p} />
      <Models plan={p} advice={props.advice} />
      <div class="panel table-wrap">
        <table aria-label="Planned hosts">
          <thead>
            <tr>
              <th>Host</th>
              <th>Workloads</th>
              <th>P95 load</th>
              <th>Peak</th>
              <th>Intervals over 100%</th>
              <th>Inventory ids</th>
            </tr>
          </thead>
          <tbody>
            {p.hosts.map((h) => (
              <tr key={h.name} data-host={h.name}>
                <td>{h.name}</td>
                <td>{h.workloads.length}</td>
                <td>{h.p95LoadPercent.toFixed(0)}%</td>
                <td>{h.peakLoadPercent.toFixed(0)}%</td>
                <td>{h.intervalsOver100}</td>
                <td title={h.workloads.join(', ')}>{ids(h.workloads)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <h2>Load of each host over time</h2>
      {/* An image, not inline markup: the daemon's SVG is shown, never run. */}
      <img
        class="plan-svg"
        data-testid="plan-svg"
        src={`data:image/svg+xml;charset=utf-8,${encodeURIComponent(p.svg)}`}
        alt={`Load of each of the ${p.hosts.length} planned hosts over time, with the 100% line and the intervals above it`}
      />
    </section>
  );
}

export function PlanPage() {
  const plan = useSignal<{
    plan: ConsolidationPlanWire;
    source: string;
    advice: AdviceAnswer | null;
  } | null>(null);
  return (
    <Page title="Consolidation plan">
      <div class="panel plan">
        <p class="muted">
          How many hosts of a size an inventory of measured servers needs, which workload goes where, and how
          the traces replay on the plan, as <code>trivisor plan consolidate</code> computes it. Inventories:
          our CSV (id,cpu,memory,timestamp,cpu_used,memory_used), PlanetLab or Bitbrains rows, plain or
          gzip'd, up to 64 MiB; or this project's guests from their metric history.
        </p>
        <Form
          label="Plan a consolidation"
          submit="Plan"
          run={async (d) => {
            const file = d.get('inventory');
            const history = String(d.get('fromHistory') || '') as PlanHistoryRange | '';
            const chosen = file instanceof File && file.size > 0 ? file : null;
            if (!chosen && !history)
              throw new Error('Choose an inventory file, or a range of the guests’ metric history');
            if (chosen && history) throw new Error('Choose an inventory file or a history range, not both');
            const percentile = String(d.get('percentile') || '');
            const seed = String(d.get('seed') || '');
            const forecastDays = String(d.get('forecastDays') || '');
            const result = await api.planConsolidation(chosen, {
              hostSize: String(d.get('hostSize') || ''),
              ...(percentile ? { percentile: Number(percentile) } : {}),
              ...(seed ? { seed: Number(seed) } : {}),
              ...(forecastDays ? { forecastDays: Number(forecastDays) } : {}),
              ...(history ? { fromHistory: history } : {}),
            });
            const profiles = d.get('profiles');
            const advice =
              profiles instanceof File && profiles.size > 0 ? await api.adviseWorkloads(profiles) : null;
            plan.value = {
              plan: result,
              source: chosen ? chosen.name : `This project's guests over the last ${history}`,
              advice,
            };
          }}
        >
          <div class="row">
            <Field label="Inventory" hint="A .csv or .csv.gz file">
              {(id) => (
                <input id={id} name="inventory" type="file" accept=".csv,.gz,text/csv,application/gzip" />
              )}
            </Field>
            <Field label="Or from metric history">
              {(id) => (
                <select id={id} name="fromHistory">
                  <option value="">No: the file</option>
                  <option value="day">Last day</option>
                  <option value="week">Last week</option>
                  <option value="month">Last month</option>
                  <option value="year">Last year</option>
                </select>
              )}
            </Field>
          </div>
          <div class="row">
            <Field
              label="Host size"
              hint="cpu=5320 in the inventory's CPU unit (MIPS for PlanetLab, cores otherwise), or cpu=32,memory=256GiB"
            >
              {(id) => <input id={id} name="hostSize" required placeholder="cpu=32,memory=256GiB" />}
            </Field>
            <Field label="Percentile" hint="Over 100% in at most (100 − p)% of host-intervals">
              {(id) => (
                <input
                  id={id}
                  name="percentile"
                  type="number"
                  min="1"
                  max="100"
                  step="any"
                  defaultValue="99"
                />
              )}
            </Field>
            <Field
              label="Workload profiles"
              hint="Optional: CSV or JSON (docs/advisor-profile.md), ids as the inventory's"
            >
              {(id) => (
                <input id={id} name="profiles" type="file" accept=".csv,.json,text/csv,application/json" />
              )}
            </Field>
            <Field label="Seed">
              {(id) => <input id={id} name="seed" type="number" step="1" defaultValue="1" />}
            </Field>
            <Field
              label="Forecast days"
              hint="Optional: plan for the load's trend N days on (7+ days of samples)"
            >
              {(id) => <input id={id} name="forecastDays" type="number" min="1" max="3660" step="1" />}
            </Field>
          </div>
        </Form>
      </div>
      {plan.value && (
        <PlanResult plan={plan.value.plan} source={plan.value.source} advice={plan.value.advice} />
      )}
    </Page>
  );
}
