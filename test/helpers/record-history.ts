import { execFileSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { temporalCliPath, testServerAddress } from './temporal';

/**
 * Saves a finished run's history under test/histories/ for the replay test. Run the suite with
 * KEYOPS_RECORD_HISTORIES=1 after a deliberate workflow change, and commit the files.
 * The Temporal CLI writes the same JSON format the Web UI downloads. An existing file is never
 * replaced: old histories guard the runs that older workers started; record under a new name.
 */
export async function recordHistory(workflowId: string, fileName: string): Promise<void> {
  if (existsSync(join(__dirname, '..', 'histories', fileName))) return;
  const json = execFileSync(
    temporalCliPath(),
    ['workflow', 'show', '--address', testServerAddress(), '--namespace', 'default', '--workflow-id', workflowId, '--output', 'json'],
    { encoding: 'utf8' },
  );
  writeFileSync(join(__dirname, '..', 'histories', fileName), json);
  return Promise.resolve();
}
