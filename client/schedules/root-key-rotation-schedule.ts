import { createHash } from 'node:crypto';
import { type Client, ScheduleOverlapPolicy, type ScheduleOptionsStartWorkflowAction } from '@temporalio/client';
import { rotateRootKeyOnSchedule } from '../../workflows';
import { type ScheduleChange, upsertSchedule } from './upsert-schedule';

export const rotationScheduleId = (keyId: string): string => `rotate-key/${keyId}`;

const DAY_MS = 86_400_000;

export interface RotationScheduleOptions {
  keyId: string;
  /** The key's name, for the Web UI (not a secret). */
  keyName: string;
  everyDays: number;
  taskQueue: string;
  /** A rotation missed while the server was down is caught up within this (default 1 day). */
  catchupWindowMs?: number;
  /** Each rotation starts up to this much later, at random (default 0). */
  jitterMs?: number;
  /** The schedule file that declares it, if any. */
  declaredIn?: string;
}

function action(o: RotationScheduleOptions): ScheduleOptionsStartWorkflowAction<typeof rotateRootKeyOnSchedule> {
  return {
    type: 'startWorkflow',
    workflowType: rotateRootKeyOnSchedule,
    taskQueue: o.taskQueue,
    // The schedule appends the fire time to the id.
    workflowId: rotationScheduleId(o.keyId),
    args: [{ keyId: o.keyId }],
    staticSummary: `Scheduled rotation of root key "${o.keyName}" (${o.keyId}), every ${o.everyDays} day(s)`,
    staticDetails: [
      `Rotates root key \`${o.keyId}\` ("${o.keyName}") to its next version and rewraps every WDEK in the child run \`rewrap/${o.keyId}/v<next>\`.`,
      'A rewrap still pending from a rotation the KMS did by itself is finished first; a rotation done by hand within the hour is waited out.',
      `Pause it with \`keyops schedule pause ${rotationScheduleId(o.keyId)} --note "why"\`.`,
    ].join('\n\n'),
  };
}

/**
 * Where in each N-day interval this key rotates: derived from the key id, so keys that share an
 * interval do not all rotate (and rewrap) at the same instant, and applying the file again does
 * not move it. Whole minutes.
 */
export function rotationOffsetMs(keyId: string, everyDays: number): number {
  const minutes = (everyDays * DAY_MS) / 60_000;
  return (createHash('sha256').update(keyId).digest().readUIntBE(0, 6) % minutes) * 60_000;
}

/**
 * Creates or updates the every-N-days rotation of one key. Intervals count from the Unix epoch
 * plus the key's offset, so the first rotation comes within N days of applying, and later ones
 * every N days after it. A rotation still running (waiting for a rewrap, say) when the next is
 * due is not doubled (SKIP).
 */
export function applyRotationSchedule(client: Client, o: RotationScheduleOptions): Promise<ScheduleChange> {
  const jitter = o.jitterMs ?? 0;
  const interval = { every: o.everyDays * DAY_MS, offset: rotationOffsetMs(o.keyId, o.everyDays) };
  const spec = { intervals: [interval], ...(jitter > 0 ? { jitter } : {}) };
  const policies = { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: o.catchupWindowMs ?? DAY_MS };
  return upsertSchedule(
    client,
    rotationScheduleId(o.keyId),
    { spec, action: action(o), policies, declaredIn: o.declaredIn },
    (current) =>
      current.spec.intervals?.length === 1 &&
      current.spec.intervals[0]?.every === interval.every &&
      (current.spec.intervals[0]?.offset ?? 0) === interval.offset &&
      (current.spec.calendars?.length ?? 0) === 0,
  );
}
