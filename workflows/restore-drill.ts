import { ApplicationFailure, CancellationScope, isCancellation, log, patched, proxyActivities, setCurrentDetails, setHandler, upsertSearchAttributes, workflowInfo } from '@temporalio/workflow';
import type { Activities } from '../activities';
import { drillProgressQuery, type DrillPhase, type DrillProgress, type DrilledBackup } from './drill-messages';
import { checkRestorable, verifyBackupImage } from './restore-activities';
import { DatabaseIdAttribute, OutcomeAttribute, PhaseAttribute } from './search-attributes';
import { z } from 'zod';
import { databaseIdSchema, parseInput } from './workflow-input';

export interface RestoreDrillInput {
  /** Only this database's backups; default every database in the catalog. */
  databaseId?: string;
  /** Also restore each database's newest backup (default true). */
  newest?: boolean;
}

const restoreDrillInputSchema = z.object({ databaseId: databaseIdSchema.optional(), newest: z.boolean().optional() });

const { selectDrillSample, recordDrill, sendDrillAlert } = proxyActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 10 },
});

const reasonText = { oldest: 'the oldest retained', 'retired-key-version': 'a retired key version', newest: 'the newest' } as const;

/**
 * A restore drill ("a backup that was never restored is a hope"): restores a sample of the
 * catalogued backups to scratch files with the path `keyops backup verify` uses (keys still in
 * the KMS, checksum, test restore, scratch removed) and records each result in the catalog. The
 * sample: the oldest retained backup of each database, one per retired root-key version a
 * retained backup needs, and the newest. Any failure raises the backup alert (Outcome `alert`,
 * an error log line, the alert webhook) and fails the run with DRILL_FAILED.
 */
