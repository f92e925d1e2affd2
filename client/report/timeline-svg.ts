import { showTime } from '../operator-time';
import type { OtherRun } from './key-runs';
import type { KeyLifecycle, VersionOrigin } from './lifecycle-report';

/** Text for SVG and HTML: the report shows names an operator typed, which may hold any character. */
export const escapeXml = (text: string): string =>
  text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

const WIDTH = 960;
const LABEL = 120;
const PLOT_FROM = LABEL + 10;
const PLOT_TO = WIDTH - 20;
const LANE = 38;
const TOP = 10;
const LANES = ['versions', 'rotations', 'rewraps', 'master key', 'backups'] as const;

export const COLORS = {
  current: '#2e7d32',
  retiredNeeded: '#f9a825',
  retired: '#9e9e9e',
  destroyed: '#e57373',
  rewrap: '#1565c0',
  failed: '#c62828',
  masterKey: '#6a1b9a',
  backup: '#1565c0',
  deleted: '#bdbdbd',
} as const;

const ORIGIN_SHORT: Record<VersionOrigin, string> = {
  created: 'created',
  manual: 'manual',
  'manual-kms-only': 'KMS only',
  schedule: 'schedule',
  policy: 'policy',
  'outside-keyops': 'outside',
  keyops: 'keyops',
};

/** Short tick labels: times of day for a short window, dates for a long one. */
function tickLabel(at: number, span: number): string {
  const shown = showTime(at);
  return span < 2 * 86_400_000 ? shown.slice(11, 16) : shown.slice(0, 10);
}

const ms = (at: string | undefined) => (at ? Date.parse(at) : Number.NaN);

/**
 * One key's life as a picture: its versions as bars (green current, amber retired but still
 * needed, grey retired), the rotations that made them, the rewraps with their durations, the
 * master-key rotations under the KMS, and every backup and failed night. Every mark carries a
 * `<title>` (the browser's tooltip) and a `data-kind` so that a reader and a test can find it.
 */
