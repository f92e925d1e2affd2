import { setCurrentDetails, upsertSearchAttributes } from '@temporalio/workflow';
import { checkRestorable, restoreBackupImage } from './restore-activities';
import { DatabaseIdAttribute, KeyIdAttribute, KeyVersionAttribute, OutcomeAttribute, PhaseAttribute } from './search-attributes';
import { z } from 'zod';
import { absolutePathSchema, parseInput } from './workflow-input';

export interface RestoreBackupInput {
  /** A catalogued backup, by id; or */
  backupId?: string;
  /** a backup file on the worker, by absolute path: restores with the file and the KMS alone. */
  path?: string;
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

const restoreBackupInputSchema = z
  .object({ backupId: z.string().regex(/^backup\/[^/]+\/[^/]+$/, 'a backup id such as backup/payroll/2026-12-01').optional(), path: absolutePathSchema.optional(), targetPath: absolutePathSchema })
  .refine((v) => (v.backupId === undefined) !== (v.path === undefined), { message: 'name exactly one of backupId and path', path: ['backupId'] });

/**
 * Restores a backup, after checking that every key it needs is still there: a catalogued one by
 * id, or any backup file by path (disaster recovery: no registry, no catalog, only the KMS).
 */
export async function restoreBackup(input: RestoreBackupInput): Promise<RestoreBackupResult> {
  parseInput('restoreBackup', restoreBackupInputSchema, input);
  const name = input.backupId ?? input.path;
  const phase = (value: string, details: string) => {
    upsertSearchAttributes([{ key: PhaseAttribute, value }]);
    setCurrentDetails(`**${value}** backup \`${name}\`: ${details}`);
  };
  phase('checking-keys', 'is its root-key version still in the KMS, its backup key in its file or still registered?');
  let entry;
  try {
    entry = await checkRestorable.executeWithOptions(
      { summary: `check that the root-key version and backup key of backup ${name} still exist, and ${input.targetPath} does not` },
      [{ ...(input.backupId !== undefined ? { backupId: input.backupId } : {}), ...(input.path !== undefined ? { path: input.path } : {}), targetPath: input.targetPath }],
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
    { summary: `restore backup ${entry.backupId} of database ${entry.databaseId} (key ${entry.keyId} version ${entry.keyVersion}) to ${input.targetPath}` },
    [{ path: entry.path, sha256: entry.sha256, targetPath: input.targetPath }],
  );
  phase('done', `${check.rows} rows in ${check.tables} table(s) at ${input.targetPath}`);
  upsertSearchAttributes([{ key: OutcomeAttribute, value: 'succeeded' }]);
  return { backupId: entry.backupId, databaseId: entry.databaseId, targetPath: input.targetPath, keyId: entry.keyId, keyVersion: entry.keyVersion, ...check };
}
