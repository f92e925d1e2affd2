import { type Client, ScheduleOverlapPolicy, type ScheduleOptionsStartWorkflowAction } from '@temporalio/client';
import { restoreDrill } from '../../workflows';
import { type ScheduleChange, upsertSchedule } from './upsert-schedule';

export const DRILL_SCHEDULE_ID = 'restore-drill';

/** The Web UI's static details of a restore drill, whoever starts it. */
export function drillDetails(startedBy: string, databaseId?: string): string {
  return [
    `Started by ${startedBy}. Restores a sample of the catalogued backups${databaseId ? ` of database \`${databaseId}\`` : ''} to scratch files and checks each: the oldest retained backup of each database, one backup per retired root-key version a retained backup still needs, and the newest.`,
    'Each result is recorded in the catalog (`keyops backup list` shows it). A backup that does not restore raises the backup alert: `Outcome = "alert"`, an error log line and the alert webhook.',
    'Follow it: `keyops runs --query \'Outcome = "alert"\'`.',
  ].join('\n\n');
}

function action(taskQueue: string): ScheduleOptionsStartWorkflowAction<typeof restoreDrill> {
  return {
    type: 'startWorkflow',
    workflowType: restoreDrill,
    taskQueue,
    // The schedule appends the fire time, so every drill has its own id.
    workflowId: 'drill/all',
    args: [{}],
    staticSummary: 'Restore drill: restore a sample of the catalogued backups and check them',
    staticDetails: drillDetails(`the schedule \`${DRILL_SCHEDULE_ID}\``),
  };
}

/**
 * Creates or updates the schedule that runs restoreDrill every `everyMs` (the schedule file's
 * `drills: every: 7d`). Idempotent: the same interval again changes nothing. A drill still running
 * when the next is due is skipped; one missed while the server was down is caught up within a day.
 */
export function applyDrillSchedule(client: Client, everyMs: number, taskQueue: string, declaredIn?: string): Promise<ScheduleChange> {
  return upsertSchedule(
    client,
    DRILL_SCHEDULE_ID,
    { spec: { intervals: [{ every: everyMs }] }, action: action(taskQueue), policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: Math.min(everyMs, 86_400_000) }, declaredIn },
    (current) => current.spec.intervals?.length === 1 && current.spec.intervals[0]?.every === everyMs && (current.spec.calendars?.length ?? 0) === 0,
  );
}
