import { proxyActivities } from '@temporalio/workflow';
import type { Activities, KeyRef } from '../activities';

const { resolveKeyRefs } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  // The CLI is waiting on this: a few quick tries, then a clear failure.
  retry: { initialInterval: '500 milliseconds', maximumAttempts: 3 },
  summary: 'look up the key ids and names in the KMS',
});

/**
 * Resolves key ids or names (`keyops key rotate demo`, `key: demo` in a schedule file) through a
 * worker, the only place that holds KMS credentials.
 */
export async function resolveRootKeys(refs: string[]): Promise<KeyRef[]> {
  return resolveKeyRefs(refs);
}
