import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import uplotCss from 'uplot/dist/uPlot.min.css';
import { HISTORY_RANGES, type History, type HistoryRange } from '../../src/api/web-schemas.ts';
import { navigate, route, withQuery } from './router.ts';
import { api } from './state.ts';
import { bytes, useLoadFor } from './ui.tsx';

/** Whose history: a member's (this one's without `member`), or a guest's. */
export type ChartTarget = { kind: 'host'; member?: string } | { kind: 'guest'; name: string };

const style = document.createElement('style');
style.textContent = uplotCss;
document.head.append(style);

const GROUPS: Array<{
  title: string;
  series: Array<[keyof History['metrics'] & string, string]>;
  format: (v: number) => string;
}> = [
  { title: 'CPU (CPUs busy)', series: [['cpu', 'CPU']], format: (v) => v.toFixed(2) },
  { title: 'Memory', series: [['memoryBytes', 'memory']], format: (v) => bytes(v) },
  {
    title: 'Network',
    series: [
      ['netRxBytesPerSecond', 'received'],
      ['netTxBytesPerSecond', 'sent'],
    ],
    format: (v) => `${bytes(v)}/s`,
  },
  {
    title: 'Disk',
    series: [
      ['diskReadBytesPerSecond', 'read'],
      ['diskWriteBytesPerSecond', 'written'],
    ],
    format: (v) => `${bytes(v)}/s`,
  },
];

const COLORS = ['#1f77b4', '#d62728'];

/**
 * Per-metric charts (average as a line, maximum dashed) over a range from an hour to a year;
 * a step in which the guest did not run is a gap. The range is in the URL (`?range=`).
 */
export function Charts(props: { target: ChartTarget }) {
  const range = (route.value.query.get('range') as HistoryRange | null) ?? 'hour';
  const key = props.target.kind === 'host' ? `host/${props.target.member ?? ''}` : props.target.name;
  // Only the history of whom the page names is drawn: the last choice's is not, while the new one loads.
  const history = useLoadFor(
    key,
    () =>
      props.target.kind === 'host'
        ? api.hostHistory(range, props.target.member)
        : api.guestHistory(props.target.name, range),
    [key, range],
  );
  const shown = history.data;
  useEffect(() => {
    // The newest step fills up as samples arrive: read again every step of the hour range.
    if (range !== 'hour') return;
    const t = setInterval(history.reload, 10_000);
    return () => clearInterval(t);
  }, [range, key]);
  return (
    <div>
      <fieldset class="row plain">
        <legend class="sr-only">Time range</legend>
        {HISTORY_RANGES.map((r) => (
          <button
            type="button"
            key={r}
            aria-pressed={r === range}
            class={r === range ? 'primary' : undefined}
            onClick={() => navigate(withQuery({ range: r }), { replace: true })}
          >
            Last {r}
          </button>
        ))}
      </fieldset>
      {history.error && <p role="alert">{history.error}</p>}
      {shown ? (
        <div class="charts">
          {GROUPS.map((g) => (
            <Chart key={g.title} group={g} history={shown} />
          ))}
        </div>
      ) : (
        !history.error && <p class="muted">Loading…</p>
      )}
    </div>
  );
}

function Chart(props: { group: (typeof GROUPS)[number]; history: History }) {
  const box = useRef<HTMLDivElement>(null);
  const { group, history } = props;
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const data: uPlot.AlignedData = [history.times];
    const series: uPlot.Series[] = [{}];
    group.series.forEach(([metric, label], i) => {
      const m = history.metrics[metric];
      data.push((m?.average ?? []) as Array<number | null>, (m?.maximum ?? []) as Array<number | null>);
      series.push(
        {
          label: `${label} (average)`,
          stroke: COLORS[i] ?? '#1f77b4',
          width: 1.5,
          value: (_u, v) => (v == null ? '–' : group.format(v)),
        },
        {
          label: `${label} (maximum)`,
          stroke: COLORS[i] ?? '#1f77b4',
          dash: [4, 4],
          width: 1,
          value: (_u, v) => (v == null ? '–' : group.format(v)),
        },
      );
    });
    const width = Math.max(260, el.clientWidth - 4);
    const plot = new uPlot(
      {
        width,
        height: 170,
        series,
        axes: [
          { stroke: 'currentColor' },
          { stroke: 'currentColor', size: 70, values: (_u, vals) => vals.map((v) => group.format(v)) },
        ],
        legend: { show: true },
        cursor: { drag: { x: false, y: false } },
      },
      data,
      el,
    );
    const resize = new ResizeObserver(() =>
      plot.setSize({ width: Math.max(260, el.clientWidth - 4), height: 170 }),
    );
    resize.observe(el);
    return () => {
      resize.disconnect();
      plot.destroy();
    };
  }, [history, group]);
  const empty = group.series.every(([m]) => (history.metrics[m]?.average ?? []).every((v) => v === null));
  return (
    <figure class="panel chart" style={{ margin: 0 }}>
      <figcaption>
        <strong>{group.title}</strong>
        {empty && <span class="muted"> · no samples in this range yet</span>}
      </figcaption>
      <div ref={box} title={`${group.title} over the last ${history.range}`} />
    </figure>
  );
}
