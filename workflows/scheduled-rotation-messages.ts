import { defineQuery } from '@temporalio/workflow';

/** Phases of a scheduled root-key rotation, as shown by the query, the `Phase` search attribute and the UI. */
export type ScheduledRotationPhase = 'checking' | 'awaiting-rewrap' | 'awaiting-quota' | 'rotating' | 'done';

export interface ScheduledRotationProgress {
  keyId: string;
  phase: ScheduledRotationPhase;
  fromVersion?: number;
  toVersion?: number;
  /** false when the key reached the version another way (a policy, a manual rotation). */
  rotated: boolean;
  /** WDEKs the child rewrap moved and verified. */
  rewrapped: number;
}

export const scheduledRotationQuery = defineQuery<ScheduledRotationProgress>('scheduledRotation');
