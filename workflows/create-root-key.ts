import { proxyActivities } from '@temporalio/workflow';
import type { Activities, KeyStatus } from '../activities';
import { z } from 'zod';
import { labelSchema, parseInput } from './workflow-input';

const { createKey } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  // Not retried: a retry after a lost answer would create a second key.
  retry: { maximumAttempts: 1 },
});

const createRootKeyInputSchema = labelSchema.pipe(z.string().min(1).max(128));

/** Creates a root key in the KMS through a worker (only workers hold KMS credentials). */
export async function createRootKey(name: string): Promise<KeyStatus> {
  parseInput('createRootKey', createRootKeyInputSchema, name);
  return createKey.executeWithOptions({ summary: `create root key "${name}" in the KMS (one try: a retry could create a second key)` }, [{ name }]);
}
