import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { rm, readdir } from 'node:fs/promises';
import { Context, heartbeat } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { BackupCatalog, CatalogEntry } from './catalog/backup-catalog';
import type { BackupImage, DatabaseEngine, Progress, RestoreCheck } from './engines/database-engine';
import type { KeyManagementService } from './kms/key-management-service';
import { typed } from './typed';

export interface BackupDeps {
  dataDir: string;
  kms: KeyManagementService;
  engine: DatabaseEngine;
  catalog: BackupCatalog;
  /** Where the two-failed-nights alert is POSTed as JSON (optional). */
  alertWebhook?: string;
  /** Whether the HSM master key protecting the KMS's key storage is being rotated (optional). */
  keyStorageRotation?: () => Promise<{ inProgress: boolean; reason: string | undefined }>;
}

/** What the nightly run needs to decide whether to wait: ids, versions and dates only. */
export interface BackupKeyCheck {
  databaseId: string;
  keyId: string;
  currentVersion: number;
  lastRotateDate: string | undefined;
  /** The lowest root-key version among the database's WDEKs. */
  oldestWdekVersion: number;
  keyChangeInProgress: boolean;
  lastGoodBackupAt: string | undefined;
  /** DESIGN.md's test: the key rotated after the last good backup and the WDEKs are behind. */
  rotationInProgress: boolean;
  /** The WDEKs are behind the key, however that came about: a backup now would be refused. */
  wdeksBehind: boolean;
  /** Why the KMS's key storage is unusable now (an HSM master-key rotation), if it is. */
  masterKeyRotation?: string;
}

/** Progress as heartbeats, at most one a second (details are serialized for the server). */
function heartbeatProgress(): Progress {
  let last = 0;
  return (done, total) => {
    const now = Date.now();
    if (now - last < 1000 && done < total) return;
    last = now;
    heartbeat({ done, total });
  };
}

