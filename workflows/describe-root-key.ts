import { proxyActivities } from '@temporalio/workflow';
import type { Activities, KeyStatus } from '../activities';
import { keyIdSchema, parseInput } from './workflow-input';

const { describeKey } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  // The CLI is waiting on this: a few quick tries, then a clear failure.
  retry: { initialInterval: '500 milliseconds', maximumAttempts: 3 },
});

const describeRootKeyInputSchema = keyIdSchema;

/**
 * Reads a root key's metadata and rewrapped version through a worker (only workers hold KMS
 * credentials), so `keyops key show` and `keyops key rotate` can check before they start work.
 */
export async function describeRootKey(keyId: string): Promise<KeyStatus> {
  parseInput('describeRootKey', describeRootKeyInputSchema, keyId);
  return describeKey.executeWithOptions({ summary: `read the KMS metadata and rewrapped version of key ${keyId}` }, [keyId]);
}
