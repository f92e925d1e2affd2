/**
 * The declarative schedule file of `keyops schedule apply -f`: what runs when, validated with
 * zod, every mistake reported with its line and field.
 *
 *   timeZone: Europe/Berlin          # default for every entry (else KEYOPS_TIME_ZONE / this machine's)
 *   backups:
 *     - database: payroll
 *       at: "02:00"
 *       timeZone: UTC                # optional, per entry
 *       overlap: skip                # skip | buffer-one | allow-all (default skip)
 *       catchupWindow: 6h            # default 6h
 *       jitter: 10m                  # default 0s
 *   rotations:
 *     - key: payroll-root            # a key id, or the name of a key keyops protects WDEKs with
 *       every: 90d                   # whole days
 *       catchupWindow: 1d            # default 1d
 *       jitter: 1h                   # default 0s
 *   watch:
 *     every: 1h                      # the rotation watcher
 *   drills:
 *     every: 7d                      # restore drills (restoreDrill): whole days or hours
 */
import { LineCounter, isNode, parseDocument } from 'yaml';
import { z } from 'zod';

const DURATION = /^(\d+)(s|m|h|d)$/;
const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** `90s`, `10m`, `6h`, `1d` in milliseconds. */
export function parseDuration(raw: string): number | undefined {
  const m = DURATION.exec(raw.trim());
  return m ? Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS] : undefined;
}

const duration = (what: string) =>
  z.string().refine((v) => parseDuration(v) !== undefined, `${what} must be a duration such as 90s, 10m, 6h or 1d`);

const timeZone = z.string().refine((tz) => {
  try {
    new Intl.DateTimeFormat('en', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}, 'must be an IANA time zone such as Europe/Berlin or UTC');

const backupEntry = z.strictObject({
  database: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'must be a database id: 1 to 63 characters a-z, 0-9, "_" or "-"'),
  at: z.string().regex(/^([01]\d|2[0-3]):[0-5]\d$/, 'must be a time of day such as "02:00" (quote it: YAML reads 02:00 as a number)'),
  timeZone: timeZone.optional(),
  overlap: z.enum(['skip', 'buffer-one', 'allow-all']).default('skip'),
  catchupWindow: duration('catchupWindow').default('6h'),
  jitter: duration('jitter').default('0s'),
});

const KEY_REF = 'must be a key id (a UUID) or the name of a key keyops protects WDEKs with';

const rotationEntry = z.strictObject({
  key: z.string({ error: KEY_REF }).trim().min(1, KEY_REF),
  every: z.string().regex(/^[1-9]\d*d$/, 'must be a whole number of days such as 30d or 90d'),
  catchupWindow: duration('catchupWindow').default('1d'),
  jitter: duration('jitter').default('0s'),
});

export const scheduleFileSchema = z.strictObject({
  timeZone: timeZone.optional(),
  backups: z.array(backupEntry).default([]),
  rotations: z.array(rotationEntry).default([]),
  watch: z.strictObject({ every: duration('every') }).optional(),
  drills: z.strictObject({ every: z.string().regex(/^[1-9]\d*(d|h)$/, 'must be a whole number of days or hours such as 7d or 12h') }).optional(),
});

export type ScheduleFile = z.infer<typeof scheduleFileSchema>;
export type BackupEntry = ScheduleFile['backups'][number];
export type RotationEntry = ScheduleFile['rotations'][number];

export class ScheduleFileError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
    this.name = 'ScheduleFileError';
  }
}

type Path = (string | number)[];

/** Reads the YAML and answers where a path of it is: the deepest node of the path that exists. */
function openDocument(text: string, fileName: string) {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false });
  const at = (offset: number) => {
    const { line, col } = lineCounter.linePos(offset);
    return `${fileName}:${line}:${col}`;
  };
  const where = (fullPath: Path): string => {
    // An unknown or missing field points at the object that holds (or lacks) it.
    let path = fullPath;
    let node: unknown = doc.getIn(path, true);
    while (!isNode(node) && path.length > 0) {
      path = path.slice(0, -1);
      node = path.length > 0 ? doc.getIn(path, true) : doc.contents;
    }
    return isNode(node) && node.range ? at(node.range[0]) : fileName;
  };
  return { doc, at, where };
}

const fieldName = (path: Path) => path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${p}`)).join('').replace(/^\./, '');

/** `file:line:col: field: problem` for a problem found after parsing (an unknown key, say). */
export function scheduleFileProblem(text: string, fileName: string, path: Path, problem: string): string {
  return `${openDocument(text, fileName).where(path)}: ${fieldName(path)}: ${problem}`;
}

/** Parses and validates the file's text; throws ScheduleFileError with `file:line:col: field: problem` lines. */
export function parseScheduleFile(text: string, fileName: string): ScheduleFile {
  const { doc, at, where } = openDocument(text, fileName);
  if (doc.errors.length > 0) throw new ScheduleFileError(doc.errors.map((e) => `${at(e.pos[0])}: ${e.message.split('\n')[0]}`));
  const parsed = scheduleFileSchema.safeParse(doc.toJS() ?? {});
  if (parsed.success) {
    const problems = [
      ...twice(parsed.data.backups.map((b) => b.database)).map((i) => `${where(['backups', i])}: backups[${i}]: database ${parsed.data.backups[i]!.database} is listed twice`),
      ...twice(parsed.data.rotations.map((r) => r.key)).map((i) => `${where(['rotations', i])}: rotations[${i}]: key ${parsed.data.rotations[i]!.key} is listed twice`),
    ];
    if (problems.length > 0) throw new ScheduleFileError(problems);
    return parsed.data;
  }
  throw new ScheduleFileError(
    parsed.error.issues.map((issue) => {
      const path = issue.path.filter((p): p is string | number => typeof p !== 'symbol');
      const extra = issue.code === 'unrecognized_keys' ? ` (${issue.keys.join(', ')})` : '';
      return `${where(path)}: ${fieldName(path) || '(top level)'}: ${issue.message}${extra}`;
    }),
  );
}

/** Indexes of entries that repeat an earlier one. */
function twice(values: string[]): number[] {
  return values.flatMap((v, i) => (values.indexOf(v) !== i ? [i] : []));
}
