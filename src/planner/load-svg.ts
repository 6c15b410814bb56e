import type { ReplayedHost } from './replay.ts';

const escapeXml = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/**
 * A picture of each planned host's load over time (bottleneck of CPU and memory, % of the host):
 * one strip per host, a dashed line at 100%, intervals above it in red. Plain SVG, no script,
 * so a browser, the web UI or a document can show it as it is.
 */
export function loadSvg(hosts: ReplayedHost[], options: { title: string }): string {
  const width = 720;
  const strip = 56;
  const left = 70;
  const top = 28;
  const plotW = width - left - 10;
  const height = top + hosts.length * strip + 10;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<text x="4" y="16" font-size="13">${escapeXml(options.title)}</text>`,
  ];
  hosts.forEach((h, i) => {
    const y0 = top + i * strip;
    const plotH = strip - 10;
    // The strip's scale reaches 100% or the host's peak, whichever is higher.
    const max = Math.max(100, h.peakLoadPercent);
    const T = h.loadPercent.length;
    const x = (t: number) => left + (T > 1 ? (t / (T - 1)) * plotW : 0);
    const y = (v: number) => y0 + plotH - (v / max) * plotH;
    const points = Array.from(h.loadPercent, (v, t) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    parts.push(
      `<text x="4" y="${y0 + plotH / 2}">${escapeXml(h.name)}</text>`,
      `<text x="4" y="${y0 + plotH / 2 + 12}" fill="#666">p95 ${h.p95LoadPercent.toFixed(0)}%</text>`,
      `<rect x="${left}" y="${y0}" width="${plotW}" height="${plotH}" fill="#f6f6f6"/>`,
      `<line x1="${left}" x2="${left + plotW}" y1="${y(100).toFixed(1)}" y2="${y(100).toFixed(1)}" stroke="#c00" stroke-dasharray="4 3"/>`,
      `<polyline fill="none" stroke="#2563eb" stroke-width="1" points="${points}"/>`,
    );
    h.loadPercent.forEach((v, t) => {
      if (v > 100)
        parts.push(`<circle cx="${x(t).toFixed(1)}" cy="${y(v).toFixed(1)}" r="1.5" fill="#c00"/>`);
    });
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
