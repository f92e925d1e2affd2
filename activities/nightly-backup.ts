import { existsSync } from 'node:fs';
import { isAbsolute, join, relative } from 'node:path';
import { rm, readdir, stat } from 'node:fs/promises';
import { Context, heartbeat } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { BackupCatalog, CatalogEntry } from './catalog/backup-catalog';
import type { BackupDescription, BackupImage, DatabaseEngine, Progress, RestoreCheck, RestoreCheckLevel } from './engines/database-engine';
import { EngineError, engineFailure } from './engines/engine-error';
import type { KeyManagementService } from './kms/key-management-service';
import { typed } from './typed';
import { postAlert } from './alert-webhook';

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
  /**
   * When the key to wait for is not `keyId` but the engine's own key (engine-key.ts), whose
   * consumer, the engine, is still re-encrypting pages: that key. currentVersion, lastRotateDate
   * and oldestWdekVersion then describe it (the oldest version a page is on).
   */
  awaitKeyId?: string;
  /** What is behind, in words, for the waiting run's details. */
  behind?: string;
}

/** Progress as heartbeats, at most one a second (details are serialized for the server). */
function heartbeatProgress(context: Record<string, unknown> = {}): Progress {
  let last = 0;
  return (done, total) => {
    const now = Date.now();
    if (now - last < 1000 && done < total) return;
    last = now;
    heartbeat({ ...context, done, total });
  };
}

