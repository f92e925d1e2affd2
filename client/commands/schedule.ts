import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { type Client, ScheduleNotFoundError } from '@temporalio/client';
import type { Command } from 'commander';
import { TASK_QUEUE } from '../../workflows/task-queue';
import { CliError, ExitCode } from '../cli-error';
import type { GlobalOptions } from '../global-options';
import { emit } from '../output';
import { withClient } from '../run-on-worker';
import { applyBackupSchedule, backupScheduleId } from '../schedules/nightly-backup-schedule';
import type { KeyRef } from '../../activities';
import { resolveKeyRefs } from '../key-ref';
import { applyRotationSchedule, rotationScheduleId } from '../schedules/root-key-rotation-schedule';
import { ScheduleFileError, parseDuration, parseScheduleFile, scheduleFileProblem } from '../schedules/schedule-file';
import { type ScheduleChange, declaredIn } from '../schedules/upsert-schedule';
import { WATCH_SCHEDULE_ID, applyWatchSchedule } from '../schedules/watch-root-keys-schedule';
import { DRILL_SCHEDULE_ID, applyDrillSchedule } from '../schedules/restore-drill-schedule';
import { examples } from '../help-examples';
import { showTime } from '../operator-time';

/** The schedules a schedule file declares, by their id. */
const isFileKind = (scheduleId: string): boolean =>
  scheduleId === WATCH_SCHEDULE_ID || scheduleId === DRILL_SCHEDULE_ID || scheduleId.startsWith(backupScheduleId('')) || scheduleId.startsWith(rotationScheduleId(''));

const defaultTimeZone = () => process.env.KEYOPS_TIME_ZONE ?? Intl.DateTimeFormat().resolvedOptions().timeZone;

/** Runs `fn` on an existing schedule; an unknown id is the user's mistake (exit 2). */
async function onSchedule<T>(client: Client, scheduleId: string, fn: (handle: ReturnType<Client['schedule']['getHandle']>) => Promise<T>): Promise<T> {
  try {
    return await fn(client.schedule.getHandle(scheduleId));
  } catch (err) {
    if (err instanceof ScheduleNotFoundError) throw new CliError(`no schedule ${scheduleId}`, ExitCode.usage, 'keyops schedule list shows them');
    throw err;
  }
}

function parseDate(what: string, raw: string): Date {
  const date = new Date(raw);
  if (Number.isNaN(date.getTime())) throw new CliError(`${what} "${raw}" is not a date-time such as 2026-12-01T00:00:00Z`, ExitCode.usage);
  return date;
}

