import { proxyActivities, setCurrentDetails, upsertSearchAttributes } from '@temporalio/workflow';
import type { Activities } from '../activities';
import { DatabaseIdAttribute, KeyIdAttribute, OutcomeAttribute, PhaseAttribute } from './search-attributes';
import { z } from 'zod';
import { absolutePathSchema, keyIdSchema, parseInput } from './workflow-input';

const { importBackupKey: importKey } = proxyActivities<Activities>({
  startToCloseTimeout: '2 minutes',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 10 },
});

export interface ImportBackupKeyInput {
  /** Absolute path, on the worker, of an export written by `rotateBackupKey`. */
  path: string;
  /** The root key to wrap it under, for a database the workers' engine does not hold. */
  keyId?: string;
}

const importBackupKeyInputSchema = z.object({ path: absolutePathSchema, keyId: keyIdSchema.optional() });

/**
 * `keyops backup key import FILE`: a backup key from its passphrase-protected export becomes
 * usable again, so that backups encrypted with it restore. Only ids and hashes leave the worker.
 */
export async function importBackupKey(input: ImportBackupKeyInput): Promise<{ databaseId: string; hash: string; keyId: string; keyVersion: number; alreadyRegistered: boolean }> {
  parseInput('importBackupKey', importBackupKeyInputSchema, input);
  upsertSearchAttributes([{ key: PhaseAttribute, value: 'importing' }]);
  setCurrentDetails(`**importing** the backup key in \`${input.path}\``);
  try {
    const result = await importKey.executeWithOptions({ summary: `open the key export ${input.path} with the workers' passphrase and register its backup key` }, [
      { path: input.path, ...(input.keyId !== undefined ? { keyId: input.keyId } : {}) },
    ]);
    upsertSearchAttributes([
      { key: PhaseAttribute, value: 'done' },
      { key: OutcomeAttribute, value: 'succeeded' },
      { key: DatabaseIdAttribute, value: result.databaseId },
      { key: KeyIdAttribute, value: result.keyId },
    ]);
    setCurrentDetails(`**done** backup key ${result.hash.slice(0, 12)}… of database \`${result.databaseId}\` is registered under root key \`${result.keyId}\` version ${result.keyVersion}`);
    return result;
  } catch (err) {
    upsertSearchAttributes([{ key: OutcomeAttribute, value: 'failed' }]);
    throw err;
  }
}
