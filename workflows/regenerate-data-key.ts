import { proxyActivities, setCurrentDetails, upsertSearchAttributes } from '@temporalio/workflow';
import type { Activities } from '../activities';
import { DatabaseIdAttribute, OutcomeAttribute, PhaseAttribute } from './search-attributes';
import { z } from 'zod';
import { databaseIdSchema, parseInput } from './workflow-input';

const { regenerateDek } = proxyActivities<Activities>({
  startToCloseTimeout: '24 hours',
  heartbeatTimeout: '1 minute',
  retry: { initialInterval: '5 seconds', backoffCoefficient: 2, maximumInterval: '5 minutes', maximumAttempts: 20 },
});

/** The id of a database's DEK regeneration: one at a time per database. */
export const regenerateWorkflowId = (databaseId: string): string => `regenerate/${databaseId}`;

const regenerateDataKeyInputSchema = z.object({ databaseId: databaseIdSchema });

/**
 * A new DEK for the database and all its data re-encrypted (SQL Server's REGENERATE, not the
 * instant re-protect): long and heartbeated; nightly backups of the database wait meanwhile.
 */
export async function regenerateDataKey(input: { databaseId: string }): Promise<{ databaseId: string; wdekVersions: number[] }> {
  parseInput('regenerateDataKey', regenerateDataKeyInputSchema, input);
  upsertSearchAttributes([
    { key: PhaseAttribute, value: 'regenerating' },
    { key: DatabaseIdAttribute, value: input.databaseId },
  ]);
  setCurrentDetails(`**regenerating** the DEK of database \`${input.databaseId}\`: every page re-encrypted; backups wait`);
  try {
    const result = await regenerateDek.executeWithOptions({ summary: `generate a new DEK for database ${input.databaseId} and re-encrypt every page under it` }, [
      { databaseId: input.databaseId },
    ]);
    upsertSearchAttributes([
      { key: PhaseAttribute, value: 'done' },
      { key: OutcomeAttribute, value: 'succeeded' },
    ]);
    setCurrentDetails(`**done** database \`${input.databaseId}\` is under its new DEK`);
    return { databaseId: input.databaseId, ...result };
  } catch (err) {
    upsertSearchAttributes([{ key: OutcomeAttribute, value: 'failed' }]);
    throw err;
  }
}
