import { proxyActivities } from '@temporalio/workflow';
import { z } from 'zod';
import type { Activities } from '../activities';
import { keyIdSchema, parseInput, versionSchema } from './workflow-input';

const { destroyKeyVersion } = proxyActivities<Activities>({
  startToCloseTimeout: '5 minutes',
  // Refusals are non-retryable; a store that is briefly down is tried a few times.
  retry: { initialInterval: '1 second', maximumAttempts: 5 },
});

export interface DestroyRootKeyVersionInput {
  keyId: string;
  version: number;
}

/**
 * Destroys one version of a key for good (`keyops key destroy-version`), refused while a WDEK,
 * a database page or a retained backup may still need it: the activity counts them again at
 * the moment of destruction. Idempotent: a version already destroyed is reported as such.
 */
export async function destroyRootKeyVersion(input: DestroyRootKeyVersionInput): Promise<{ keyId: string; version: number; destroyed: boolean; alreadyDestroyed: boolean }> {
  parseInput('destroyRootKeyVersion', z.object({ keyId: keyIdSchema, version: versionSchema }), input);
  return destroyKeyVersion.executeWithOptions({ summary: `destroy version ${input.version} of key ${input.keyId} if nothing needs it any more` }, [input]);
}
