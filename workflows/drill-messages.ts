import { defineQuery } from '@temporalio/workflow';
import type { DrillReason } from '../activities/restore-drill';

/** Phases of a restore drill, as shown by the query, the `Phase` search attribute and the UI. */
export type DrillPhase = 'selecting' | 'drilling' | 'alerting' | 'done' | 'failed';

export interface DrilledBackup {
  backupId: string;
  databaseId: string;
  keyId: string;
  keyVersion: number;
  reasons: DrillReason[];
  /** skipped: deleted by retention after the sample was chosen (not a failure). */
  result: 'passed' | 'failed' | 'skipped' | 'pending';
  rows?: number;
  tables?: number;
  error?: string;
}

export interface DrillProgress {
  phase: DrillPhase;
  /** Only this database's backups, when the drill was started for one. */
  databaseId: string | undefined;
  backups: DrilledBackup[];
  passed: number;
  failed: number;
}

export const drillProgressQuery = defineQuery<DrillProgress>('drillProgress');

/** A drill's workflow id: `drill/<database or all>/<started>` (a schedule appends its fire time to `drill/all`). */
export const drillWorkflowId = (databaseId: string | undefined, startedAt: string): string => `drill/${databaseId ?? 'all'}/${startedAt}`;
