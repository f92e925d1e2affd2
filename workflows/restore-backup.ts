import { setCurrentDetails, upsertSearchAttributes } from '@temporalio/workflow';
import { checkRestorable, restoreBackupImage } from './restore-activities';
import { DatabaseIdAttribute, KeyIdAttribute, KeyVersionAttribute, OutcomeAttribute, PhaseAttribute } from './search-attributes';

export interface RestoreBackupInput {
  backupId: string;
  /** Where the restored database file goes; an existing file is never overwritten. */
  targetPath: string;
}

export interface RestoreBackupResult {
  backupId: string;
  databaseId: string;
  targetPath: string;
  keyId: string;
  keyVersion: number;
  tables: number;
  rows: number;
}

/** Restores a catalogued backup, after checking that every key it needs is still there. */
export async function restoreBackup(input: RestoreBackupInput): Promise<RestoreBackupResult> {
  const phase = (value: string, details: string) => {
    upsertSearchAttributes([{ key: PhaseAttribute, value }]);
    setCurrentDetails(`**${value}** backup \`${input.backupId}\`: ${details}`);
  };
  phase('checking-keys', 'is its root-key version still in the KMS, its backup key still registered?');
  let entry;
  try {
    entry = await checkRestorable.executeWithOptions(
      { summary: `check that the root-key version and backup key of backup ${input.backupId} still exist, and ${input.targetPath} does not` },
      [{ backupId: input.backupId, targetPath: input.targetPath }],
    );
  } catch (err) {
    upsertSearchAttributes([{ key: OutcomeAttribute, value: 'failed' }]);
    throw err;
  }
  upsertSearchAttributes([
    { key: DatabaseIdAttribute, value: entry.databaseId },
    { key: KeyIdAttribute, value: entry.keyId },
    { key: KeyVersionAttribute, value: entry.keyVersion },
  ]);
  phase('restoring', `to ${input.targetPath}`);
  const check = await restoreBackupImage.executeWithOptions(
    { summary: `restore backup ${input.backupId} of database ${entry.databaseId} (key ${entry.keyId} version ${entry.keyVersion}) to ${input.targetPath}` },
    [{ path: entry.path, sha256: entry.sha256, targetPath: input.targetPath }],
  );
  phase('done', `${check.rows} rows in ${check.tables} table(s) at ${input.targetPath}`);
  upsertSearchAttributes([{ key: OutcomeAttribute, value: 'succeeded' }]);
  return { backupId: input.backupId, databaseId: entry.databaseId, targetPath: input.targetPath, keyId: entry.keyId, keyVersion: entry.keyVersion, ...check };
}
