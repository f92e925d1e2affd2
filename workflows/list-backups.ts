import { proxyActivities } from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { CatalogEntry } from '../activities/catalog/backup-catalog';
import { z } from 'zod';
import { databaseIdSchema, parseInput, positiveIntSchema } from './workflow-input';

const { listBackups: readCatalog } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '500 milliseconds', maximumAttempts: 3 },
});

const listBackupsInputSchema = z.object({ databaseId: databaseIdSchema.optional(), limit: positiveIntSchema.max(100_000).optional() });

/** The backup catalog through a worker (it lives with the workers), for `keyops backup list`. */
export async function listBackups(filter: { databaseId?: string; limit?: number }): Promise<CatalogEntry[]> {
  parseInput('listBackups', listBackupsInputSchema, filter);
  const which = filter.databaseId ? `database ${filter.databaseId}` : 'every database';
  const summary = `read the backup catalog for ${which}, newest first${filter.limit ? ` (at most ${filter.limit})` : ''}`;
  return readCatalog.executeWithOptions({ summary }, [filter]);
}