export async function restoreDrill(input: RestoreDrillInput = {}): Promise<DrillProgress> {
  parseInput('restoreDrill', restoreDrillInputSchema, input);
  const progress: DrillProgress = { phase: 'selecting', databaseId: input.databaseId, backups: [], passed: 0, failed: 0 };
  setHandler(drillProgressQuery, () => progress, { description: 'The sample, and how each backup restored' });
  const scope = input.databaseId ? `database \`${input.databaseId}\`` : 'every database';
  const enter = (phase: DrillPhase, details: string) => {
    progress.phase = phase;
    upsertSearchAttributes([{ key: PhaseAttribute, value: phase }, ...(input.databaseId ? [{ key: DatabaseIdAttribute, value: input.databaseId }] : [])]);
    setCurrentDetails(
      [
        `**${phase}** restore drill of ${scope}: ${details}`,
        '',
        ...progress.backups.map((b) => `- \`${b.backupId}\` (key \`${b.keyId}\` v${b.keyVersion}; ${b.reasons.map((r) => reasonText[r]).join(', ')}): **${b.result}**${b.error ? ` — ${b.error}` : ''}`),
      ].join('\n'),
    );
  };
  const workflowId = workflowInfo().workflowId;

  const alert = async (failed: { backupId: string; databaseId: string; reason: string }[], problem: string, summary: string, reason?: string) => {
    enter('alerting', problem);
    // A webhook that is down must not hide which backups failed.
    await CancellationScope.nonCancellable(() =>
      sendDrillAlert.executeWithOptions({ summary }, [{ workflowId, failed, drilled: progress.backups.length, ...(reason ? { reason } : {}) }]),
    ).catch((e: unknown) => log.warn('the alert webhook could not be reached', { error: e instanceof Error ? e.message : String(e) }));
    enter('failed', problem);
    upsertSearchAttributes([{ key: OutcomeAttribute, value: 'alert' }]);
  };

  enter('selecting', 'choosing the backups to restore');
  let sample;
  try {
    sample = await selectDrillSample.executeWithOptions(
      { summary: `choose the backups to drill for ${input.databaseId ? `database ${input.databaseId}` : 'every database'}: oldest, one per retired key version, newest` },
      [{ ...(input.databaseId ? { databaseId: input.databaseId } : {}), ...(input.newest !== undefined ? { newest: input.newest } : {}) }],
    );
  } catch (err) {
    // A drill that cannot even choose its backups (a key gone from the KMS, the KMS down for
    // good) proves nothing about them: it raises the alert as a failed restore does. Runs started
    // before this patch failed without it.
    if (isCancellation(err) || !patched('drill-sample-failure-alerts')) throw err;
    const reason = err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err);
    log.error('backup alert: a restore drill could not choose its backups', { reason });
    await alert([], 'could not choose the backups to drill', 'send the backup alert: the restore drill could not choose its backups', reason);
    throw ApplicationFailure.create({ type: 'DRILL_FAILED', nonRetryable: true, message: `the restore drill could not choose its backups: ${reason}`, details: [progress] });
  }
  progress.backups = sample.map((s): DrilledBackup => ({ backupId: s.backupId, databaseId: s.databaseId, keyId: s.keyId, keyVersion: s.keyVersion, reasons: s.reasons, result: 'pending' }));

  for (const [i, b] of progress.backups.entries()) {
    enter('drilling', `backup ${i + 1} of ${progress.backups.length}: \`${b.backupId}\``);
    try {
      const entry = await checkRestorable.executeWithOptions({ summary: `drill: check that the root-key version and backup key of ${b.backupId} still exist` }, [{ backupId: b.backupId }]);
      const check = await verifyBackupImage.executeWithOptions(
        { summary: `drill: restore ${b.backupId} (key ${entry.keyId} version ${entry.keyVersion}) to a scratch file and check it; the scratch copy is removed` },
        [{ path: entry.path, ...(entry.sha256 !== undefined ? { sha256: entry.sha256 } : {}) }],
      );
      Object.assign(b, { result: 'passed', rows: check.rows, tables: check.tables });
      progress.passed++;
    } catch (err) {
      // A cancelled drill says nothing about the backups: no FAILED in the catalog, no alert.
      if (isCancellation(err)) throw err;
      const reason = err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err);
      // The oldest backup is also the next one retention deletes: gone meanwhile is not a failed restore.
      if (err instanceof Error && err.cause instanceof ApplicationFailure && err.cause.type === 'BACKUP_NOT_FOUND') {
        Object.assign(b, { result: 'skipped', error: reason });
        continue;
      }
      Object.assign(b, { result: 'failed', error: reason });
      progress.failed++;
    }
    await CancellationScope.nonCancellable(() =>
      recordDrill.executeWithOptions({ summary: `record the drill of ${b.backupId} as ${b.result}` }, [
        {
          backupId: b.backupId,
          drilledAt: new Date(Date.now()).toISOString(),
          result: b.result === 'passed' ? 'passed' : 'failed',
          workflowId,
          ...(b.rows !== undefined ? { rows: b.rows, tables: b.tables ?? 0 } : {}),
          ...(b.error !== undefined ? { error: b.error } : {}),
        },
      ]),
    );
  }

  if (progress.failed > 0) {
    const failed = progress.backups.filter((b) => b.result === 'failed').map((b) => ({ backupId: b.backupId, databaseId: b.databaseId, reason: b.error ?? 'unknown' }));
    log.error('backup alert: a restore drill failed', { failed: failed.map((f) => f.backupId), drilled: progress.backups.length });
    await alert(failed, `${progress.failed} of ${progress.backups.length} backup(s) did not restore`, `send the backup alert: ${progress.failed} backup(s) failed the restore drill`);
    throw ApplicationFailure.create({
      type: 'DRILL_FAILED',
      nonRetryable: true,
      message: `${progress.failed} of ${progress.backups.length} drilled backup(s) did not restore: ${failed.map((f) => `${f.backupId} (${f.reason})`).join('; ')}`,
      details: [progress],
    });
  }
  const skipped = progress.backups.filter((b) => b.result === 'skipped').length;
  enter('done', progress.backups.length === 0 ? 'no retained backups to drill' : `${progress.passed} backup(s) restored${skipped ? `; ${skipped} deleted by retention meanwhile, skipped` : ''}`);
  upsertSearchAttributes([{ key: OutcomeAttribute, value: 'succeeded' }]);
  return progress;
}
