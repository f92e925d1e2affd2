import {
  ApplicationFailure,
  CancellationScope,
  condition,
  executeChild,
  log,
  patched,
  proxyActivities,
  proxyLocalActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import { awaitRewrap } from './await-rewrap';
import { backupProgressQuery, backupWorkflowId, type BackupPhase, type BackupProgress } from './backup-messages';
import { masterKeyRotationEndedSignal, type MasterKeyWait } from './master-key-messages';
import { keyEntityWorkflowId } from './root-key-messages';
import { DatabaseIdAttribute, KeyIdAttribute, OutcomeAttribute, PhaseAttribute } from './search-attributes';
import { z } from 'zod';
import { databaseIdSchema, durationMsSchema, nightSchema, parseInput, positiveIntSchema } from './workflow-input';

export interface NightlyBackupInput {
  databaseId: string;
  /** The night (YYYY-MM-DD) this backup belongs to; default: the run's start date (UTC). */
  night?: string;
  /** Longest wait for a rewrap in progress (ms); default 6 hours. */
  rewrapWaitMs?: number;
  /** How often the wait re-reads the key state, should a signal be lost (ms); default 10 min. */
  recheckEveryMs?: number;
  /** How often to re-check a DEK regeneration in progress (ms); default 1 min. */
  keyChangeRecheckMs?: number;
  /** Good backups to keep (the newest verified one is always kept); default 7. */
  retain?: number;
}

const DEFAULT_RETAIN = 7;

/** A wait as an operator reads it: `300 ms`, `45 s`, `10 min`, `6 h`. */
function duration(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${Math.round(ms / 1000)} s`;
  if (ms < 3600_000) return `${Math.round(ms / 60_000)} min`;
  return `${Math.round((ms / 3600_000) * 10) / 10} h`;
}

const bookkeepingOptions = {
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 10 },
} as const;
// The short steps around the backup (read the key state, catalogue, record the night, retention)
// run as local activities in runs started since the nightly-backup-local-bookkeeping patch:
// each then costs one marker in the history instead of three events and a workflow task, and the
// steps after the test restore share one workflow task. With a fleet's backups all due at once,
// those workflow tasks were most of the server's and the workers' work. Runs started before the
// patch keep their activities.
const remoteBookkeeping = proxyActivities<Activities>(bookkeepingOptions);
const { sendBackupAlert, registerMasterKeyWaiter } = remoteBookkeeping;
const localBookkeeping = proxyLocalActivities<Activities>(bookkeepingOptions);

// Key-unavailable and key-in-transition failures retry with exponential backoff (about 30 min
// in all); permission, configuration and invalid-backup failures are non-retryable and end it.
const { backupDatabase, verifyBackupImage } = proxyActivities<Activities>({
  startToCloseTimeout: '6 hours',
  heartbeatTimeout: '30 seconds',
  retry: { initialInterval: '2 seconds', backoffCoefficient: 2, maximumInterval: '5 minutes', maximumAttempts: 10 },
});

/**
 * One database's backup for one night (reference 000): checks whether a root-key rotation is in
 * progress and, if so, waits for the rewrap-complete signal (bounded, with re-checks) instead of
 * failing or sleeping; then backs up, verifies by a test restore, and catalogues the backup.
 */
export async function nightlyBackup(input: NightlyBackupInput): Promise<BackupProgress> {
  parseInput(
    'nightlyBackup',
    z.object({
      databaseId: databaseIdSchema,
      night: nightSchema(workflowInfo().startTime.getTime()).optional(),
      rewrapWaitMs: durationMsSchema.optional(),
      recheckEveryMs: durationMsSchema.optional(),
      keyChangeRecheckMs: durationMsSchema.optional(),
      retain: positiveIntSchema.max(10_000).optional(),
    }),
    input,
  );
  const night = input.night ?? new Date(workflowInfo().startTime).toISOString().slice(0, 10);
  const { checkBackupKeys, recordBackup, recordNight, applyRetention } = patched('nightly-backup-local-bookkeeping') ? localBookkeeping : remoteBookkeeping;
  // Every later change is decided here, before the first local activity, never right after one.
  // A query that reaches a run while its local activity runs makes the SDK close that workflow
  // task with the activity's marker alone, and the code after the result runs in the next task.
  // A replay resolves the activity in the first task instead, where a patch recorded in the next
  // one is not yet known: patched() answered false and the history failed to replay (reproduced
  // on the dev server: 17 of 30 queried runs). Runs started before this patch ask each change
  // where they always did.
  const current = patched('nightly-backup-patches-first');
  const changed = (patchId: string) => current || patched(patchId);
  const progress: BackupProgress = {
    databaseId: input.databaseId,
    night,
    phase: 'checking-keys',
    keyId: undefined,
    awaitedVersion: undefined,
    releasedAt: undefined,
    backupStartedAt: undefined,
    backupId: backupWorkflowId(input.databaseId, night),
    path: undefined,
    bytes: undefined,
    keyVersion: undefined,
    failedNights: 0,
  };
  setHandler(backupProgressQuery, () => progress, { description: 'Phase, key versions and the backup written' });
  let masterKeyEnded = false;
  let registered: MasterKeyWait | undefined;
  setHandler(masterKeyRotationEndedSignal, () => void (masterKeyEnded = true), {
    description: 'The master-key rotation this backup waits for ended: re-check the registers now',
  });
  const enter = (phase: BackupPhase, details: string) => {
    progress.phase = phase;
    upsertSearchAttributes([
      { key: PhaseAttribute, value: phase },
      { key: DatabaseIdAttribute, value: input.databaseId },
      ...(progress.keyId ? [{ key: KeyIdAttribute, value: progress.keyId }] : []),
    ]);
    setCurrentDetails(`**${phase}** database \`${input.databaseId}\`, night ${night}: ${details}`);
  };

  // The Web UI lists each activity by its summary: name the database and night of this run.
  const db = `database ${input.databaseId}`;
  const checkKeys = (summary: string) => checkBackupKeys.executeWithOptions({ summary }, [{ databaseId: input.databaseId }]);

  try {
    enter('checking-keys', 'reading the root key and the database key state');
    let keys = await checkKeys(`read the root key of ${db} and its WDEK versions: is a key rotation in progress?`);
    progress.keyId = keys.keyId;
    // A DEK regeneration re-encrypts every page, and an HSM master-key rotation makes the KMS's
    // key storage unusable (reference 002); neither announces its end: re-check until it ends
    // (every minute by default), within the same bounded wait as a rewrap.
    const waitMs = input.rewrapWaitMs ?? 6 * 3600_000;
    const waitUntil = Date.now() + waitMs;
    const recheckS = Math.round((input.keyChangeRecheckMs ?? 60_000) / 1000);
    while (keys.keyChangeInProgress || keys.masterKeyRotation) {
      if (keys.masterKeyRotation) {
        enter('awaiting-master-key', `the master key under the KMS's key storage is being rotated (${keys.masterKeyRotation}); released when it ends (re-checking every ${recheckS} s)`);
      } else {
        enter('awaiting-key-change', `database ${input.databaseId} is being re-encrypted under a new DEK; re-checking every ${recheckS} s`);
      }
      if (Date.now() >= waitUntil) {
        const what = keys.masterKeyRotation ? 'the master-key rotation was still running' : `database ${input.databaseId} was still being re-encrypted`;
        throw ApplicationFailure.nonRetryable(`${what} when the wait ended`, 'KEY_CHANGE_WAIT_TIMEOUT');
      }
      const awaited = keys.masterKeyRotation ? 'the master-key rotation under the KMS' : `the DEK regeneration of ${db}`;
      const recheckMs = Math.min(input.keyChangeRecheckMs ?? 60_000, waitUntil - Date.now());
      // The rotation's end releases the backup by signal, as a rewrap's does; the re-check
      // remains for a rotation keyops does not run. (Runs started before this only poll.)
      if (keys.masterKeyRotation && changed('master-key-wait-signal')) {
        // Asked once per rotation: a re-check while the rotation still owes its signal asks
        // nothing again (each request would be an event in the rotation's history).
        if (registered !== 'signal' || masterKeyEnded) {
          masterKeyEnded = false;
          registered = await registerMasterKeyWaiter.executeWithOptions({ summary: `ask the master-key rotation under the KMS to release this backup of ${db} when it ends` }, [
            { workflowId: workflowInfo().workflowId },
          ]);
        }
        if (registered !== 'ended') {
          await condition(() => masterKeyEnded, recheckMs, { summary: `backup held: wait for the master-key rotation under the KMS to end (released by its signal), re-checking after ${duration(recheckMs)}` });
        }
      } else {
        await sleep(recheckMs, { summary: `backup held: wait, then re-check whether ${awaited} has ended` });
      }
      keys = await checkKeys(`re-check whether ${awaited} has ended`);
    }
    if (keys.wdeksBehind) {
      progress.awaitedVersion = keys.currentVersion;
      // The key whose consumers are behind: the root key's WDEKs, or an engine re-keying itself.
      const awaited = keys.awaitKeyId ?? keys.keyId;
      const behind = keys.behind ?? `the database's WDEKs are still on version ${keys.oldestWdekVersion}`;
      enter(
        'awaiting-rewrap',
        keys.awaitKeyId
          ? `key \`${awaited}\` rotated to version ${keys.currentVersion} (${keys.lastRotateDate ?? 'date unknown'}); waiting until it is complete: ${behind}`
          : `root key \`${keys.keyId}\` rotated to version ${keys.currentVersion} (${keys.lastRotateDate ?? 'date unknown'}); waiting for the rewrap of its WDEKs (now at version ${keys.oldestWdekVersion})`,
      );
      await executeChild(awaitRewrap, {
        workflowId: `${progress.backupId}/await-rewrap`,
        args: [{ keyId: awaited, minVersion: keys.currentVersion, timeoutMs: input.rewrapWaitMs, recheckEveryMs: input.recheckEveryMs }],
        staticSummary: `Wait for key ${awaited} to be ${keys.awaitKeyId ? 'complete at' : 'rewrapped to'} version ${keys.currentVersion}`,
        staticDetails: [
          `**Backup of ${db}, night ${night}, is waiting** (\`${workflowInfo().workflowId}\`).`,
          '',
          `- ${keys.awaitKeyId ? 'Key' : 'Root key'} \`${awaited}\` rotated to version **${keys.currentVersion}** (${keys.lastRotateDate ?? 'date unknown'}); ${behind}.`,
          `- A backup now would be refused: it waits for "${keys.awaitKeyId ? 'complete' : 'rewrap complete'} (${awaited}, v${keys.currentVersion})" from \`${keyEntityWorkflowId(awaited)}\`.`,
          `- Re-reads the key state every ${duration(input.recheckEveryMs ?? 10 * 60_000)} in case a signal is lost; gives up after ${duration(waitMs)}.`,
          '- The backup starts as soon as this wait ends.',
        ].join('\n'),
      });
      progress.releasedAt = Date.now();
    }

    enter('backing-up', 'writing the encrypted backup');
    progress.backupStartedAt = Date.now();
    const image = await backupDatabase.executeWithOptions({ summary: `write the encrypted backup of ${db} for night ${night} (root key ${keys.keyId})` }, [
      { databaseId: input.databaseId, backupId: progress.backupId },
    ]);
    Object.assign(progress, { path: image.path, bytes: image.bytes, keyVersion: image.keyVersion });

    enter('verifying', `test restore of ${image.path}`);
    const verification = await verifyBackupImage.executeWithOptions(
      { summary: `checksum and test restore of the ${db} backup (${image.bytes} bytes, key ${image.keyId} version ${image.keyVersion})` },
      // The chunk tags authenticate every byte the backup read: the nightly test restore skips the
      // second pass over every page that drills and `backup verify` still make. Only the input's
      // value changed (not the command), so a replay of an older run is unaffected.
      [{ path: image.path, sha256: image.sha256, check: 'authenticated' }],
    );

    enter('recording', 'cataloguing the backup');
    // Another run of the same night may have catalogued its backup first: that one is kept.
    const kept = await recordBackup.executeWithOptions({ summary: `catalogue the verified backup of ${db} for night ${night} (key ${image.keyId} version ${image.keyVersion})` }, [
      { ...image, backupId: progress.backupId, night, verification, status: 'good' },
    ]);
    Object.assign(progress, { path: kept?.path ?? image.path, bytes: kept?.bytes ?? image.bytes });
    progress.failedNights = 0;
    await recordNight.executeWithOptions({ summary: `record night ${night} of ${db} as succeeded (clears the failed-nights count)` }, [
      { databaseId: input.databaseId, night, outcome: 'succeeded' },
    ]);
    // Only after a good, verified backup is catalogued may older ones go. (Runs started before
    // retention existed finish without it.)
    if (changed('nightly-backup-retention')) {
      enter('retention', `keeping the newest ${input.retain ?? DEFAULT_RETAIN} good backups`);
      const keep = input.retain ?? DEFAULT_RETAIN;
      const retention = await applyRetention.executeWithOptions({ summary: `keep the newest ${keep} good backups of ${db}, delete older ones` }, [{ databaseId: input.databaseId, keep }]);
      progress.deleted = retention.deleted;
    }
    enter('done', `${image.bytes} bytes, key \`${image.keyId}\` version ${image.keyVersion}, ${verification.rows} rows restored in the test`);
    upsertSearchAttributes([{ key: OutcomeAttribute, value: 'succeeded' }]);
    return progress;
  } catch (err) {
    const reason = err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err);
    // Recorded even when the run was cancelled: the alert counts nights, however they ended.
    progress.failedNights = await CancellationScope.nonCancellable(() =>
      recordNight.executeWithOptions({ summary: `record night ${night} of ${db} as failed and count the failed nights in a row` }, [
        { databaseId: input.databaseId, night, outcome: 'failed', error: reason },
      ]),
    );
    if (progress.failedNights >= 2) {
      log.error('backup alert: nights in a row without a good backup', { databaseId: input.databaseId, failedNights: progress.failedNights, reason });
      if (changed('backup-alert-webhook')) {
        const alert = { databaseId: input.databaseId, night, failedNights: progress.failedNights, reason, workflowId: workflowInfo().workflowId };
        // A webhook that is down must not hide why the night failed.
        const summary = `send the backup alert for ${db}: ${progress.failedNights} failed nights in a row`;
        await CancellationScope.nonCancellable(() => sendBackupAlert.executeWithOptions({ summary }, [alert])).catch((e: unknown) =>
          log.warn('the alert webhook could not be reached', { error: e instanceof Error ? e.message : String(e) }),
        );
      }
    }
    enter('failed', `${reason} (${progress.failedNights} failed night(s) in a row)`);
    upsertSearchAttributes([{ key: OutcomeAttribute, value: progress.failedNights >= 2 ? 'alert' : 'failed' }]);
    throw err;
  }
}
