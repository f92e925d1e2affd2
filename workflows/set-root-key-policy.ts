import { proxyActivities } from '@temporalio/workflow';
import type { Activities, KeyStatus } from '../activities';
import { z } from 'zod';
import { keyIdSchema, parseInput } from './workflow-input';

const { setRotationPolicy } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '500 milliseconds', maximumAttempts: 3 },
});

const setRootKeyPolicyInputSchema = z.object({ keyId: keyIdSchema, intervalMonths: z.number().int().min(1).max(12).optional() });

/**
 * `keyops key policy`: the KMS rotates the key by itself every N months (Key Protect's policy,
 * 1 to 12); the hourly watcher then notices each rotation and starts its rewrap.
 */
export async function setRootKeyPolicy(input: { keyId: string; intervalMonths?: number }): Promise<KeyStatus> {
  parseInput('setRootKeyPolicy', setRootKeyPolicyInputSchema, input);
  const summary =
    input.intervalMonths === undefined
      ? `remove the KMS rotation policy of key ${input.keyId}`
      : `set the KMS rotation policy of key ${input.keyId}: rotate every ${input.intervalMonths} month(s)`;
  return setRotationPolicy.executeWithOptions({ summary }, [input]);
}
