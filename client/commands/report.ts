import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Client } from '@temporalio/client';
import type { Command } from 'commander';
import { keyReportFactsUpdate } from '../../workflows/lookup-messages';
import { TASK_QUEUE } from '../../workflows/task-queue';
import { CliError, ExitCode } from '../cli-error';
import type { GlobalOptions } from '../global-options';
import { examples } from '../help-examples';
import { resolveKeyId } from '../key-ref';
import { showTime } from '../operator-time';
import { emit } from '../output';
import { keyRuns, masterKeyRuns } from '../report/key-runs';
import { keyLifecycle, ORIGIN_TEXT, type LifecycleReport } from '../report/lifecycle-report';
import { reportHtml } from '../report/report-html';
import { lookUpOnWorker, withClient } from '../run-on-worker';

interface ReportOptions {
  key: string[];
  since?: string;
  html?: string;
  taskQueue: string;
}

/** `2026-11-01`, an ISO time with its zone, or `30d` / `12h` back from now, as an ISO time. */
export function parseSince(raw: string, now = Date.now()): string {
  const text = raw.trim();
  const relative = /^(\d{1,5})([dh])$/.exec(text);
  if (relative) return new Date(now - Number(relative[1]) * (relative[2] === 'd' ? 86_400_000 : 3_600_000)).toISOString();
  const bad = (why: string) => new CliError(`--since "${raw}" ${why}`, ExitCode.usage);
  const day = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text);
  if (day) {
    const date = new Date(`${text}T00:00:00Z`);
    // Date() rolls 2026-02-30 over into March: a day that does not exist is refused instead.
    if (Number.isNaN(date.getTime()) || date.toISOString().slice(0, 10) !== text) throw bad('is not a day of the calendar');
    return date.toISOString();
  }
  if (/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/.test(text)) throw bad('has no time zone: add Z (UTC) or an offset such as +01:00');
  const date = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/.test(text) ? new Date(text) : new Date(Number.NaN);
  if (Number.isNaN(date.getTime())) throw bad('is not a date (2026-11-01), an ISO time (2026-11-01T08:00:00Z) or a span back from now (30d, 12h)');
  return date.toISOString();
}

/**
 * Gathers the report: the worker's facts (KMS metadata, versions and what needs each, the
 * catalog's backups and nights) through the look-up desk, then each key's runs from Temporal.
 */
export async function gatherReport(client: Client, opts: { keyIds: string[]; since?: string | undefined; taskQueue: string }): Promise<LifecycleReport> {
  const generatedAt = new Date().toISOString();
  const facts = await lookUpOnWorker(
    client,
    keyReportFactsUpdate,
    // Reads every retained backup's header, as `key versions` does.
    { taskQueue: opts.taskQueue, args: [{ ...(opts.keyIds.length ? { keyIds: opts.keyIds } : {}), ...(opts.since ? { since: opts.since } : {}) }], summary: 'keyops: facts for the lifecycle report', timeoutSeconds: 300 },
    (failure) => {
      throw new CliError(`the worker could not read the keys for the report: ${failure.message}`, ExitCode.failed);
    },
  );
  const keys = [];
  for (const f of facts.keys) keys.push(keyLifecycle(f, await keyRuns(client, f.keyId), opts.since));
  return {
    generatedAt,
    since: opts.since,
    namespace: client.options.namespace,
    taskQueue: opts.taskQueue,
    keys,
    unreadableKeys: facts.problems,
    masterKeyRotations: await masterKeyRuns(client, opts.taskQueue, opts.since),
  };
}

/** Written beside its final name and renamed: a reader never opens half a report. */
function writeAtomically(file: string, text: string): string {
  const path = resolve(file);
  const partial = `${dirname(path)}/.${path.split('/').pop()}.${process.pid}.partial`;
  try {
    writeFileSync(partial, text);
    renameSync(partial, path);
  } catch (err) {
    rmSync(partial, { force: true });
    throw new CliError(`cannot write the report to ${path}: ${(err as Error).message}`, ExitCode.failed);
  }
  return path;
}

function summaryLines(report: LifecycleReport): string[] {
  const unreadable = report.unreadableKeys.map((p) => `key ${p.keyId}: could not be read: ${p.error}`);
  if (report.keys.length === 0) return [...unreadable, ...(unreadable.length ? [] : [`no key in use on task queue ${report.taskQueue}`])];
  return [...unreadable, ...report.keys.flatMap((k) => [
    `key ${k.name} (${k.keyId}): ${k.state}, current v${k.currentVersion}, ${k.backups.length} backup(s), ${k.failedNights.length} failed night(s)`,
    ...k.versions.map((v) => `  v${v.version}  ${v.state.padEnd(9)}  ${showTime(v.createdAt)}  ${ORIGIN_TEXT[v.origin]}`),
    ...k.rewraps.map((r) => `  rewrap ${r.workflowId}: ${r.status.toLowerCase()}${r.seconds !== undefined ? ` in ${r.seconds.toFixed(1)} s` : ''}${r.result ? `, ${r.result.rewrapped} of ${r.result.total} WDEK(s)` : ''}`),
    ...(k.retiredStillNeeded.length
      ? k.retiredStillNeeded.map((r) => `  still needed: v${r.version} by ${[r.backups.length ? `${r.backups.length} backup(s)` : '', r.wdeks ? `${r.wdeks} WDEK(s)` : '', ...r.databases].filter(Boolean).join(', ')}`)
      : ['  no retired version still needed']),
  ])];
}

export function registerReportCommand(program: Command): void {
  program
    .command('report')
    .description("the key lifecycle for an auditor: each key's versions and why each exists, rotations and rewraps, backups, failed nights, and the retired versions retained backups still need")
    .option('--key <key>', 'only this key (id or name); repeat for several (default: every key in use)', (v: string, all: string[]) => [...all, v], [])
    .option('--since <date>', 'only what happened since: 2026-11-01, an ISO time, or 30d / 12h back from now', (v) => parseSince(v))
    .option('--html <file>', "write the report as one self-contained HTML file, a timeline picture per key with tables under it ('-' for stdout)")
    .option('-q, --task-queue <name>', 'task queue of the workers that hold the KMS credentials and the catalog', TASK_QUEUE)
    .addHelpText(
      'after',
      `
Built from the KMS metadata and the backup catalog (read by a worker) and the Temporal histories
of the runs. Versions are always listed in full; --since narrows the rewraps, backups and nights.
Without --html or --json, a summary in text.
${examples('keyops report --html key-report.html', 'keyops report --key demo --since 30d --html demo.html', 'keyops report --json > report.json')}`,
    )
    .action(async (_opts: unknown, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & ReportOptions>();
      if (options.html && options.json) throw new CliError('--html and --json are two outputs: choose one', ExitCode.usage);
      const report = await withClient(options, async (client) => {
        const keyIds: string[] = [];
        for (const raw of options.key) keyIds.push(await resolveKeyId(client, raw, options.taskQueue));
        return gatherReport(client, { keyIds, since: options.since, taskQueue: options.taskQueue });
      });
      if (options.html === '-') {
        process.stdout.write(reportHtml(report));
      } else if (options.html) {
        const path = writeAtomically(options.html, reportHtml(report));
        process.stdout.write(`wrote the lifecycle report of ${report.keys.length} key(s) to ${path}\n`);
      } else {
        emit(options, report, () => summaryLines(report));
      }
    });
}
