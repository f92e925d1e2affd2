import { type Client, ScheduleAlreadyRunning, ScheduleOverlapPolicy, type ScheduleOptionsStartWorkflowAction } from '@temporalio/client';
import { rotateRootKeyOnSchedule } from '../../workflows';
import type { ScheduleChange } from './watch-root-keys-schedule';

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
 * Creates or updates the every-N-days rotation of one key. Intervals count from the Unix epoch,
 * so the day of the rotation does not drift when the file is applied again. A rotation still
 * running (waiting for a rewrap, say) when the next is due is not doubled (SKIP).
 */
export async function applyRotationSchedule(client: Client, o: RotationScheduleOptions): Promise<ScheduleChange> {
  const jitter = o.jitterMs ?? 0;
  const spec = { intervals: [{ every: o.everyDays * DAY_MS }], ...(jitter > 0 ? { jitter } : {}) };
  const policies = { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: o.catchupWindowMs ?? DAY_MS };
  const scheduleId = rotationScheduleId(o.keyId);
  try {
    await client.schedule.create({ scheduleId, spec, action: action(o), policies });
    return 'created';
  } catch (err) {
    if (!(err instanceof ScheduleAlreadyRunning)) throw err;
  }
  const handle = client.schedule.getHandle(scheduleId);
  const current = await handle.describe();
  const same =
    current.spec.intervals?.length === 1 &&
    current.spec.intervals[0]?.every === o.everyDays * DAY_MS &&
    (current.spec.calendars?.length ?? 0) === 0 &&
    (current.spec.jitter ?? 0) === jitter &&
    current.policies.overlap === policies.overlap &&
    current.policies.catchupWindow === policies.catchupWindow &&
    current.action.type === 'startWorkflow' &&
    current.action.taskQueue === o.taskQueue &&
    current.action.staticSummary === action(o).staticSummary;
  if (same) return 'unchanged';
  await handle.update((previous) => ({ ...previous, spec, action: action(o), policies }));
  return 'updated';
}