/** `backup/shop/2026-11-23` → `shop-2026-11-23`: a file name that says which backup it is. */
const fileNameOf = (backupId: string) => backupId.replace(/^backup\//, '').replace(/[^A-Za-z0-9_.-]+/g, '-');

export function createBackupActivities({ dataDir, kms, engine, catalog, alertWebhook, keyStorageRotation }: BackupDeps) {
  // One file per workflow run: a scheduled run and a manual `keyops backup run` of the same night
  // have different workflow ids, may overlap, and must never write or delete each other's file.
  // (Run ids can be time-ordered UUIDs: two runs started together share a prefix, not a suffix.)
  const pathOf = (databaseId: string, backupId: string) =>
    join(dataDir, 'backups', databaseId, `${fileNameOf(backupId)}-${(Context.current().info.workflowExecution?.runId ?? 'local').replace(/-/g, '').slice(-12)}.kob`);

  return {
    async checkBackupKeys(input: { databaseId: string }): Promise<BackupKeyCheck> {
      return typed(async () => {
        const state = await engine.keyState(input.databaseId);
        const key = await kms.getKeyMetadata(state.keyId);
        const lastGood = catalog.lastGood(input.databaseId);
        const oldestWdekVersion = Math.min(...state.wdekVersions);
        const wdeksBehind = oldestWdekVersion < key.currentVersion;
        const rotatedSinceBackup = key.lastRotateDate !== undefined && (!lastGood || key.lastRotateDate > lastGood.createdAt);
        const masterKey = await keyStorageRotation?.();
        return {
          databaseId: input.databaseId,
          keyId: state.keyId,
          currentVersion: key.currentVersion,
          lastRotateDate: key.lastRotateDate,
          oldestWdekVersion,
          keyChangeInProgress: state.keyChangeInProgress,
          lastGoodBackupAt: lastGood?.createdAt,
          rotationInProgress: rotatedSinceBackup && wdeksBehind,
          wdeksBehind,
          ...(masterKey?.inProgress ? { masterKeyRotation: masterKey.reason ?? 'a master-key rotation is running' } : {}),
        };
      });
    },

    /**
     * Writes the night's backup. Idempotent: a backup already catalogued as good is returned as
     * is; otherwise each attempt writes a fresh partial file and renames it over the final name,
     * so a killed attempt never leaves a half-written file under that name.
     */
    async backupDatabase(input: { databaseId: string; backupId: string }): Promise<BackupImage> {
      const done = catalog.get(input.backupId);
      if (done?.status === 'good') return imageOf(done);
      const path = pathOf(input.databaseId, input.backupId);
      await removePartials(path);
      return typed(() => engine.backup(input.databaseId, path, heartbeatProgress()));
    },

    /** Re-encrypts the whole database under a new DEK, heartbeating rows copied. */
    async regenerateDek(input: { databaseId: string }): Promise<{ wdekVersions: number[] }> {
      const state = await typed(() => engine.regenerate(input.databaseId, heartbeatProgress()));
      return { wdekVersions: state.wdekVersions };
    },

    async verifyBackupImage(input: { path: string; sha256: string }): Promise<RestoreCheck> {
      return typed(() => engine.verifyBackup(input, heartbeatProgress()));
    },

    /** The catalog, newest first, for `keyops backup list`. */
    async listBackups(filter: { databaseId?: string; limit?: number }): Promise<CatalogEntry[]> {
      return Promise.resolve(catalog.list(filter));
    },

    /**
     * Before a restore touches anything: the backup is catalogued, its root-key version is
     * still in the KMS and usable, and its backup key is still registered.
     */
    async checkRestorable(input: { backupId: string; targetPath?: string }): Promise<CatalogEntry> {
      // Refused before any work; the restore itself publishes with link(), which never replaces.
      if (input.targetPath !== undefined && existsSync(input.targetPath)) {
        throw ApplicationFailure.create({ type: 'INVALID_CONFIGURATION', nonRetryable: true, message: `restore target ${input.targetPath} exists; restore never overwrites a file` });
      }
      const entry = catalog.get(input.backupId);
      if (!entry || entry.status === 'deleted') {
        throw ApplicationFailure.create({
          type: 'BACKUP_NOT_FOUND',
          nonRetryable: true,
          message: entry ? `backup ${input.backupId} was deleted by retention` : `no backup ${input.backupId} in the catalog`,
        });
      }
      const key = await typed(() => kms.getKeyMetadata(entry.keyId));
      if (!key.versions.some((v) => v.version === entry.keyVersion)) {
        throw ApplicationFailure.create({
          type: 'KEY_VERSION_MISSING',
          nonRetryable: true,
          message: `backup ${input.backupId} needs version ${entry.keyVersion} of root key ${entry.keyId}, which the KMS no longer has`,
        });
      }
      if (key.state !== 'active') {
        throw ApplicationFailure.create({ type: 'KEY_DISABLED', nonRetryable: true, message: `backup ${input.backupId} needs root key ${entry.keyId}, which is disabled` });
      }
      if (!engine.hasBackupKey(entry.databaseId, entry.backupKeyHash)) {
        throw ApplicationFailure.create({
          type: 'BACKUP_KEY_MISSING',
          nonRetryable: true,
          message: `backup ${input.backupId} was encrypted with backup key ${entry.backupKeyHash.slice(0, 12)}… of database ${entry.databaseId}, which is no longer registered: import its key backup first`,
        });
      }
      return entry;
    },

    async restoreBackupImage(input: { path: string; sha256: string; targetPath: string }): Promise<RestoreCheck> {
      return typed(() => engine.restore(input, input.targetPath, heartbeatProgress()));
    },

    /**
     * Keeps the newest `keep` good backups of the database and deletes the files of older ones
     * (catalogued as deleted). The newest verified backup is never deleted, whatever `keep`
     * says; no key is ever removed here, so every retained backup keeps the keys it names.
     */
    async applyRetention(input: { databaseId: string; keep: number }): Promise<{ deleted: string[]; retained: number }> {
      const good = catalog.list({ databaseId: input.databaseId, status: 'good' });
      const newestVerified = good.find((e) => e.verification !== undefined);
      const keep = Math.max(1, input.keep);
      const doomed = good.slice(keep).filter((e) => e.backupId !== newestVerified?.backupId);
      for (const entry of doomed) {
        await rm(entry.path, { force: true });
        catalog.record({ ...entry, status: 'deleted' });
        heartbeat({ deleted: entry.backupId });
      }
      return { deleted: doomed.map((e) => e.backupId), retained: good.length - doomed.length };
    },

    /**
     * Catalogues the backup. When another run of the same night catalogued its own good backup
     * first, that one stays and this run's file, a duplicate nothing refers to, is removed.
     */
    async recordBackup(entry: CatalogEntry): Promise<CatalogEntry> {
      const kept = catalog.record(entry);
      if (kept.path !== entry.path) await rm(entry.path, { force: true });
      return kept;
    },

    /** POSTs the alert to the configured webhook; without one, does nothing. A refusal is retried. */
    async sendBackupAlert(alert: { databaseId: string; night: string; failedNights: number; reason: string; workflowId: string }): Promise<{ sent: boolean }> {
      if (!alertWebhook) return { sent: false };
      const response = await fetch(alertWebhook, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ event: 'keyops.backup.alert', ...alert }),
        signal: AbortSignal.timeout(10_000),
      });
      if (!response.ok) throw new Error(`alert webhook answered HTTP ${response.status}`);
      return { sent: true };
    },

    /** Returns how many nights in a row have failed for the database, this one included. */
    async recordNight(input: { databaseId: string; night: string; outcome: 'succeeded' | 'failed'; error?: string }): Promise<number> {
      return Promise.resolve(catalog.recordNight(input.databaseId, input.night, input.outcome, input.error));
    },
  };
}

const imageOf = (e: CatalogEntry): BackupImage => ({
  databaseId: e.databaseId,
  path: e.path,
  bytes: e.bytes,
  sha256: e.sha256,
  keyId: e.keyId,
  keyVersion: e.keyVersion,
  backupKeyHash: e.backupKeyHash,
  createdAt: e.createdAt,
});

/** Partial files an earlier, killed attempt left beside `path` (its heartbeat timed out: it is gone). */
async function removePartials(path: string): Promise<void> {
  const dir = join(path, '..');
  const base = path.slice(dir.length + 1);
  const names = await readdir(dir).catch(() => [] as string[]);
  await Promise.all(names.filter((n) => n.startsWith(`${base}.partial-`)).map((n) => rm(join(dir, n), { force: true })));
}
