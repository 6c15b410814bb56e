// The curve of bench/ct-density-stages.ts as an SVG (docs/ct-density-stages.svg): four small
// panels against N, Trivisor beside raw runc where both were measured. Written by hand, no
// plotting library: a line per series, the axes' ends labelled.

type Json = Record<string, unknown>;

interface Series {
  label: string;
  color: string;
  points: Array<[number, number]>;
}

const W = 340;
const H = 220;
const PAD = { left: 52, right: 12, top: 28, bottom: 36 };

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function panel(title: string, unit: string, series: Series[], x0: number, y0: number): string {
  const all = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const maxX = Math.max(1, ...all.map(([x]) => x));
  const maxY = Math.max(1e-9, ...all.map(([, y]) => y)) * 1.1;
  const px = (x: number) => x0 + PAD.left + (x / maxX) * (W - PAD.left - PAD.right);
  const py = (y: number) => y0 + H - PAD.bottom - (y / maxY) * (H - PAD.top - PAD.bottom);
  const out: string[] = [];
  out.push(
    `<text x="${x0 + W / 2}" y="${y0 + 16}" text-anchor="middle" font-weight="bold">${esc(title)}</text>`,
  );
  out.push(
    `<line x1="${px(0)}" y1="${py(0)}" x2="${px(maxX)}" y2="${py(0)}" stroke="#444"/>`,
    `<line x1="${px(0)}" y1="${py(0)}" x2="${px(0)}" y2="${py(maxY)}" stroke="#444"/>`,
    `<text x="${px(0) - 4}" y="${py(0) + 4}" text-anchor="end">0</text>`,
    `<text x="${px(0) - 4}" y="${py(maxY / 1.1) + 4}" text-anchor="end">${formatNumber(maxY / 1.1)}</text>`,
    `<text x="${px(0)}" y="${py(0) + 16}" text-anchor="middle">0</text>`,
    `<text x="${px(maxX)}" y="${py(0) + 16}" text-anchor="end">${maxX} guests</text>`,
    `<text x="${x0 + 8}" y="${y0 + H / 2}" transform="rotate(-90 ${x0 + 12} ${y0 + H / 2})" text-anchor="middle">${esc(unit)}</text>`,
  );
  series.forEach((s, i) => {
    const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (pts.length === 0) return;
    out.push(
      `<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${pts.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' ')}"/>`,
    );
    for (const [x, y] of pts)
      out.push(`<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="3" fill="${s.color}"/>`);
    out.push(
      `<text x="${x0 + PAD.left + 6}" y="${y0 + PAD.top + 12 + i * 14}" fill="${s.color}">${esc(s.label)}</text>`,
    );
  });
  return out.join('\n');
}

function formatNumber(v: number): string {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

/** The SVG of one bench/results/ct-density-stages.json. */
export function densityPlotSvg(result: Json): string {
  const t = (result.trivisor as Json[] | undefined) ?? [];
  const raw = (result.raw as Json[] | undefined) ?? [];
  const pts = (rows: Json[], f: (r: Json) => unknown): Array<[number, number]> =>
    rows.map((r) => [Number(r.guests), Number(f(r))]);
  const TRIVISOR = '#1f6feb';
  const RAW = '#d1242f';
  const OTHER = '#2da44e';
  const panels = [
    panel(
      'Host memory per guest',
      'MiB',
      [
        { label: 'Trivisor', color: TRIVISOR, points: pts(t, (r) => r.hostMemoryPerGuestMiB) },
        { label: 'raw runc', color: RAW, points: pts(raw, (r) => r.hostMemoryPerGuestMiB) },
        {
          label: 'Trivisor beyond own processes',
          color: OTHER,
          points: pts(t, (r) => r.hostMemoryPerGuestBeyondOwnProcessesMiB),
        },
      ],
      0,
      0,
    ),
    panel(
      'Daemon RSS',
      'MiB',
      [{ label: 'Trivisor daemon', color: TRIVISOR, points: pts(t, (r) => r.daemonRssMiB) }],
      W,
      0,
    ),
    panel(
      'List latency',
      'ms',
      [
        { label: 'GET /1.0/guests p50', color: TRIVISOR, points: pts(t, (r) => (r.listUrls as Json).p50Ms) },
        { label: '?recursion=1 p50', color: OTHER, points: pts(t, (r) => (r.listFull as Json).p50Ms) },
        { label: 'trivisor list', color: RAW, points: pts(t, (r) => r.cliListMs) },
      ],
      0,
      H,
    ),
    panel(
      'Start time per guest (stage)',
      'ms',
      [
        { label: 'Trivisor', color: TRIVISOR, points: pts(t, (r) => r.stagePerGuestMs) },
        { label: 'raw runc', color: RAW, points: pts(raw, (r) => r.stagePerGuestMs) },
      ],
      W,
      H,
    ),
  ];
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${2 * W}" height="${2 * H}" viewBox="0 0 ${2 * W} ${2 * H}" font-family="sans-serif" font-size="11">
<title>ct density in stages: Trivisor against raw runc</title>
<rect width="100%" height="100%" fill="white"/>
${panels.join('\n')}
</svg>
`;
}
