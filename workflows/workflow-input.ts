/**
 * Every workflow input, signal and update payload is checked here, where it is used: a run
 * started from the Web UI, the `temporal` CLI or a schedule never passed the keyops CLI's checks.
 * A bad input fails the run at once, non-retryable, with INVALID_INPUT naming the field; a bad
 * signal is dropped (its sender cannot be failed) and logged, so it can never wedge a workflow.
 */
import { ApplicationFailure, log, patched } from '@temporalio/workflow';
import { z } from 'zod';

const DAY_MS = 86_400_000;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

export const databaseIdSchema = z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, '1 to 63 characters a-z, 0-9, "_" or "-", starting with a letter or digit');
export const keyIdSchema = z
  .string()
  .min(1)
  .max(256)
  .refine((v) => !CONTROL.test(v), 'no control characters');
export const positiveIntSchema = z.number('must be a number').int('must be a positive whole number').positive('must be a positive whole number');
export const versionSchema = positiveIntSchema;
/** Durations in milliseconds: whole, positive, at most a year. */
export const durationMsSchema = positiveIntSchema.max(366 * DAY_MS, 'must be at most a year (in milliseconds)');
/** A path the worker resolves: absolute, so it never depends on the worker's working directory. */
export const absolutePathSchema = z
  .string()
  .min(2)
  .max(4096)
  .refine((v) => v.startsWith('/'), 'must be an absolute path (the worker resolves it)')
  .refine((v) => !v.includes('\u0000'), 'no NUL characters');
/** A calendar date YYYY-MM-DD that exists. */
export const dateSchema = z
  .string()
  .regex(/^\d{4}-\d{2}-\d{2}$/, 'a date such as 2026-12-01')
  // A month or day out of range (2026-13-45) is an Invalid Date, whose toISOString() throws: a
  // throw here would fail the workflow task, retried forever, instead of the run with INVALID_INPUT.
  .refine((v) => {
    const date = new Date(`${v}T00:00:00Z`);
    return !Number.isNaN(date.getTime()) && date.toISOString().startsWith(v);
  }, 'not a calendar date');
/** Free text an operator types (names, notes): bounded, printable. */
export const labelSchema = z
  .string()
  .max(1000)
  .refine((v) => !CONTROL.test(v.replace(/[\n\t]/g, ' ')), 'no control characters');

/**
 * A night no later than tomorrow (UTC) at the moment the run started: a night far in the future
 * would sort after every real night and hide failed ones from the two-failed-nights alert.
 */
export function nightSchema(startedAtMs: number) {
  const tomorrow = new Date(startedAtMs + DAY_MS).toISOString().slice(0, 10);
  return dateSchema.refine((v) => v <= tomorrow, `later than tomorrow (${tomorrow})`);
}

/**
 * Runs started before these checks existed are not held to them on replay: one of them may be
 * in flight with an input they refuse (a night ahead of its start, say). New runs record the
 * marker, and from then on every check applies.
 */
const PATCH = 'validate-workflow-input';
const checking = (): boolean => patched(PATCH);

function describe(error: z.ZodError): string {
  const issue = error.issues[0];
  if (!issue) return 'invalid';
  const field = issue.path.length ? issue.path.join('.') : 'input';
  return `${field}: ${issue.message}`;
}

/** The checked input, or a non-retryable INVALID_INPUT naming the workflow and the field. */
export function parseInput<S extends z.ZodType>(workflow: string, schema: S, input: unknown): z.infer<S> {
  if (!checking()) return input as z.infer<S>;
  const parsed = schema.safeParse(input);
  if (parsed.success) return parsed.data;
  throw ApplicationFailure.create({ type: 'INVALID_INPUT', nonRetryable: true, message: `${workflow} input ${describe(parsed.error)}` });
}

/** The checked signal payload, or undefined (logged) when it is malformed. */
export function parseSignal<S extends z.ZodType>(signal: string, schema: S, payload: unknown): z.infer<S> | undefined {
  if (!checking()) return payload as z.infer<S>;
  const parsed = schema.safeParse(payload);
  if (parsed.success) return parsed.data;
  log.warn(`ignored a malformed ${signal} signal`, { problem: describe(parsed.error) });
  return undefined;
}

/** For update validators: throws (the update is rejected) naming the field. */
export function checkUpdate<S extends z.ZodType>(update: string, schema: S, payload: unknown): z.infer<S> {
  // Validators run outside the history (a rejected update leaves none): no marker needed.
  const parsed = schema.safeParse(payload);
  if (parsed.success) return parsed.data;
  throw new Error(`${update}: ${describe(parsed.error)}`);
}
