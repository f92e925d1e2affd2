import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { CryptoUnit } from '../activities/crypto-units/crypto-unit-set';
import type { Checkpoint, RecoveryActionName } from './master-key-recovery';

/** Phases of a master-key rotation, as shown by the query, the `Phase` search attribute and the UI. */
export type MasterKeyPhase =
  | 'pre-check'
  | 'loading-new-mk'
  | 'reencrypting'
  | 'promoting'
  | 'checking-key-storage'
  | 'recovering'
  | 'needs-operator'
  | 'done'
  | 'failed';

export interface MasterKeyRotationState {
  unitSetId: string;
  requestId: string;
  phase: MasterKeyPhase;
  /** The last stage known to be complete: what a recovery is decided from. */
  checkpoint: Checkpoint;
  currentVp: string | undefined;
  newVp: string | undefined;
  /** Units this rotation took out of the selection; they are added back at the end. */
  deselected: string[];
  recoveries: number;
  /** What the last recovery decision saw: the error, the registers, the rule that applied. */
  evidence: { error: string; units: CryptoUnit[]; decision: string; reason: string } | undefined;
  decisions: { action: RecoveryActionName; operator: string | undefined; note: string | undefined }[];
  keyStorage: { entries: number; readable: number } | undefined;
}

export interface OperatorDecision {
  action: RecoveryActionName;
  /** Who decided, for the record (shown in the UI and the result). */
  operator?: string;
  note?: string;
}

export const masterKeyRotationQuery = defineQuery<MasterKeyRotationState>('masterKeyRotation');

/** An operator's answer to `needs-operator`; the validator rejects forbidden actions with the reason. */
export const decideRecoveryUpdate = defineUpdate<{ accepted: RecoveryActionName }, [OperatorDecision]>('decideRecovery');

/** DESIGN.md's id: one rotation per unit set and request. */
export const masterKeyRotationWorkflowId = (unitSetId: string, requestId: string): string => `mk-rotation/${unitSetId}/${requestId}`;

/**
 * A run held by a master-key rotation (a backup, a rewrap) asks the rotation to tell it when it
 * ends, as rewrap-complete releases backups: no minute-long poll after a half-second rotation.
 */
export const awaitMasterKeyRotationSignal = defineSignal<[{ workflowId: string }]>('awaitMasterKeyRotation');

/** Sent by a rotation, however it ended, to every run that asked; the run re-checks the registers. */
export const masterKeyRotationEndedSignal = defineSignal<[{ unitSetId: string }]>('masterKeyRotationEnded');

/**
 * How a held run waits: `signal` (the rotation will tell it), `poll` (a rotation keyops does not
 * own, e.g. started outside it: re-check now and then), `ended` (already over: go on).
 */
export type MasterKeyWait = 'signal' | 'poll' | 'ended';