export function timelineSvg(key: KeyLifecycle, masterKeyRotations: OtherRun[], window: { from: string | undefined; to: string }): string {
  const end = ms(window.to);
  const times = [
    ...key.versions.map((v) => ms(v.createdAt)),
    ...key.rewraps.map((r) => ms(r.startedAt)),
    ...key.backups.map((b) => ms(b.createdAt)),
    ...key.failedNights.map((n) => ms(n.recordedAt)),
    ...masterKeyRotations.map((r) => ms(r.startedAt)),
  ].filter((t) => Number.isFinite(t));
  // A loop, not Math.min(...times): a spread of a long history (every backup of years) overflows the stack.
  let start = window.from ? ms(window.from) : times.reduce((a, b) => Math.min(a, b), end);
  // A few seconds of history (a test, a fresh install) still gets a readable axis.
  if (end - start < 60_000) start = end - 60_000;
  const span = end - start;
  const pad = span * 0.02;
  const x = (t: number) => PLOT_FROM + ((Math.min(Math.max(t, start - pad), end + pad) - (start - pad)) / (span + 2 * pad)) * (PLOT_TO - PLOT_FROM);
  const laneY = (lane: (typeof LANES)[number]) => TOP + LANES.indexOf(lane) * LANE;
  const height = TOP + LANES.length * LANE + 40;
  const parts: string[] = [];
  // Marks close in time would write their labels over each other: a label that would overlap
  // the lane's previous one is left out (the mark's tooltip still says it all), and one that
  // would run past the right edge ends at the mark instead.
  const labelEnds = new Map<string, number>();
  const label = (lane: string, after: number, before: number, y: number, text: string): string => {
    const width = text.length * 6.2;
    const right = after + width > WIDTH - 4;
    const from = right ? before - width : after;
    if (from < (labelEnds.get(lane) ?? -Infinity) + 4) return '';
    labelEnds.set(lane, from + width);
    return `<text x="${(right ? before : after).toFixed(1)}" y="${y}"${right ? ' text-anchor="end"' : ''} class="small">${escapeXml(text)}</text>`;
  };
  const mark = (kind: string, title: string, body: string) => parts.push(`<g data-kind="${kind}"><title>${escapeXml(title)}</title>${body}</g>`);

  for (const lane of LANES) {
    const y = laneY(lane);
    parts.push(`<text x="${LABEL}" y="${y + LANE / 2 + 4}" text-anchor="end" class="lane">${lane}</text>`);
    parts.push(`<line x1="${PLOT_FROM}" x2="${PLOT_TO}" y1="${y + LANE}" y2="${y + LANE}" class="grid"/>`);
  }

  const sorted = [...key.versions].sort((a, b) => a.version - b.version);
  sorted.forEach((v, i) => {
    const from = ms(v.createdAt);
    if (!Number.isFinite(from)) return;
    const next = sorted.slice(i + 1).find((n) => Number.isFinite(ms(n.createdAt)));
    const to = next ? ms(next.createdAt) : end;
    if (to < start) return;
    const needed = key.retiredStillNeeded.some((r) => r.version === v.version);
    const fill = v.state === 'destroyed' ? COLORS.destroyed : v.state === 'current' ? COLORS.current : needed ? COLORS.retiredNeeded : COLORS.retired;
    const x1 = x(from);
    const w = Math.max(2, x(to) - x1);
    const y = laneY('versions') + 6;
    const use = [v.wdeks ? `${v.wdeks} WDEK(s)` : '', v.backups.length ? `${v.backups.length} retained backup(s)` : ''].filter(Boolean).join(', ');
    mark(
      'version',
      `v${v.version} ${v.state}${needed ? ', still needed' : ''}: from ${showTime(from)}${next ? ` to ${showTime(to)}` : ''}${use ? `; needed by ${use}` : ''}`,
      `<rect x="${x1.toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${LANE - 12}" rx="3" fill="${fill}"/>` +
        (w >= 22 ? `<text x="${(x1 + w / 2).toFixed(1)}" y="${y + LANE / 2 - 1}" text-anchor="middle" class="in-bar">v${v.version}</text>` : ''),
    );
  });

  for (const v of sorted) {
    const at = ms(v.createdAt);
    if (!Number.isFinite(at) || at < start) continue;
    const cx = x(at);
    const cy = laneY('rotations') + LANE / 2;
    mark(
      'rotation',
      `v${v.version} at ${showTime(at)}: ${ORIGIN_SHORT[v.origin]}${v.run ? ` (${v.run})` : ''}`,
      `<path d="M ${cx.toFixed(1)} ${cy - 7} l 7 7 l -7 7 l -7 -7 z" fill="#37474f"/>` + label('rotations', cx + 9, cx - 9, cy + 4, `v${v.version} ${ORIGIN_SHORT[v.origin]}`),
    );
  }

  for (const r of key.rewraps) {
    const from = ms(r.startedAt);
    const to = r.closedAt ? ms(r.closedAt) : end;
    const x1 = x(from);
    const w = Math.max(3, x(to) - x1);
    const y = laneY('rewraps') + 8;
    const ok = r.status === 'COMPLETED';
    const took = r.seconds !== undefined ? `${r.seconds.toFixed(1)} s` : 'running';
    mark(
      'rewrap',
      `${r.workflowId}: ${r.status.toLowerCase()}, ${took}${r.result ? `, ${r.result.rewrapped} of ${r.result.total} WDEK(s)` : ''}`,
      `<rect x="${x1.toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${LANE - 16}" rx="2" fill="${ok || r.status === 'RUNNING' ? COLORS.rewrap : COLORS.failed}"/>` +
        label('rewraps', x1 + w + 4, x1 - 4, y + 15, `→v${r.targetVersion} ${took}`),
    );
  }

  for (const r of masterKeyRotations) {
    const from = ms(r.startedAt);
    const to = r.closedAt ? ms(r.closedAt) : end;
    const x1 = x(from);
    const w = Math.max(3, x(to) - x1);
    const y = laneY('master key') + 8;
    mark(
      'master-key',
      `${r.workflowId}: ${r.status.toLowerCase()}${r.outcome ? ` (${r.outcome})` : ''}, from ${showTime(from)}${r.closedAt ? ` to ${showTime(to)}` : ''}`,
      `<rect x="${x1.toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${LANE - 16}" rx="2" fill="${r.outcome === 'failed' ? COLORS.failed : COLORS.masterKey}"/>`,
    );
  }

  for (const b of key.backups) {
    const at = ms(b.createdAt);
    const fill = b.status === 'good' ? COLORS.backup : b.status === 'failed' ? COLORS.failed : COLORS.deleted;
    mark(
      'backup',
      `${b.backupId}: ${b.status}, root key v${b.keyVersion}, ${b.bytes} B, ${showTime(at)}${b.lastDrill ? `; drill ${b.lastDrill.result}` : ''}`,
      `<circle cx="${x(at).toFixed(1)}" cy="${laneY('backups') + LANE / 2}" r="5" fill="${fill}" stroke="#fff" stroke-width="1"/>`,
    );
  }
  for (const n of key.failedNights) {
    const cx = x(ms(n.recordedAt));
    const cy = laneY('backups') + LANE / 2;
    mark(
      'failed-night',
      `failed night ${n.night} of ${n.databaseId}${n.error ? `: ${n.error}` : ''}`,
      `<path d="M ${(cx - 6).toFixed(1)} ${cy - 6} l 12 12 M ${(cx + 6).toFixed(1)} ${cy - 6} l -12 12" stroke="${COLORS.failed}" stroke-width="3"/>`,
    );
  }

  const axisY = TOP + LANES.length * LANE;
  for (let i = 0; i <= 4; i++) {
    const t = start + (span * i) / 4;
    const tx = x(t);
    parts.push(`<line x1="${tx.toFixed(1)}" x2="${tx.toFixed(1)}" y1="${TOP}" y2="${axisY + 4}" class="tick"/>`);
    parts.push(`<text x="${tx.toFixed(1)}" y="${axisY + 18}" text-anchor="middle" class="small">${escapeXml(tickLabel(t, span))}</text>`);
  }

  return (
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${WIDTH} ${height}" width="${WIDTH}" height="${height}" role="img" ` +
    `aria-label="${escapeXml(`timeline of key ${key.name}`)}" data-key="${escapeXml(key.keyId)}">` +
    '<style>.lane{font:600 12px sans-serif;fill:#263238}.small{font:11px sans-serif;fill:#263238}.in-bar{font:600 11px sans-serif;fill:#fff}' +
    '.grid{stroke:#eceff1}.tick{stroke:#cfd8dc;stroke-dasharray:2 3}</style>' +
    parts.join('') +
    '</svg>'
  );
}
