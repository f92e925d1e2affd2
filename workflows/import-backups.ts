import { proxyActivities, setCurrentDetails, upsertSearchAttributes } from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { ImportedBackups } from '../activities/nightly-backup';
import { OutcomeAttribute, PhaseAttribute } from './search-attributes';
import { z } from 'zod';
import { absolutePathSchema, parseInput } from './workflow-input';

// Each file is test-restored before it is catalogued: long for many or large files, heartbeated.
const { importBackupFiles } = proxyActivities<Activities>({
  startToCloseTimeout: '12 hours',
  heartbeatTimeout: '1 minute',
  retry: { initialInterval: '2 seconds', backoffCoefficient: 2, maximumInterval: '5 minutes', maximumAttempts: 10 },
});

const importBackupsInputSchema = z.object({ dir: absolutePathSchema });

/**
 * `keyops backup import DIR`: rebuilds catalog entries from backup files (a lost catalog, backups
 * copied in from elsewhere). Every file's header names its backup and keys; a test restore proves
 * it before it is catalogued. Files that are not restorable backups are reported, not catalogued.
 */
export async function importBackups(input: { dir: string }): Promise<ImportedBackups> {
  parseInput('importBackups', importBackupsInputSchema, input);
  upsertSearchAttributes([{ key: PhaseAttribute, value: 'importing' }]);
  setCurrentDetails(`**importing** backup files under \`${input.dir}\`: each is test-restored, then catalogued`);
  try {
    const result = await importBackupFiles.executeWithOptions({ summary: `catalogue the backup files under ${input.dir}, each after a test restore` }, [{ dir: input.dir }]);
    upsertSearchAttributes([
      { key: PhaseAttribute, value: 'done' },
      { key: OutcomeAttribute, value: result.refused.length === 0 ? 'succeeded' : 'partial' },
    ]);
    setCurrentDetails(
      `**done** ${result.imported.length} backup(s) catalogued, ${result.known.length} already known, ${result.refused.length} file(s) refused under \`${input.dir}\``,
    );
    return result;
  } catch (err) {
    upsertSearchAttributes([{ key: OutcomeAttribute, value: 'failed' }]);
    throw err;
  }
}