/** `backup/shop/2026-11-23` → `shop-2026-11-23`: a file name that says which backup it is. */
const fileNameOf = (backupId: string) => backupId.replace(/^backup\//, '').replace(/[^A-Za-z0-9_.-]+/g, '-');
/** `<databaseId>-<night>-<run>.kob`, as pathOf names them: how a format 1 file says which night it is. */
const NIGHT_IN_FILE_NAME = /-(\d{4}-\d{2}-\d{2})-[0-9a-f]{12}\.kob$/;
/** Scratch and partial files beside backups: never backups themselves. */
const NOT_A_BACKUP = /\.(partial|verify)-/;

/** A backup a restore can start from: catalogued, or named by its file alone. */
export interface RestorableBackup {
  backupId: string;
  databaseId: string;
  path: string;
  /** The checksum the catalog recorded; a file restored without the catalog proves itself chunk by chunk. */
  sha256?: string | undefined;
  keyId: string;
  keyVersion: number;
  backupKeyHash: string;
}

export interface ImportedBackups {
  dir: string;
  /** Newly catalogued, each verified by a test restore. */
  imported: { backupId: string; path: string; keyId: string; keyVersion: number; rows: number }[];
  /** Already in the catalog under the same file. */
  known: string[];
  /** Files that are not restorable backups, with the reason. */
  refused: { path: string; reason: string }[];
  /** Good files of a backup the catalog already holds under another file. */
  duplicates: { path: string; backupId: string; catalogued: string }[];
}

export function createBackupActivities({ dataDir, kms, engine, catalog, alertWebhook, keyStorageRotation }: BackupDeps) {
  /** The backup a restore names: a catalog entry by id, or a file by its absolute path. */
  const restorableFrom = async (input: { backupId?: string; path?: string }): Promise<{ backup: RestorableBackup; label: string }> => {
    if (input.path !== undefined) {
      if (!isAbsolute(input.path)) {
        throw ApplicationFailure.create({ type: 'INVALID_INPUT', nonRetryable: true, message: `backup file ${input.path} must be an absolute path (the worker reads it)` });
      }
      const file = await typed(() => engine.describeBackup(input.path!));
      const backupId = file.backupId ?? `file:${input.path}`;
      return { backup: { backupId, databaseId: file.databaseId, path: input.path, keyId: file.keyId, keyVersion: file.keyVersion, backupKeyHash: file.backupKeyHash }, label: `backup file ${input.path}` };
    }
    const backupId = input.backupId ?? '';
    const entry = catalog.get(backupId);
    if (!entry || entry.status === 'deleted') {
      throw ApplicationFailure.create({
        type: 'BACKUP_NOT_FOUND',
        nonRetryable: true,
        message: entry ? `backup ${backupId} was deleted by retention` : `no backup ${backupId} in the catalog (a backup file restores by its path; keyops backup import DIR catalogues files)`,
      });
    }
    const { backupId: id, databaseId, path, sha256, keyId, keyVersion, backupKeyHash } = entry;
    return { backup: { backupId: id, databaseId, path, sha256, keyId, keyVersion, backupKeyHash }, label: `backup ${backupId}` };
  };

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
        // An engine that keeps no WDEKs (MariaDB: each backup wraps its own key) is never behind.
        const oldestWdekVersion = state.wdekVersions.length > 0 ? Math.min(...state.wdekVersions) : key.currentVersion;
        const wdeksBehind = oldestWdekVersion < key.currentVersion;
        const rotatedSinceBackup = key.lastRotateDate !== undefined && (!lastGood || key.lastRotateDate > lastGood.createdAt);
        const masterKey = await keyStorageRotation?.();
        const moving = state.engineKey && !state.engineKey.settled ? state.engineKey : undefined;
        if (moving) {
          // The engine's pages are the key's consumer: the night waits for "complete" of that key.
          const engineKey = await kms.getKeyMetadata(moving.keyId);
          return {
            databaseId: input.databaseId,
            keyId: state.keyId,
            awaitKeyId: moving.keyId,
            currentVersion: moving.latestVersion,
            lastRotateDate: engineKey.lastRotateDate,
            oldestWdekVersion: moving.oldestVersionNeeded ?? moving.latestVersion,
            keyChangeInProgress: state.keyChangeInProgress,
            lastGoodBackupAt: lastGood?.createdAt,
            rotationInProgress: true,
            wdeksBehind: true,
            behind: `the database engine is still re-encrypting its pages for version ${moving.latestVersion} of its key (the oldest page is on version ${moving.oldestVersionNeeded ?? 'unknown'})`,
            ...(masterKey?.inProgress ? { masterKeyRotation: masterKey.reason ?? 'a master-key rotation is running' } : {}),
          };
        }
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
      const night = /\/(\d{4}-\d{2}-\d{2})$/.exec(input.backupId)?.[1] ?? new Date().toISOString().slice(0, 10);
      return typed(() => engine.backup(input.databaseId, path, heartbeatProgress(), { backupId: input.backupId, night }));
    },

    /** Re-encrypts the whole database under a new DEK, heartbeating rows copied. */
    async regenerateDek(input: { databaseId: string }): Promise<{ wdekVersions: number[] }> {
      const state = await typed(() => engine.regenerate(input.databaseId, heartbeatProgress()));
      return { wdekVersions: state.wdekVersions };
    },

    /** A test restore to a scratch file; `check` says how much (default full: drills, `backup verify`). */
    async verifyBackupImage(input: { path: string; sha256?: string; check?: RestoreCheckLevel }): Promise<RestoreCheck> {
      if (input.check !== undefined && input.check !== 'full' && input.check !== 'authenticated') {
        throw ApplicationFailure.create({ type: 'INVALID_INPUT', nonRetryable: true, message: `check must be full or authenticated, got ${JSON.stringify(input.check)}` });
      }
      return typed(() => engine.verifyBackup(input, heartbeatProgress()));
    },

    /** The catalog, newest first, for `keyops backup list`. */
    async listBackups(filter: { databaseId?: string; limit?: number }): Promise<CatalogEntry[]> {
      return Promise.resolve(catalog.list(filter));
    },

    /**
     * Before a restore touches anything: the backup is catalogued (or named by its file), its
     * root-key versions are still in the KMS and usable, and its backup key is in the file or
     * still registered. A file needs no catalog, registry or engine metadata: only the KMS.
     */
    async checkRestorable(input: { backupId?: string; path?: string; targetPath?: string }): Promise<RestorableBackup> {
      // Refused before any work; the restore itself publishes with link(), which never replaces.
      if (input.targetPath !== undefined && existsSync(input.targetPath)) {
        throw ApplicationFailure.create({ type: 'INVALID_CONFIGURATION', nonRetryable: true, message: `restore target ${input.targetPath} exists; restore never overwrites a file` });
      }
      const { backup, label } = await restorableFrom(input);
      const file = await typed(() => engine.describeBackup(backup.path));
      const needs: [string, number][] = [[backup.keyId, backup.keyVersion]];
      if (file.backupKeyId !== undefined && file.backupKeyVersion !== undefined) needs.push([file.backupKeyId, file.backupKeyVersion]);
      for (const [keyId, version] of needs) {
        const key = await typed(() => kms.getKeyMetadata(keyId));
        if (!key.versions.some((v) => v.version === version)) {
          throw ApplicationFailure.create({
            type: 'KEY_VERSION_MISSING',
            nonRetryable: true,
            message: `${label} needs version ${version} of root key ${keyId}, which the KMS no longer has`,
          });
        }
        if (key.state !== 'active') {
          throw ApplicationFailure.create({ type: 'KEY_DISABLED', nonRetryable: true, message: `${label} needs root key ${keyId}, which is disabled` });
        }
      }
      if (file.backupKeyVersion === undefined && !engine.hasBackupKey(backup.databaseId, backup.backupKeyHash)) {
        throw ApplicationFailure.create({
          type: 'BACKUP_KEY_MISSING',
          nonRetryable: true,
          message: `${label} was encrypted with backup key ${backup.backupKeyHash.slice(0, 12)}… of database ${backup.databaseId}, which its file does not carry and which is no longer registered: import its key backup first (keyops backup key import FILE)`,
        });
      }
      return backup;
    },

    /**
     * Rebuilds catalog entries from the backup files under `dir` (`keyops backup import`): each
     * file's header names its backup, and a test restore proves it before it is catalogued.
     * Files already catalogued are left as they are. Heartbeats after every file.
     */
    async importBackupFiles(input: { dir: string }): Promise<ImportedBackups> {
      if (!isAbsolute(input.dir)) {
        throw ApplicationFailure.create({ type: 'INVALID_INPUT', nonRetryable: true, message: `import directory ${input.dir} must be an absolute path` });
      }
      const names = await readdir(input.dir, { recursive: true }).catch((err: NodeJS.ErrnoException) => {
        throw ApplicationFailure.create({ type: 'INVALID_INPUT', nonRetryable: true, message: `cannot read import directory ${input.dir}: ${err.code ?? err.message}` });
      });
      const files = names
        .filter((n) => n.endsWith('.kob') && !NOT_A_BACKUP.test(n))
        .map((n) => join(input.dir, n))
        .sort();
      const result: ImportedBackups = { dir: input.dir, imported: [], known: [], refused: [], duplicates: [] };
      // A retry starts over: files its earlier attempt catalogued are now known, and cost nothing.
      const catalogued = new Map(catalog.list().filter((e) => e.status !== 'deleted').map((e) => [e.path, e.backupId]));
      for (const [index, path] of files.entries()) {
        const known = catalogued.get(path);
        if (known) {
          result.known.push(known);
        } else {
          let verified;
          let size;
          try {
            size = (await stat(path)).size;
            verified = await engine.verifyBackupFile({ path }, heartbeatProgress({ file: index + 1, files: files.length }));
          } catch (err) {
            // A foreign, damaged or unreadable file is reported, never catalogued; the KMS
            // being unreachable is not the file's fault: retry the activity.
            if (err instanceof EngineError && err.retryable) throw engineFailure(err);
            result.refused.push({ path, reason: err instanceof Error ? err.message : String(err) });
          }
          if (verified && size !== undefined) {
            // Outside the catch: a catalog that cannot write fails the activity, never a file.
            const entry = catalog.record(entryFrom(path, verified.description, verified.sha256, size, verified.check));
            if (entry.path === path) result.imported.push({ backupId: entry.backupId, path, keyId: entry.keyId, keyVersion: entry.keyVersion, rows: verified.check.rows });
            // Two runs of one night (a scheduled and a manual one) wrote two files: one is kept.
            else result.duplicates.push({ path, backupId: entry.backupId, catalogued: relative(input.dir, entry.path) });
          }
        }
        heartbeat({ file: index + 1, files: files.length });
      }
      return result;
    },

    async restoreBackupImage(input: { path: string; sha256?: string; targetPath: string }): Promise<RestoreCheck> {
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
    sendBackupAlert(alert: { databaseId: string; night: string; failedNights: number; reason: string; workflowId: string }): Promise<{ sent: boolean }> {
      return postAlert(alertWebhook, 'keyops.backup.alert', alert);
    },

    /** Returns how many nights in a row have failed for the database, this one included. */
    async recordNight(input: { databaseId: string; night: string; outcome: 'succeeded' | 'failed'; error?: string }): Promise<number> {
      return Promise.resolve(catalog.recordNight(input.databaseId, input.night, input.outcome, input.error));
    },
  };
}

/** A catalog entry rebuilt from a verified file: what the nightly run would have recorded. */
function entryFrom(path: string, file: BackupDescription, sha256: string, bytes: number, check: RestoreCheck): CatalogEntry {
  const night = file.night ?? NIGHT_IN_FILE_NAME.exec(path)?.[1] ?? file.createdAt.slice(0, 10);
  return {
    backupId: file.backupId ?? `backup/${file.databaseId}/${night}`,
    databaseId: file.databaseId,
    night,
    createdAt: file.createdAt,
    path,
    bytes,
    sha256,
    keyId: file.keyId,
    keyVersion: file.keyVersion,
    backupKeyHash: file.backupKeyHash,
    verification: check,
    status: 'good',
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