export function registerScheduleCommands(program: Command): void {
  const schedule = program.command('schedule').description('declare, list and steer the Temporal schedules that start keyops workflows');

  schedule
    .command('apply')
    .description('create or update the schedules a YAML file declares (idempotent: applying it again changes nothing)')
    .requiredOption('-f, --file <path>', 'the schedule file')
    .option('-q, --task-queue <name>', 'task queue of the keyops workers', TASK_QUEUE)
    .option('--prune', 'also delete the schedules an earlier apply of this file created that it no longer declares')
    .addHelpText(
      'after',
      `
File:
  timeZone: Europe/Berlin      # default for every entry (else KEYOPS_TIME_ZONE, else this machine's)
  backups:
    - database: payroll
      at: "02:00"              # quoted: YAML reads 02:00 as a number
      overlap: skip            # skip | buffer-one | allow-all   (default skip)
      catchupWindow: 6h        # missed nights caught up within  (default 6h)
      jitter: 10m              # random delay per night          (default 0s)
  rotations:
    - key: payroll-root        # key id, or name of a key keyops protects WDEKs with
      every: 90d               # whole days; the rotation rewraps every WDEK
      catchupWindow: 1d        # a missed rotation caught up within (default 1d)
      jitter: 1h               # random delay                    (default 0s)
  watch:
    every: 1h                  # the rotation watcher

A mistake is reported as file:line:column: field: problem, and nothing is applied.`,
    )
    .addHelpText('after', examples('keyops schedule apply -f schedules.yaml', 'keyops schedule apply -f schedules.yaml --prune'))
    .action(async (_opts: unknown, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & { file: string; taskQueue: string; prune?: boolean }>();
      let text: string;
      try {
        text = readFileSync(options.file, 'utf8');
      } catch (err) {
        throw new CliError(`cannot read ${options.file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, ExitCode.usage);
      }
      let file;
      try {
        file = parseScheduleFile(text, options.file);
      } catch (err) {
        if (err instanceof ScheduleFileError) throw new CliError(`${options.file} is not valid; nothing was applied:\n  ${err.problems.join('\n  ')}`, ExitCode.usage);
        throw err;
      }
      // What marks the schedules this file declares, wherever it is applied from.
      const fileId = resolve(options.file);
      const applied = await withClient(options, async (client) => {
        // Every key is looked up before anything is applied: a wrong name changes nothing.
        const keys = file.rotations.length === 0 ? [] : await resolveKeyRefs(client, file.rotations.map((r) => r.key), options.taskQueue);
        const problems = keys.flatMap((k, i) => (k.problem ? [scheduleFileProblem(text, options.file, ['rotations', i, 'key'], k.problem)] : []));
        keys.forEach((k, i) => {
          const first = keys.findIndex((other) => other.keyId === k.keyId);
          if (k.keyId !== undefined && first !== i) problems.push(scheduleFileProblem(text, options.file, ['rotations', i, 'key'], `names key ${k.keyId} again (as rotations[${first}] does)`));
        });
        if (problems.length > 0) throw new CliError(`${options.file} is not valid; nothing was applied:\n  ${problems.join('\n  ')}`, ExitCode.usage);
        const results: { scheduleId: string; change: ScheduleChange | 'deleted' | 'not in the file'; what: string }[] = [];
        for (const b of file.backups) {
          const [hour, minute] = b.at.split(':').map(Number) as [number, number];
          const timeZone = b.timeZone ?? file.timeZone ?? defaultTimeZone();
          const change = await applyBackupSchedule(client, {
            databaseId: b.database,
            hour,
            minute,
            timeZone,
            taskQueue: options.taskQueue,
            overlap: b.overlap,
            catchupWindowMs: parseDuration(b.catchupWindow)!,
            jitterMs: parseDuration(b.jitter)!,
            declaredIn: fileId,
          });
          results.push({ scheduleId: backupScheduleId(b.database), change, what: `nightlyBackup of ${b.database} at ${b.at} ${timeZone}` });
        }
        for (const [i, r] of file.rotations.entries()) {
          // Every key resolved: problems stopped the apply above.
          const key = keys[i] as Extract<KeyRef, { keyId: string }>;
          const change = await applyRotationSchedule(client, {
            keyId: key.keyId,
            keyName: key.name,
            everyDays: Number(r.every.slice(0, -1)),
            taskQueue: options.taskQueue,
            catchupWindowMs: parseDuration(r.catchupWindow)!,
            jitterMs: parseDuration(r.jitter)!,
            declaredIn: fileId,
          });
          results.push({ scheduleId: rotationScheduleId(key.keyId), change, what: `rotation of key ${r.key} every ${r.every}` });
        }
        if (file.watch) {
          const change = await applyWatchSchedule(client, parseDuration(file.watch.every)!, options.taskQueue, fileId);
          results.push({ scheduleId: WATCH_SCHEDULE_ID, change, what: `watchRootKeys every ${file.watch.every}` });
        }
        if (file.drills) {
          const change = await applyDrillSchedule(client, parseDuration(file.drills.every)!, options.taskQueue, fileId);
          results.push({ scheduleId: DRILL_SCHEDULE_ID, change, what: `restoreDrill every ${file.drills.every}` });
        }
        // Schedules this file declared before but no longer does: an operator who removed an entry
        // expects it gone, yet a wrong file path must not wipe schedules; deleting is asked for.
        const declared = new Set(results.map((r) => r.scheduleId));
        for await (const found of client.schedule.list()) {
          if (declared.has(found.scheduleId) || !isFileKind(found.scheduleId)) continue;
          const handle = client.schedule.getHandle(found.scheduleId);
          try {
            if (declaredIn(await handle.describe()) !== fileId) continue;
            if (options.prune) await handle.delete();
          } catch (err) {
            // Deleted by someone else between the listing and now: nothing left to do.
            if (err instanceof ScheduleNotFoundError) continue;
            throw err;
          }
          results.push({ scheduleId: found.scheduleId, change: options.prune ? 'deleted' : 'not in the file', what: options.prune ? 'pruned' : 'kept; --prune deletes it' });
        }
        return results;
      });
      emit(options, applied, () => (applied.length === 0 ? ['the file declares no schedule'] : applied.map((r) => `${r.scheduleId} ${r.change}: ${r.what}`)));
    });

  schedule
    .command('list')
    .description('every schedule: id, paused or not, workflow, next run')
    .addHelpText('after', examples('keyops schedule list', 'keyops schedule list --json'))
    .action(async (_opts: unknown, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions>();
      const rows = await withClient(options, async (client) => {
        const found = [];
        for await (const s of client.schedule.list()) {
          found.push({
            scheduleId: s.scheduleId,
            paused: s.state.paused,
            note: s.state.note ?? null,
            workflowType: s.action?.type === 'startWorkflow' ? s.action.workflowType : null,
            nextActionTimes: (s.info.nextActionTimes ?? []).slice(0, 1).map((d) => d.toISOString()),
          });
        }
        return found.sort((a, b) => a.scheduleId.localeCompare(b.scheduleId));
      });
      emit(options, rows, () =>
        rows.length === 0
          ? ['no schedules']
          : rows.map((r) => `${r.scheduleId}  ${r.paused ? 'paused' : 'active'}  ${r.workflowType ?? '?'}  next ${r.nextActionTimes[0] ? showTime(r.nextActionTimes[0]) : '-'}${r.note ? `  (${r.note})` : ''}`),
      );
    });

  for (const [verb, description] of [
    ['pause', 'stop starting runs until unpaused'],
    ['unpause', 'start runs again'],
  ] as const) {
    schedule
      .command(`${verb} <scheduleId>`)
      .description(description)
      .option('--note <text>', 'why, shown in keyops schedule list and the Web UI')
      .addHelpText('after', examples(`keyops schedule ${verb} nightly-backup/demo --note "${verb === 'pause' ? 'database migration tonight' : 'migration done'}"`))
      .action(async (scheduleId: string, _opts: unknown, cmd: Command) => {
        const options = cmd.optsWithGlobals<GlobalOptions & { note?: string }>();
        await withClient(options, (client) => onSchedule(client, scheduleId, (h) => (verb === 'pause' ? h.pause(options.note) : h.unpause(options.note))));
        emit(options, { scheduleId, paused: verb === 'pause' }, () => [`${scheduleId} ${verb}d`]);
      });
  }

  schedule
    .command('trigger <scheduleId>')
    .description('start one run now, as if it were due')
    .addHelpText('after', examples('keyops schedule trigger nightly-backup/demo'))
    .action(async (scheduleId: string, _opts: unknown, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions>();
      await withClient(options, (client) => onSchedule(client, scheduleId, (h) => h.trigger()));
      emit(options, { scheduleId, triggered: true }, () => [`${scheduleId} triggered`]);
    });

  schedule
    .command('backfill <scheduleId>')
    .description('start the runs that were due between two times (e.g. nights missed during an outage)')
    .requiredOption('--from <time>', 'start, e.g. 2026-12-01T00:00:00Z')
    .requiredOption('--to <time>', 'end, e.g. 2026-12-03T00:00:00Z')
    .addHelpText('after', examples('keyops schedule backfill nightly-backup/demo --from 2026-12-01T00:00:00Z --to 2026-12-03T00:00:00Z'))
    .action(async (scheduleId: string, _opts: unknown, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & { from: string; to: string }>();
      const start = parseDate('--from', options.from);
      const end = parseDate('--to', options.to);
      if (end <= start) throw new CliError(`--to ${options.to} is not after --from ${options.from}`, ExitCode.usage);
      await withClient(options, (client) => onSchedule(client, scheduleId, (h) => h.backfill({ start, end })));
      emit(options, { scheduleId, from: start.toISOString(), to: end.toISOString() }, () => [`${scheduleId} backfilled from ${start.toISOString()} to ${end.toISOString()}`]);
    });

  schedule
    .command('delete <scheduleId>')
    .description('delete a schedule (runs it started are not affected)')
    .addHelpText('after', examples('keyops schedule delete nightly-backup/demo'))
    .action(async (scheduleId: string, _opts: unknown, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions>();
      await withClient(options, (client) => onSchedule(client, scheduleId, (h) => h.delete()));
      emit(options, { scheduleId, deleted: true }, () => [`${scheduleId} deleted`]);
    });
}
