import { proxyActivities } from '@temporalio/workflow';
import type { Activities, KeyRef } from '../activities';
import { z } from 'zod';
import { keyIdSchema, parseInput } from './workflow-input';

const { resolveKeyRefs } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  // The CLI is waiting on this: a few quick tries, then a clear failure.
  retry: { initialInterval: '500 milliseconds', maximumAttempts: 3 },
  summary: 'look up the key ids and names in the KMS',
});

const resolveRootKeysInputSchema = z.array(keyIdSchema).max(1000);

/**
 * Resolves key ids or names (`keyops key rotate demo`, `key: demo` in a schedule file) through a
 * worker, the only place that holds KMS credentials.
 */
export async function resolveRootKeys(refs: string[]): Promise<KeyRef[]> {
  parseInput('resolveRootKeys', resolveRootKeysInputSchema, refs);
  return resolveKeyRefs(refs);
}
