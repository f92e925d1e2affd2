import { showTime } from '../operator-time';
import type { OtherRun } from './key-runs';
import { ORIGIN_TEXT, type KeyLifecycle, type LifecycleReport } from './lifecycle-report';
import { COLORS, escapeXml as esc, timelineSvg } from './timeline-svg';

const when = (at: string | undefined) => (at ? esc(showTime(at)) : '–');
const list = (items: string[], none = '–') => (items.length ? items.map(esc).join('<br>') : none);
const size = (bytes: number) => (bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(1)} MiB` : bytes >= 1024 ? `${(bytes / 1024).toFixed(1)} KiB` : `${bytes} B`);

function table(id: string, caption: string, head: string[], rows: string[][], empty: string): string {
  const title = caption ? `<h3>${esc(caption)}</h3>` : '';
  if (rows.length === 0) return `${title}<p class="none" data-table="${id}">${esc(empty)}</p>`;
  return (
    `${title}<table data-table="${id}"><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>` +
    rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join('')}</tr>`).join('') +
    '</tbody></table>'
  );
}

function masterKeyTable(runs: OtherRun[]): string {
  return table(
    'master-key',
    '',
    ['Run', 'Started', 'Ended', 'Status', 'Outcome'],
    runs.map((r) => [`<code>${esc(r.workflowId)}</code>`, when(r.startedAt), when(r.closedAt), esc(r.status.toLowerCase()), esc(r.outcome ?? '–')]),
    'No master-key rotation in this period.',
  );
}

function keySection(key: KeyLifecycle, report: LifecycleReport): string {
  const needed = key.retiredStillNeeded.length
    ? `<ul>${key.retiredStillNeeded
        .map((r) => {
          const what = [
            r.backups.length ? `${r.backups.length} retained backup(s): ${r.backups.map((b) => `<code>${esc(b)}</code>`).join(', ')}` : '',
            r.wdeks ? `${r.wdeks} WDEK(s) not yet rewrapped` : '',
            r.databases.length ? `pages of ${r.databases.map(esc).join(', ')}` : '',
          ].filter(Boolean);
          return `<li data-version="${r.version}"><b>v${r.version}</b> is retired and still needed by ${what.join('; ')}. Keep it until they expire.</li>`;
        })
        .join('')}</ul>`
    : '<p data-still-needed="none">No retired version is needed by a retained backup, a WDEK or a database.</p>';
  const policy = key.rotationPolicy ? `every ${key.rotationPolicy.intervalMonths} month(s) by KMS policy` : 'no KMS rotation policy';
  return `
<section class="key" data-key="${esc(key.keyId)}">
  <h2>Key ${esc(key.name)} <small><code>${esc(key.keyId)}</code></small></h2>
  <p class="facts">${esc(key.state)} · current version <b>v${key.currentVersion}</b> · ${key.versions.length} version(s) · created ${when(key.createdAt)} · ${esc(policy)} · databases: ${key.databases.length ? key.databases.map(esc).join(', ') : 'none'}</p>
  ${timelineSvg(key, report.masterKeyRotations, { from: report.since, to: report.generatedAt })}
  <h3>Retired versions still needed</h3>
  <div class="needed">${needed}${key.unreadableBackups.length ? `<p class="warn">Unreadable backup files (what they need is unknown): ${list(key.unreadableBackups)}</p>` : ''}</div>
  ${table(
    'versions',
    'Versions',
    ['Version', 'Created', 'Why', 'Run', 'State', 'WDEKs', 'Retained backups that need it'],
    key.versions.map((v) => [
      `v${v.version}`,
      when(v.createdAt),
      esc(ORIGIN_TEXT[v.origin]),
      v.run ? `<code>${esc(v.run)}</code>` : '–',
      esc(v.state),
      String(v.wdeks),
      list(v.backups),
    ]),
    'The KMS lists no version.',
  )}
  ${table(
    'rewraps',
    'Rotations and rewraps',
    ['Run', 'To', 'Why', 'Started', 'Rotated', 'Rewrap from', 'Verify from', 'Announced', 'Took', 'WDEKs', 'Status'],
    key.rewraps.map((r) => [
      `<code>${esc(r.workflowId)}</code>${r.executions > 1 ? ` <small>(${r.executions} executions)</small>` : ''}`,
      `v${r.targetVersion}`,
      esc(ORIGIN_TEXT[r.origin]),
      when(r.startedAt),
      when(r.steps.rotatedAt),
      when(r.steps.rewrapStartedAt),
      when(r.steps.verifyStartedAt),
      when(r.steps.announcedAt),
      r.seconds !== undefined ? `${r.seconds.toFixed(1)} s` : 'running',
      r.result ? `${r.result.rewrapped} of ${r.result.total}` : '–',
      esc(r.status.toLowerCase()),
    ]),
    'No rewrap in this period.',
  )}
  ${table(
    'backups',
    'Backups',
    ['Backup', 'Database', 'Night', 'Taken', 'Root-key version', 'Size', 'Status', 'Verified', 'Last drill'],
    key.backups.map((b) => [
      `<code>${esc(b.backupId)}</code>`,
      esc(b.databaseId),
      esc(b.night),
      when(b.createdAt),
      `v${b.keyVersion}`,
      size(b.bytes),
      esc(b.status),
      b.verified ? 'yes' : 'no',
      b.lastDrill ? `${esc(b.lastDrill.result)} ${when(b.lastDrill.drilledAt)}` : 'never',
    ]),
    'No backup under this key in this period.',
  )}${key.omittedBackups ? `<p class="none">And ${key.omittedBackups} older backup(s) of this period, not listed: narrow it with --since.</p>` : ''}
  ${table(
    'failed-nights',
    'Failed nights',
    ['Database', 'Night', 'Recorded', 'Run', 'Why'],
    key.failedNights.map((n) => [esc(n.databaseId), esc(n.night), when(n.recordedAt), `<code>${esc(n.workflowId)}</code>`, esc(n.error ?? '–')]),
    'No failed night in this period.',
  )}
</section>`;
}

