import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { engineKeyId } from '../kms/engine-key-kms';
import type { KeyManagementService } from '../kms/key-management-service';
import { describeHeader, readBackupHeader } from './backup-file-format';
import type { BackupDescription, BackupImage, BackupToRead, DatabaseEngine, DatabaseKeyState, EngineCapabilities, Progress, RestoreCheck, VerifiedBackupFile } from './database-engine';
import type { EngineKey } from './engine-key';
import { EngineError } from './engine-error';
import { MariaDbEngineKey } from './mariadb-engine-key';
import { type MariaDbEngine, removeStaleScratch } from './mariadb-engine';

/**
 * One MariaDB server behind the DatabaseEngine port, as one database of keyops. What the port
 * asks of an engine that keeps its DEK as a WDEK does not all apply: MariaDB's pages are
 * encrypted with keys it reads from the key store itself, and re-keys them itself. So:
 * - its own key is an engine key (`engine:<databaseId>`, engine-key.ts): keyops rotates it, and
 *   nightly backups wait while pages move to a new version as they wait for a rewrap;
 * - there are no WDEKs to rewrap: each backup has its own fresh backup key, wrapped under the
 *   database's KMS root key in the file's header, so a root-key rotation never holds a backup;
 * - reprotect, regenerate and staged backup keys are not supported, and say so.
 */
export class MariaDbDatabaseEngine implements DatabaseEngine {
  supports(): EngineCapabilities {
    return { reprotect: false, regenerate: false, stagedBackupKeys: false };
  }

  /** The server's own key, as keyops names it: rotated by `keyops key rotate engine:<databaseId>`. */
  readonly key: MariaDbEngineKey;

  engineKeys(): ReadonlyMap<string, EngineKey> {
    return new Map([[engineKeyId(this.databaseId), this.key]]);
  }

  constructor(
    readonly databaseId: string,
    private readonly engine: MariaDbEngine,
    private readonly kms: Pick<KeyManagementService, 'wrap' | 'unwrap'>,
    /** The KMS root key that wraps every backup key of this database. */
    private readonly rootKeyId: string,
    /** Scratch space for the tool and for test restores (never the backup data itself). */
    private readonly workDir: string,
  ) {
    this.key = new MariaDbEngineKey(databaseId, engine);
  }

  private check(databaseId: string): void {
    if (databaseId !== this.databaseId) throw new EngineError('DATABASE_NOT_FOUND', `database ${databaseId} is not the MariaDB server configured as ${this.databaseId}`);
  }

  private unsupported(what: string): never {
    throw new EngineError('INVALID_CONFIGURATION', `database ${this.databaseId} is a MariaDB server: ${what} is not supported (MariaDB keeps its keys in its key store and re-encrypts its pages itself; rotate its key instead)`);
  }

  async keyState(databaseId: string): Promise<DatabaseKeyState> {
    this.check(databaseId);
    const state = await this.engine.encryptionState();
    // Not a re-encryption to wait for: MariaDB cannot read its key at all (see serverLostKey).
    if (state.serverLostKey) throw new EngineError('KEY_UNAVAILABLE', `database ${databaseId}: MariaDB reports no valid version of its key ${state.keyId}; its key-management plugin cannot read the key store`);
    return {
      databaseId,
      keyId: this.rootKeyId,
      wdekVersions: [],
      // Pages moving to a new key version are not a DEK regeneration: the night waits for the
      // engine key's "complete (key, version)" instead, released by signal (engineKey).
      keyChangeInProgress: false,
      // Every backup gets its own key: there is no "next" one to name.
      backupKeyHash: '',
      engineKey: { keyId: engineKeyId(databaseId), latestVersion: state.latestVersion, settled: state.settled, oldestVersionNeeded: state.oldestVersionNeeded },
    };
  }

  async backup(databaseId: string, path: string, progress?: Progress, label?: { backupId: string; night: string }): Promise<BackupImage> {
    this.check(databaseId);
    await mkdir(this.workDir, { recursive: true, mode: 0o700 });
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    const night = label?.night ?? new Date().toISOString().slice(0, 10);
    const written = await this.engine.backup({
      path,
      databaseId,
      backupId: label?.backupId ?? `backup/${databaseId}/${night}`,
      night,
      kms: this.kms,
      rootKeyId: this.rootKeyId,
      workDir: this.workDir,
      // The stream's length is unknown until it ends: progress counts bytes against themselves.
      ...(progress ? { progress: (bytes: number) => progress(bytes, bytes) } : {}),
    });
    return { databaseId, path, bytes: written.bytes, sha256: written.sha256, keyId: written.keyId, keyVersion: written.keyVersion, backupKeyHash: written.backupKeyHash, createdAt: written.createdAt };
  }

  private scratch(): string {
    return join(this.workDir, `check-${process.pid}-${Date.now()}-${Math.random().toString(16).slice(2, 8)}`);
  }

  async verifyBackup(image: BackupToRead, progress?: Progress): Promise<RestoreCheck> {
    return (await this.verifyBackupFile(image, progress)).check;
  }

  async verifyBackupFile(image: BackupToRead, progress?: Progress): Promise<VerifiedBackupFile> {
    await mkdir(this.workDir, { recursive: true, mode: 0o700 });
    await removeStaleScratch(this.workDir, 'check');
    const description = await this.describeBackup(image.path);
    const checked = await this.engine.verifyBackup({ path: image.path, kms: this.kms, targetDir: this.scratch(), ...(image.sha256 ? { expectedSha256: image.sha256 } : {}), ...(progress ? { progress } : {}) });
    return { check: { tables: checked.tables, rows: checked.rows }, sha256: checked.sha256, description };
  }

  async describeBackup(path: string): Promise<BackupDescription> {
    return describeHeader(await readBackupHeader(path));
  }

  /** A prepared, checked data directory at `targetPath`, ready for a mariadbd to start on. */
  async restore(image: BackupToRead, targetPath: string, progress?: Progress): Promise<RestoreCheck> {
    const checked = await this.engine.verifyBackup({ path: image.path, kms: this.kms, targetDir: targetPath, keep: true, ...(image.sha256 ? { expectedSha256: image.sha256 } : {}), ...(progress ? { progress } : {}) });
    return { tables: checked.tables, rows: checked.rows };
  }

  createPendingBackupKey(): Promise<string> {
    this.unsupported('a staged backup key');
  }

  backupKeyMaterial(): Promise<Buffer> {
    this.unsupported('exporting a backup key (each backup file carries its own, wrapped under the root key)');
  }

  activateBackupKey(): Promise<void> {
    this.unsupported('a staged backup key');
  }

  regenerate(): Promise<DatabaseKeyState> {
    this.unsupported('DEK regeneration');
  }

  /** Each file carries its backup key wrapped under the root key: there is none to look up. */
  hasBackupKey(): boolean {
    return false;
  }

  importBackupKey(): Promise<{ hash: string; keyId: string; keyVersion: number; alreadyRegistered: boolean }> {
    this.unsupported('importing a backup key');
  }

  reprotect(): Promise<DatabaseKeyState> {
    this.unsupported('reprotect (rewrapping its WDEKs)');
  }

  close(): Promise<void> {
    return this.engine.close();
  }

  /** No WDEKs of this database are in the registry: nothing follows a rewrap. */
  followRewrap(): Promise<void> {
    return Promise.resolve();
  }
}
