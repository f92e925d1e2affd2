import { proxyActivities, setCurrentDetails, upsertSearchAttributes, workflowInfo } from '@temporalio/workflow';
import type { Activities } from '../activities';
import { DatabaseIdAttribute, OutcomeAttribute, PhaseAttribute } from './search-attributes';
import { z } from 'zod';
import { databaseIdSchema, parseInput } from './workflow-input';

export interface RotateBackupKeyInput {
  databaseId: string;
}

export interface RotateBackupKeyResult {
  databaseId: string;
  /** SHA-256 of the new backup key: what later backups record. */
  hash: string;
  exportPath: string;
}

const { createPendingBackupKey, exportBackupKey, verifyBackupKeyExport, activateBackupKey } = proxyActivities<Activities>({
  startToCloseTimeout: '2 minutes',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 10 },
});

const rotateBackupKeyInputSchema = z.object({ databaseId: databaseIdSchema });

/**
 * SAP HANA's staged backup-key rotation (reference 004): create the new key without activating
 * it, export it under the passphrase to a new file, read the export back, and only then
 * activate it. A failure before activation leaves backups on the old key, which still works.
 */
export async function rotateBackupKey(input: RotateBackupKeyInput): Promise<RotateBackupKeyResult> {
  parseInput('rotateBackupKey', rotateBackupKeyInputSchema, input);
  const phase = (value: string, details: string) => {
    upsertSearchAttributes([
      { key: PhaseAttribute, value },
      { key: DatabaseIdAttribute, value: input.databaseId },
    ]);
    setCurrentDetails(`**${value}** backup key of database \`${input.databaseId}\`: ${details}`);
  };
  // The Web UI lists each activity by its summary: name the database and the key (by its hash).
  const db = `database ${input.databaseId}`;
  try {
    phase('creating', 'a new backup key, not yet active');
    const { hash } = await createPendingBackupKey.executeWithOptions({ summary: `create a new backup key for ${db}, not yet active` }, [{ databaseId: input.databaseId }]);
    const key = `backup key ${hash.slice(0, 12)}…`;
    phase('exporting', `key ${hash.slice(0, 12)}… to a passphrase-protected file`);
    // One file per rotation run: a retry finds its own file, another rotation never touches it.
    const fileName = `${hash.slice(0, 16)}-${workflowInfo().runId}.json`;
    const { path } = await exportBackupKey.executeWithOptions({ summary: `export ${key} of ${db} to a new passphrase-protected file (never overwritten)` }, [
      { databaseId: input.databaseId, hash, fileName },
    ]);
    phase('verifying-export', path);
    await verifyBackupKeyExport.executeWithOptions({ summary: `open the export ${path} with the passphrase: it must hold ${key} of ${db}` }, [{ databaseId: input.databaseId, hash, path }]);
    phase('activating', `key ${hash.slice(0, 12)}…: later backups use it`);
    await activateBackupKey.executeWithOptions({ summary: `activate ${key}: later backups of ${db} are encrypted with it` }, [{ databaseId: input.databaseId, hash }]);
    phase('done', `active backup key ${hash.slice(0, 12)}…, exported to ${path}`);
    upsertSearchAttributes([{ key: OutcomeAttribute, value: 'succeeded' }]);
    return { databaseId: input.databaseId, hash, exportPath: path };
  } catch (err) {
    upsertSearchAttributes([{ key: OutcomeAttribute, value: 'failed' }]);
    throw err;
  }
}
