import { defineQuery } from '@temporalio/workflow';

/** Phases of a nightly backup, as shown by the query, the `Phase` search attribute and the UI. */
export type BackupPhase = 'checking-keys' | 'awaiting-key-change' | 'awaiting-master-key' | 'awaiting-rewrap' | 'backing-up' | 'verifying' | 'recording' | 'retention' | 'done' | 'failed';

export interface BackupProgress {
  databaseId: string;
  night: string;
  phase: BackupPhase;
  keyId: string | undefined;
  /** The root-key version the backup waited for (when it had to). */
  awaitedVersion: number | undefined;
  /** When the rewrap released the wait and when the backup then started (ms since epoch). */
  releasedAt: number | undefined;
  backupStartedAt: number | undefined;
  backupId: string;
  path: string | undefined;
  bytes: number | undefined;
  keyVersion: number | undefined;
  /** Nights in a row that failed, this one included (0 after a success). */
  failedNights: number;
  /** Backups retention deleted after this one was catalogued. */
  deleted?: string[];
}

export const backupProgressQuery = defineQuery<BackupProgress>('backupProgress');

/** The id (and idempotency key) of one database's backup for one night. */
export const backupWorkflowId = (databaseId: string, night: string): string => `backup/${databaseId}/${night}`;
