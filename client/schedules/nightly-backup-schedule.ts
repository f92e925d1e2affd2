import { type Client, ScheduleAlreadyRunning, ScheduleOverlapPolicy, type ScheduleOptionsStartWorkflowAction } from '@temporalio/client';
import { nightlyBackup } from '../../workflows';
import type { ScheduleChange } from './watch-root-keys-schedule';

export const backupScheduleId = (databaseId: string): string => `nightly-backup/${databaseId}`;

/** The Web UI's static details of a backup run, whoever starts it. */
export function backupDetails(databaseId: string, startedBy: string): string {
  return [
    `Started by ${startedBy}. Backs up database \`${databaseId}\` encrypted under its backup key, test-restores it and records it in the catalog.`,
    'It waits (phase `awaiting-rewrap`, `awaiting-master-key` or `awaiting-key-change`) while a key rotation is under way, instead of failing: the current details say which.',
    `Follow it: \`keyops runs --query 'DatabaseId = "${databaseId}"'\`; list backups: \`keyops backup list ${databaseId}\`.`,
  ].join('\n\n');
}

export interface BackupScheduleOptions {
  databaseId: string;
  hour: number;
  minute: number;
  timeZone: string;
  taskQueue: string;
  /** What happens when a night is still running as the next is due (default skip). */
  overlap?: 'skip' | 'buffer-one' | 'allow-all';
  /** Nights missed while the server was down are caught up within this (default 6 h). */
  catchupWindowMs?: number;
  /** Each night starts up to this much later, at random (default 0). */
  jitterMs?: number;
}

const OVERLAP = { skip: ScheduleOverlapPolicy.SKIP, 'buffer-one': ScheduleOverlapPolicy.BUFFER_ONE, 'allow-all': ScheduleOverlapPolicy.ALLOW_ALL } as const;

function action(o: BackupScheduleOptions): ScheduleOptionsStartWorkflowAction<typeof nightlyBackup> {
  return {
    type: 'startWorkflow',
    workflowType: nightlyBackup,
    taskQueue: o.taskQueue,
    // The schedule appends the fire time to the id.
    workflowId: `backup/${o.databaseId}`,
    args: [{ databaseId: o.databaseId }],
    staticSummary: `Nightly backup of database ${o.databaseId}`,
    staticDetails: backupDetails(o.databaseId, `the schedule \`${backupScheduleId(o.databaseId)}\``),
  };
}

/**
 * Creates or updates the nightly schedule of one database. A night still running (waiting for
 * a rewrap, say) when the next is due is not doubled (SKIP); a night missed while the server
 * was down is caught up within 6 hours.
 */
export async function applyBackupSchedule(client: Client, o: BackupScheduleOptions): Promise<ScheduleChange> {
  const jitter = o.jitterMs ?? 0;
  const spec = { calendars: [{ hour: o.hour, minute: o.minute }], timezone: o.timeZone, ...(jitter > 0 ? { jitter } : {}) };
  const policies = { overlap: OVERLAP[o.overlap ?? 'skip'], catchupWindow: o.catchupWindowMs ?? 6 * 3_600_000 };
  const scheduleId = backupScheduleId(o.databaseId);
  try {
    await client.schedule.create({ scheduleId, spec, action: action(o), policies });
    return 'created';
  } catch (err) {
    if (!(err instanceof ScheduleAlreadyRunning)) throw err;
  }
  const handle = client.schedule.getHandle(scheduleId);
  const current = await handle.describe();
  const calendar = current.spec.calendars?.[0];
  const same =
    current.spec.calendars?.length === 1 &&
    JSON.stringify(calendar?.hour) === JSON.stringify([{ start: o.hour, end: o.hour, step: 1 }]) &&
    JSON.stringify(calendar?.minute) === JSON.stringify([{ start: o.minute, end: o.minute, step: 1 }]) &&
    current.spec.timezone === o.timeZone &&
    (current.spec.jitter ?? 0) === jitter &&
    current.policies.overlap === policies.overlap &&
    current.policies.catchupWindow === policies.catchupWindow &&
    current.action.type === 'startWorkflow' &&
    current.action.taskQueue === o.taskQueue &&
    current.action.staticDetails === action(o).staticDetails;
  if (same) return 'unchanged';
  await handle.update((previous) => ({ ...previous, spec, action: action(o), policies }));
  return 'updated';
}
