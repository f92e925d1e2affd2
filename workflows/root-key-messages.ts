import { defineQuery, defineSignal } from '@temporalio/workflow';

/** Phases of a root-key rewrap, as shown by the query, the `Phase` search attribute and the UI. */
export type RewrapPhase = 'rotating' | 'rewrapping' | 'verifying' | 'following' | 'recording' | 'announcing' | 'done';

export interface RewrapProgress {
  keyId: string;
  phase: RewrapPhase;
  /** The root-key version every WDEK ends on. */
  targetVersion: number;
  /** Whether this run rotated the key (false when the KMS had rotated it, e.g. by policy). */
  rotated: boolean;
  total: number;
  rewrapped: number;
  verified: number;
  /** While chunks wait for a master-key rotation under the KMS to end: why (its registers' state). */
  heldBy?: string;
  /** When the KMS throttles: calls it refused (all retried), time waited, the concurrency adapted to. */
  kms?: KmsThrottle;
  /** An engine's own key: the engines that re-encrypted their pages for the version, once they have. */
  engines?: { databaseId: string; spaces: number; oldestVersionNeeded: number | undefined }[];
}

export interface KmsThrottle {
  concurrency: number;
  throttled: number;
  waitedMs: number;
}

/** From a chunk to its run, while the KMS throttles it: the run shows it in its details. */
export const rewrapKmsThrottleSignal = defineSignal<[KmsThrottle]>('rewrapKmsThrottle');

/** Key Protect allows one manual rotation per key per hour (reference 001). */
export const KMS_ROTATION_SPACING_MS = 3_600_000;

export const rewrapProgressQuery = defineQuery<RewrapProgress>('rewrapProgress');

/** "Rewrap complete (key, version)": every WDEK of `keyId` is on `version` or later. */
export interface RewrapComplete {
  keyId: string;
  version: number;
}
export const rewrapCompleteSignal = defineSignal<[RewrapComplete]>('rewrapComplete');

/** A workflow asks the key's entity to signal it `rewrapComplete` once `minVersion` is reached. */
export interface RewrapWaiter {
  workflowId: string;
  minVersion: number;
}
export const awaitRewrapSignal = defineSignal<[RewrapWaiter]>('awaitRewrap');

export interface KeyEntityState {
  keyId: string;
  /** The highest version every WDEK of the key was rewrapped to, as announced. */
  rewrappedVersion: number;
  waiters: RewrapWaiter[];
}
export const keyStateQuery = defineQuery<KeyEntityState>('keyState');

/** The id of a key's long-lived entity workflow. */
export const keyEntityWorkflowId = (keyId: string): string => `key/${keyId}`;
/** The id (and idempotency key) of the run that brings every WDEK of a key to a version. */
export const rewrapWorkflowId = (keyId: string, version: number): string => `rewrap/${keyId}/v${version}`;

/**
 * A database engine's own key (engine-key.ts) is the key `engine:<databaseId>`: the engines
 * re-encrypt their pages under it themselves, and its rewrap run follows them instead.
 * The instance name is reserved in keyops.yaml.
 */
export const ENGINE_KEY_INSTANCE = 'engine';
export const engineKeyId = (databaseId: string): string => `${ENGINE_KEY_INSTANCE}:${databaseId}`;
export const isEngineKey = (keyId: string): boolean => keyId.startsWith(`${ENGINE_KEY_INSTANCE}:`);
