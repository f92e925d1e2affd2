import { type Client, ScheduleOverlapPolicy, type ScheduleOptionsStartWorkflowAction } from '@temporalio/client';
import { watchRootKeys } from '../../workflows';
import { type ScheduleChange, upsertSchedule } from './upsert-schedule';

export const WATCH_SCHEDULE_ID = 'watch-root-keys';

export const WATCH_DETAILS = [
  'Compares the current version of every root key keyops protects WDEKs with against the version its WDEKs were rewrapped to.',
  'For each key behind, it starts the rewrap `rewrap/<keyId>/v<version>` without rotating again; waiting backups are released when it finishes.',
  'A KMS rotation policy fires at an unpredictable moment within a 24-hour window, so rotations are detected, not predicted.',
].join('\n\n');

function action(taskQueue: string): ScheduleOptionsStartWorkflowAction<typeof watchRootKeys> {
  return {
    type: 'startWorkflow',
    workflowType: watchRootKeys,
    taskQueue,
    // The schedule appends the fire time, so every watch has its own id.
    workflowId: 'watch-root-keys',
    staticSummary: 'Detect root-key rotations done by the KMS (policy or by hand) and start their rewrap',
    staticDetails: WATCH_DETAILS,
  };
}

/**
 * Creates or updates the schedule that runs watchRootKeys every `everyMs`. Idempotent: applying
 * the same interval again changes nothing. A watch still running when the next is due is
 * skipped (SKIP), and a watch missed while the server was down is caught up within one interval.
 */
export function applyWatchSchedule(client: Client, everyMs: number, taskQueue: string, declaredIn?: string): Promise<ScheduleChange> {
  return upsertSchedule(
    client,
    WATCH_SCHEDULE_ID,
    { spec: { intervals: [{ every: everyMs }] }, action: action(taskQueue), policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: everyMs }, declaredIn },
    (current) => current.spec.intervals?.length === 1 && current.spec.intervals[0]?.every === everyMs && (current.spec.calendars?.length ?? 0) === 0,
  );
}
