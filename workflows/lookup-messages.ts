import { defineQuery, defineUpdate } from '@temporalio/workflow';
import type { KeyRef, KeyReportAnswer, KeyStatus, KeyVersions, NightCheck } from '../activities';
import type { CatalogEntry } from '../activities/catalog/backup-catalog';

/**
 * The CLI's read-only questions, asked as updates of one long-lived desk per task queue instead
 * of a workflow run each: a look-up adds no run to the workflow list, and the answer still comes
 * from a worker, the only process that holds the KMS credentials and the catalog.
 */
export const describeKeyUpdate = defineUpdate<KeyStatus, [keyId: string]>('describeKey');
export const resolveKeysUpdate = defineUpdate<KeyRef[], [refs: string[]]>('resolveKeys');
export const listBackupsUpdate = defineUpdate<CatalogEntry[], [filter: { databaseId?: string; limit?: number }]>('listBackups');
export const listKeyVersionsUpdate = defineUpdate<KeyVersions, [keyId: string]>('listKeyVersions');
/** What tonight needs of the worker (keyops doctor): KMSs, engines, backup space, master secret. */
export const checkNightUpdate = defineUpdate<NightCheck[], []>('checkNight');

/** The worker's half of `keyops report`: KMS metadata and catalog records of the keys (all in use when none is named). */
export const keyReportFactsUpdate = defineUpdate<KeyReportAnswer, [filter: { keyIds?: string[]; since?: string }]>('keyReportFacts');

/** How many look-ups the desk's current run answered, and since when (for the Web UI and tests). */
export interface LookupDeskState {
  answered: number;
  /** Runs of the desk so far: it continues as new before its history grows long. */
  generation: number;
}
export const lookupDeskStateQuery = defineQuery<LookupDeskState>('lookupDeskState');

/** One desk per task queue: the workers of a queue share its credentials and catalog. */
export const lookupDeskWorkflowId = (taskQueue: string): string => `lookups/${taskQueue}`;
