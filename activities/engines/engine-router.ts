import type Database from 'better-sqlite3-multiple-ciphers';
import type { DemoDatabases } from '../demo-data';
import { isKeyopsBackupFile, readBackupHeader } from './backup-file-format';
import type { BackupToRead, DatabaseEngine, DatabaseKeyState, EngineCapabilities, Progress } from './database-engine';
import type { EngineKey } from './engine-key';
import { EngineError } from './engine-error';

/**
 * The engine port over several engines: each configured database server (MariaDB) answers for
 * its own database id, the embedded engine for every other one. A backup file is routed by the
 * database its header names (or, for an engine's native image, by the engine that recognises
 * it), so restore and import need no flag to say which engine made it.
 */
export class EngineRouter implements DatabaseEngine, DemoDatabases {
  constructor(
    private readonly embedded: DatabaseEngine & DemoDatabases,
    private readonly servers: ReadonlyMap<string, DatabaseEngine & { close?(): Promise<void> | void }>,
  ) {}

  private of(databaseId: string): DatabaseEngine {
    return this.servers.get(databaseId) ?? this.embedded;
  }

  /**
   * keyops' own files name their database in the header; an engine's native image (Db2's) does
   * not have that header, and is routed to the server engine that recognises it as its own.
   */
  private async ofFile(path: string): Promise<DatabaseEngine> {
    if (!(await isKeyopsBackupFile(path))) {
      for (const server of this.servers.values()) if (await server.ownsBackupFile?.(path)) return server;
    }
    return this.of((await readBackupHeader(path)).databaseId);
  }

  supports(databaseId: string): EngineCapabilities {
    return this.of(databaseId).supports?.(databaseId) ?? { reprotect: true, regenerate: true, stagedBackupKeys: true };
  }

  engineKeys(): ReadonlyMap<string, EngineKey> {
    return new Map([this.embedded, ...this.servers.values()].flatMap((engine) => [...(engine.engineKeys?.() ?? [])]));
  }

  keyState(databaseId: string): Promise<DatabaseKeyState> {
    return this.of(databaseId).keyState(databaseId);
  }

  backup(databaseId: string, path: string, progress?: Progress, label?: { backupId: string; night: string }) {
    return this.of(databaseId).backup(databaseId, path, progress, label);
  }

  async verifyBackup(image: BackupToRead, progress?: Progress) {
    return (await this.ofFile(image.path)).verifyBackup(image, progress);
  }

  async verifyBackupFile(image: BackupToRead, progress?: Progress) {
    return (await this.ofFile(image.path)).verifyBackupFile(image, progress);
  }

  async describeBackup(path: string) {
    return (await this.ofFile(path)).describeBackup(path);
  }

  async restore(image: BackupToRead, targetPath: string, progress?: Progress) {
    return (await this.ofFile(image.path)).restore(image, targetPath, progress);
  }

  createPendingBackupKey(databaseId: string) {
    return this.of(databaseId).createPendingBackupKey(databaseId);
  }

  backupKeyMaterial(databaseId: string, hash: string) {
    return this.of(databaseId).backupKeyMaterial(databaseId, hash);
  }

  activateBackupKey(databaseId: string, hash: string) {
    return this.of(databaseId).activateBackupKey(databaseId, hash);
  }

  regenerate(databaseId: string, progress?: Progress) {
    return this.of(databaseId).regenerate(databaseId, progress);
  }

  hasBackupKey(databaseId: string, hash: string) {
    return this.of(databaseId).hasBackupKey(databaseId, hash);
  }

  importBackupKey(databaseId: string, material: Buffer, keyId?: string) {
    return this.of(databaseId).importBackupKey(databaseId, material, keyId);
  }

  reprotect(databaseId: string) {
    return this.of(databaseId).reprotect(databaseId);
  }

  async followRewrap(keyId: string): Promise<void> {
    for (const engine of [this.embedded, ...this.servers.values()]) await engine.followRewrap(keyId);
  }

  listDatabases() {
    return this.embedded.listDatabases();
  }

  /** Embedded databases whose id a configured server also has: the server answers for the id, so they are out of reach. */
  get shadowed(): string[] {
    return this.embedded.listDatabases().flatMap((d) => (this.servers.has(d.databaseId) ? [d.databaseId] : []));
  }

  createDatabase(databaseId: string, keyId: string) {
    // Made under a server's id, it could never be backed up or opened: every call goes to the server.
    if (this.servers.has(databaseId)) {
      return Promise.reject(new EngineError('DATABASE_EXISTS', `database ${databaseId} is a database server named in keyops.yaml: choose another id for an embedded database`));
    }
    return this.embedded.createDatabase(databaseId, keyId);
  }

  withDatabase<T>(databaseId: string, fn: (db: Database.Database) => T): Promise<T> {
    return this.embedded.withDatabase(databaseId, fn);
  }

  async close(): Promise<void> {
    for (const server of this.servers.values()) await server.close?.();
  }
}
