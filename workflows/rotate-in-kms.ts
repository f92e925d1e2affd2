import { proxyActivities, upsertSearchAttributes } from '@temporalio/workflow';
import type { Activities } from '../activities';
import { rewrapWorkflowId } from './root-key-messages';
import { KeyIdAttribute, KeyVersionAttribute } from './search-attributes';
import { z } from 'zod';
import { keyIdSchema, parseInput, versionSchema } from './workflow-input';

const { rotateToVersion } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '500 milliseconds', maximumAttempts: 3 },
});

const rotateInKmsInputSchema = z.object({ keyId: keyIdSchema, targetVersion: versionSchema });

/**
 * `keyops key rotate --kms-only`: a new key version and nothing else, as a KMS console or a
 * rotation policy makes one (reference 001's failing Db2 backup). The WDEKs stay behind until the
 * watcher finds the rotation and rewraps; backups of databases under the key wait meanwhile.
 */
export async function rotateInKms(input: { keyId: string; targetVersion: number }): Promise<{ version: number; rotated: boolean }> {
  parseInput('rotateInKms', rotateInKmsInputSchema, input);
  upsertSearchAttributes([
    { key: KeyIdAttribute, value: input.keyId },
    { key: KeyVersionAttribute, value: input.targetVersion },
  ]);
  // The request id of the rewrap run for the same version: the KMS makes the version once,
  // whichever of the two asks first.
  return rotateToVersion.executeWithOptions({ summary: `create version ${input.targetVersion} of key ${input.keyId} in the KMS, and nothing else` }, [
    { ...input, requestId: rewrapWorkflowId(input.keyId, input.targetVersion) },
  ]);
}
