import { proxyActivities } from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { KeyVersions } from '../activities/key-versions';
import { keyIdSchema, parseInput } from './workflow-input';

const { listKeyVersions } = proxyActivities<Activities>({
  // Reads every retained backup's header: a long catalog takes a while.
  startToCloseTimeout: '5 minutes',
  retry: { initialInterval: '500 milliseconds', maximumAttempts: 3 },
});

/**
 * Every version of a key and what still needs it (WDEKs, an engine's pages, retained backups),
 * for `keyops key versions`: read by a worker, which alone holds the KMS credentials.
 */
export async function listRootKeyVersions(keyId: string): Promise<KeyVersions> {
  parseInput('listRootKeyVersions', keyIdSchema, keyId);
  return listKeyVersions.executeWithOptions({ summary: `list the versions of key ${keyId} and the WDEKs, pages and backups that need each` }, [{ keyId }]);
}
