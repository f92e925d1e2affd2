import { type Client, ScheduleOverlapPolicy, type ScheduleOptionsStartWorkflowAction } from '@temporalio/client';
import { nightlyBackup } from '../../workflows';
import { type ScheduleChange, upsertSchedule } from './upsert-schedule';

export const backupScheduleId = (databaseId: string): string => `nightly-backup/${databaseId}`;

/** The Web UI's static details of a backup run, whoever starts it. */
export function backupDetails(databaseId: string, startedBy: string): string {
  return [
    `Started by ${startedBy}. Backs up database \`${databaseId}\` encrypted under its backup key, test-restores it and records it in the catalog.`,
    'It waits (phase `awaiting-rewrap`, `awaiting-master-key` or `awaiting-key-change`) while a key rotation is under way, instead of failing: the current details say which.',
    `Follow it: \`keyops runs --query 'DatabaseId = "${databaseId}"'\`; list backups: \`keyops backup list --database ${databaseId}\`.`,
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
  /** The schedule file that declares it, if any. */
  declaredIn?: string;
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
export function applyBackupSchedule(client: Client, o: BackupScheduleOptions): Promise<ScheduleChange> {
  const jitter = o.jitterMs ?? 0;
  const spec = { calendars: [{ hour: o.hour, minute: o.minute }], timezone: o.timeZone, ...(jitter > 0 ? { jitter } : {}) };
  const policies = { overlap: OVERLAP[o.overlap ?? 'skip'], catchupWindow: o.catchupWindowMs ?? 6 * 3_600_000 };
  return upsertSchedule(client, backupScheduleId(o.databaseId), { spec, action: action(o), policies, declaredIn: o.declaredIn }, (current) => {
    const calendar = current.spec.calendars?.[0];
    return (
      current.spec.calendars?.length === 1 &&
      (current.spec.intervals?.length ?? 0) === 0 &&
      JSON.stringify(calendar?.hour) === JSON.stringify([{ start: o.hour, end: o.hour, step: 1 }]) &&
      JSON.stringify(calendar?.minute) === JSON.stringify([{ start: o.minute, end: o.minute, step: 1 }]) &&
      current.spec.timezone === o.timeZone
    );
  });
}
