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
// As keyops.yaml names instances (workers/keyops-config.ts); which exist only the worker knows.
const createRootKeyOptionsSchema = z.object({ kms: z.string().regex(/^[a-z][a-z0-9-]{0,30}$/, 'a KMS instance name').optional() }).strict().optional();

/** Creates a root key in the KMS (or the configured instance `kms`) through a worker (only workers hold KMS credentials). */
export async function createRootKey(name: string, options?: { kms?: string }): Promise<KeyStatus> {
  parseInput('createRootKey', createRootKeyInputSchema, name);
  parseInput('createRootKey options', createRootKeyOptionsSchema, options);
  const where = options?.kms ? `KMS instance ${options.kms}` : 'the KMS';
  return createKey.executeWithOptions({ summary: `create root key "${name}" in ${where} (one try: a retry could create a second key)` }, [
    { name, ...(options?.kms ? { kms: options.kms } : {}) },
  ]);
}
