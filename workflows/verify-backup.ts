import { setCurrentDetails, upsertSearchAttributes } from '@temporalio/workflow';
import { checkRestorable, verifyBackupImage } from './restore-activities';
import { DatabaseIdAttribute, OutcomeAttribute, PhaseAttribute } from './search-attributes';
import { z } from 'zod';
import { parseInput } from './workflow-input';

export interface VerifyBackupResult {
  backupId: string;
  databaseId: string;
  path: string;
  keyId: string;
  keyVersion: number;
  tables: number;
  rows: number;
}

const verifyBackupInputSchema = z.object({ backupId: z.string().regex(/^backup\/[^/]+\/[^/]+$/, 'a backup id such as backup/payroll/2026-12-01') });

/**
 * `keyops backup verify`: proves a catalogued backup still restores today, with today's keys:
 * its key version and backup key still exist, its checksum matches, and a test restore opens
 * and passes SQLite's check. Nothing is kept but the answer.
 */
export async function verifyBackup(input: { backupId: string }): Promise<VerifyBackupResult> {
  parseInput('verifyBackup', verifyBackupInputSchema, input);
  const phase = (value: string, details: string) => {
    upsertSearchAttributes([{ key: PhaseAttribute, value }]);
    setCurrentDetails(`**${value}** backup \`${input.backupId}\`: ${details}`);
  };
  try {
    phase('checking-keys', 'is its root-key version still in the KMS, its backup key still registered?');
    const entry = await checkRestorable.executeWithOptions({ summary: `check that the root-key version and backup key of backup ${input.backupId} still exist` }, [
      { backupId: input.backupId },
    ]);
    upsertSearchAttributes([{ key: DatabaseIdAttribute, value: entry.databaseId }]);
    phase('verifying', `checksum and test restore of ${entry.path}`);
    const check = await verifyBackupImage.executeWithOptions(
      { summary: `checksum and test restore of backup ${input.backupId} (key ${entry.keyId} version ${entry.keyVersion}); nothing is kept` },
      [{ path: entry.path, sha256: entry.sha256 }],
    );
    phase('done', `${check.rows} rows in ${check.tables} table(s) restore`);
    upsertSearchAttributes([{ key: OutcomeAttribute, value: 'succeeded' }]);
    return { backupId: input.backupId, databaseId: entry.databaseId, path: entry.path, keyId: entry.keyId, keyVersion: entry.keyVersion, ...check };
  } catch (err) {
    upsertSearchAttributes([{ key: OutcomeAttribute, value: 'failed' }]);
    throw err;
  }
}