/**
 * The whole report as one self-contained HTML file (no script, no external resource): it opens
 * offline, prints, and can be attached to an audit as it is.
 */
export function reportHtml(report: LifecycleReport): string {
  const legend = [
    [COLORS.current, 'current version'],
    [COLORS.retiredNeeded, 'retired, still needed'],
    [COLORS.retired, 'retired, not needed'],
    [COLORS.rewrap, 'rewrap'],
    [COLORS.masterKey, 'master-key rotation'],
    [COLORS.backup, 'backup'],
    [COLORS.failed, 'failure'],
  ]
    .map(([color, text]) => `<span><i style="background:${color}"></i>${esc(text!)}</span>`)
    .join('');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>keyops key lifecycle report</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;color:#263238;margin:24px auto;max-width:1000px;padding:0 12px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 4px;border-top:2px solid #cfd8dc;padding-top:14px}h3{font-size:15px;margin:16px 0 6px}
small{color:#607d8b;font-weight:normal}code{font:12px ui-monospace,monospace}
table{border-collapse:collapse;width:100%;font-size:12.5px}th,td{border-bottom:1px solid #eceff1;padding:4px 6px;text-align:left;vertical-align:top}th{background:#f5f7f8}
.legend span{margin-right:14px;white-space:nowrap}.legend i{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.facts,.meta{color:#455a64}.none{color:#78909c}.warn{color:#c62828}svg{display:block;margin:10px 0;max-width:100%;height:auto}
</style>
</head>
<body>
<h1>keyops key lifecycle report</h1>
<p class="meta">Generated ${when(report.generatedAt)} · namespace <code>${esc(report.namespace)}</code> · task queue <code>${esc(report.taskQueue)}</code> · ${report.since ? `since ${when(report.since)}` : 'all recorded history'} · ${report.keys.length} key(s)</p>
<p class="meta">Built from the KMS metadata and the backup catalog (read by a worker) and the Temporal histories of the runs. Why a version exists comes from the run that made it: a rotation keyops ran (by hand or on a schedule), or one the KMS made by itself (its rotation policy, or someone outside keyops) that the watcher found and rewrapped.</p>
<p class="legend">${legend}</p>
${report.unreadableKeys.length ? `<div class="warn" data-unreadable-keys><h2>Keys the worker could not read</h2><ul>${report.unreadableKeys.map((p) => `<li><code>${esc(p.keyId)}</code>: ${esc(p.error)}</li>`).join('')}</ul></div>` : ''}
${report.keys.length ? report.keys.map((k) => keySection(k, report)).join('\n') : '<p class="none">No key in use on this task queue.</p>'}
<h2>Master-key rotations <small>of the crypto units under the KMS: every key above lived through each</small></h2>
${masterKeyTable(report.masterKeyRotations)}
</body>
</html>
`;
}
