import { existsSync, readFileSync } from 'node:fs';
import { parseScheduleFile } from './schedules/schedule-file';

/**
 * The time zone an operator reads times in: KEYOPS_TIME_ZONE, else the `timeZone:` of the
 * schedule file (KEYOPS_SCHEDULE_FILE, else ./schedules.yaml), else UTC. The schedule file is where
 * an operator already said when the nights are; the same zone makes `backup list` and `runs`
 * line up with it. A schedule file that does not parse gives no zone (schedule apply says why).
 */
export function operatorTimeZone(env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): string {
  if (env.KEYOPS_TIME_ZONE) return env.KEYOPS_TIME_ZONE;
  const file = env.KEYOPS_SCHEDULE_FILE ?? `${cwd}/schedules.yaml`;
  try {
    if (existsSync(file)) return parseScheduleFile(readFileSync(file, 'utf8'), file).timeZone ?? 'UTC';
  } catch {
    // not a valid schedule file: UTC
  }
  return 'UTC';
}

/** Read once per command: a `backup list` shows two times per row. */
let processZone: string | undefined;

/**
 * `2026-12-07 19:20:05 +01:00`: a time in the operator's zone with its offset, so that nothing
 * is lost for a reader elsewhere. `--json` keeps ISO 8601 UTC for programs.
 */
export function showTime(at: Date | string | number, timeZone: string = (processZone ??= operatorTimeZone())): string {
  const date = at instanceof Date ? at : new Date(at);
  if (Number.isNaN(date.getTime())) return String(at);
  let parts: Intl.DateTimeFormatPart[];
  try {
    parts = new Intl.DateTimeFormat('en-CA', {
      timeZone,
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
      hourCycle: 'h23',
      timeZoneName: 'longOffset',
    }).formatToParts(date);
  } catch {
    // An unknown zone in KEYOPS_TIME_ZONE: UTC, which every reader can convert.
    return showTime(date, 'UTC');
  }
  const part = (type: Intl.DateTimeFormatPartTypes) => parts.find((p) => p.type === type)?.value ?? '';
  const offset = part('timeZoneName').replace(/^GMT/, '') || '+00:00';
  return `${part('year')}-${part('month')}-${part('day')} ${part('hour')}:${part('minute')}:${part('second')} ${offset}`;
}
