import type { EngineKey } from './engine-key';

/**
 * The DatabaseEngine port: what keyops needs from an encrypted database to back it up across
 * key rotations. Adapters: the embedded encrypted SQLite engine; command adapters (Db2, SAP HANA,
 * SQL Server) build the engine's own commands. Every method may throw an `EngineError`.
 */

/** Which keys protect a database right now, and whether one of them is changing. */
export interface DatabaseKeyState {
  databaseId: string;
  /** The KMS root key that wraps the database's DEK and backup keys. */
  keyId: string;
  /** The root-key version each of the database's WDEKs (DEK, backup keys) is wrapped under. */
  wdekVersions: number[];
  /** A DEK regeneration (all data re-encrypted) is running: backups must wait. */
  keyChangeInProgress: boolean;
  /** Hash of the backup key the next backup is encrypted with. */
  backupKeyHash: string;
  /**
   * An engine that re-encrypts its own pages under a key it reads itself (engine-key.ts): that
   * key (`engine:<databaseId>`) and where the pages are. Backups wait while it is not settled,
   * released by "complete (key, version)" like a rewrap.
   */
  engineKey?: { keyId: string; latestVersion: number; settled: boolean; oldestVersionNeeded: number | undefined };
}

/** A written backup and everything needed to restore it, except key material. */
export interface BackupImage {
  databaseId: string;
  path: string;
  bytes: number;
  sha256: string;
  /** The root key and version that wrap the DEK stored in the backup. */
  keyId: string;
  keyVersion: number;
  /** SHA-256 of the backup key that encrypted the file (restore looks the key up by it). */
  backupKeyHash: string;
  createdAt: string;
}

export interface RestoreCheck {
  tables: number;
  rows: number;
}

/** What a backup file says about itself, read from the file alone: ids, versions, hashes. */
export interface BackupDescription {
  databaseId: string;
  /** The catalog entry the file is (undefined in files older than format 2). */
  backupId: string | undefined;
  night: string | undefined;
  createdAt: string;
  /** The root key and version that wrap the DEK stored in the backup. */
  keyId: string;
  keyVersion: number;
  backupKeyHash: string;
  /**
   * The root-key version wrapping the backup key inside the file; undefined when the file does
   * not carry its backup key (format 1), whose restore needs the key registered or imported.
   */
  backupKeyVersion: number | undefined;
  /** The root key wrapping the backup key inside the file (format 2). */
  backupKeyId: string | undefined;
  /** Bytes of the backed-up data; undefined for a stream's file (format 3), whose length the header cannot know. */
  plainBytes: number | undefined;
  /** An engine that encrypts its pages with its own key (MariaDB): the versions of it the pages inside are under. */
  engineKeys?: { keyId: number; oldestVersion: number; latestVersion: number };
}

/**
 * How much a test restore checks, besides what every restore proves (each chunk authenticated
 * under the backup key, the chunks in order and complete, the integrity value as recorded, the
 * DEK of the header opens the restored database, its tables and rows counted):
 * - `full` also runs the database's own consistency check over every page (SQLite quick_check),
 *   which reads and decrypts the whole database a second time; drills, `backup verify` and
 *   restores run it;
 * - `authenticated` does not: the chunk tags already prove the bytes are those the backup read
 *   from the database under a read transaction. The nightly test restore runs it.
 */
export type RestoreCheckLevel = 'full' | 'authenticated';

/** A backup to read: its file, the integrity value its catalog recorded, how much to check. */
export type BackupToRead = Pick<BackupImage, 'path'> & { sha256?: string | undefined; check?: RestoreCheckLevel | undefined };

/** A backup file checked end to end from the file and the KMS alone. */
export interface VerifiedBackupFile {
  check: RestoreCheck;
  /** The file's integrity value as read (see backup-file-format.ts): what a catalog records. */
  sha256: string;
  description: BackupDescription;
}

/** Called as work advances, e.g. to heartbeat; `total` is in the same unit as `done`. */
export type Progress = (done: number, total: number) => void;

/**
 * What an engine can do beyond back up, verify and restore. An engine that cannot is refused with
 * a message naming the engine and why, never half-done.
 */
export interface EngineCapabilities {
  /** Rewrap the database's WDEKs under the latest root-key version (data pages untouched). */
  reprotect: boolean;
  /** A new DEK with every page re-encrypted. */
  regenerate: boolean;
  /** Backup keys staged, activated, exported and imported (rotate-backup-key). */
  stagedBackupKeys: boolean;
}

export interface DatabaseEngine {
  /** Per database: what the engine holding it supports (the embedded engine: everything). */
  supports?(databaseId: string): EngineCapabilities;
  /** An engine whose backups are its own native images (not keyops' format): whether `path` is one of its database's. */
  ownsBackupFile?(path: string): Promise<boolean>;
  /** The keys these engines read themselves and re-encrypt their pages under, by keyops key id. */
  engineKeys?(): ReadonlyMap<string, EngineKey>;
  keyState(databaseId: string): Promise<DatabaseKeyState>;
  /**
   * Writes an encrypted backup to `path` (atomically: a partial file never carries the final
   * name). Refuses with KEY_IN_TRANSITION while the database's keys are between versions.
   */
  backup(databaseId: string, path: string, progress?: Progress, label?: { backupId: string; night: string }): Promise<BackupImage>;
  /**
   * Checks the file (against its recorded checksum when given) and restores it to a scratch file
   * that must open.
   */
  verifyBackup(image: BackupToRead, progress?: Progress): Promise<RestoreCheck>;
  /** verifyBackup, also answering what the file is and its checksum: a catalog rebuilt from files. */
  verifyBackupFile(image: BackupToRead, progress?: Progress): Promise<VerifiedBackupFile>;
  /** Reads a backup file's header (no key needed). */
  describeBackup(path: string): Promise<BackupDescription>;
  /** Restores a backup as a database file at `targetPath` (never over an existing file). */
  restore(image: BackupToRead, targetPath: string, progress?: Progress): Promise<RestoreCheck>;
  /** A new backup key, not yet used for backups (idempotent: an existing pending key is returned). */
  createPendingBackupKey(databaseId: string): Promise<string>;
  /** The material of one backup key, for its passphrase-protected export. Never log or return it. */
  backupKeyMaterial(databaseId: string, hash: string): Promise<Buffer>;
  /** Makes a (pending) backup key the one later backups use; the previous one stays, retired. */
  activateBackupKey(databaseId: string, hash: string): Promise<void>;
  /** A new DEK with every data page re-encrypted under it: long, reports progress; backups wait. */
  regenerate(databaseId: string, progress?: Progress): Promise<DatabaseKeyState>;
  /** Whether the backup key with this hash is still available to decrypt backups. */
  hasBackupKey(databaseId: string, hash: string): boolean;
  /**
   * Makes a backup key from its export file usable again (wrapped under the database's root key,
   * or `keyId` for a database the engine does not hold). Idempotent. Never log `material`.
   */
  importBackupKey(databaseId: string, material: Buffer, keyId?: string): Promise<{ hash: string; keyId: string; keyVersion: number; alreadyRegistered: boolean }>;
  /** Rewraps the database's WDEKs under the latest root-key version; data pages stay as they are. */
  reprotect(databaseId: string): Promise<DatabaseKeyState>;
  /** After a rewrap moved WDEKs of `keyId` elsewhere (the registry): the engine's own records follow. */
  followRewrap(keyId: string): Promise<void>;
}
