import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { link, open, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import Database from 'better-sqlite3-multiple-ciphers';
import type { KeyManagementService } from '../kms/key-management-service';
import { KmsError } from '../kms/kms-error';
import type { WdekRegistry, WdekRecord } from '../wdek-registry/wdek-registry';
import type { BackupDescription, BackupImage, BackupToRead, DatabaseEngine, DatabaseKeyState, Progress, RestoreCheck, RestoreCheckLevel, VerifiedBackupFile } from './database-engine';
import { BackgroundSync, type BackupHeader, describeHeader, readBackupFile, readBackupHeader, syncDirectory, writeBackupFile } from './backup-file-format';
import { type DatabaseKeyFile, type KeyFileWdek, databaseKeyFileSchema, keyFileFormat, readKeyFile, writeKeyFile } from './database-key-file';
import { InspectError, inspectInThread } from './inspect-thread';
import { openKeyed } from './open-keyed';
import { copyUnderNewKey } from './sqlite-rekey';
import { EngineError } from './engine-error';
import { processAlive } from '../process-alive';
import { enableWal } from '../sqlite-wal';

const DATABASE_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/;

export const dekWdekId = (databaseId: string) => `db/${databaseId}/dek`;
/** The DEK a regeneration is moving the database to, until it takes the place of `dek`. */
const nextDekWdekId = (databaseId: string) => `db/${databaseId}/dek-next`;
export const backupKeyWdekId = (databaseId: string, hash: string) => `db/${databaseId}/backup-key/${hash}`;
const keyHash = (material: Buffer) => createHash('sha256').update(material).digest('hex');
const KEY_FILE_SUFFIX = '.keys.json';

const toFileWdek = (r: WdekRecord): KeyFileWdek => ({ id: r.id, keyId: r.keyId, keyVersion: r.keyVersion, wdek: r.wdek.toString('base64'), owner: r.owner });
const fromFileWdek = (w: KeyFileWdek): WdekRecord => ({ id: w.id, keyId: w.keyId, keyVersion: w.keyVersion, wdek: Buffer.from(w.wdek, 'base64'), owner: w.owner });

async function fileSha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  const file = await open(path, 'r');
  try {
    for await (const chunk of file.createReadStream({ highWaterMark: 4 * 1024 * 1024, autoClose: false })) hash.update(chunk as Buffer);
  } finally {
    await file.close();
  }
  return hash.digest('hex');
}

function checkDatabaseId(databaseId: unknown): string {
  if (typeof databaseId !== 'string' || !DATABASE_ID.test(databaseId)) {
    throw new EngineError('INVALID_CONFIGURATION', `database id ${JSON.stringify(databaseId)} must be 1 to 63 characters: a-z, 0-9, "_" or "-", starting with a letter or digit`);
  }
  return databaseId;
}

/**
 * Whether the file opens with this DEK: 'no' only when SQLite says the key is wrong, 'unknown'
 * when it could not tell (busy, no such file, out of descriptors). Decisions that drop a key
 * must see 'yes' for the key they keep.
 */
function opensWith(path: string, dek: Buffer): 'yes' | 'no' | 'unknown' {
  try {
    openKeyed(path, dek, { fileMustExist: true }).close();
    return 'yes';
  } catch (err) {
    return (err as { code?: string }).code === 'SQLITE_NOTADB' ? 'no' : 'unknown';
  }
}

/** What a key file and the registry hold for one id, when they differ, and which one to keep. */
interface Decision {
  id: string;
  registry: WdekRecord;
  file: WdekRecord;
  keep: 'registry' | 'file';
  /** Both wrap the same key (a rewrap): the other one may go. */
  sameKey: boolean;
}

interface DatabaseRow {
  database_id: string;
  key_id: string;
  created_at: string;
  key_change: string | null;
}

/**
 * The embedded engine: each database is a SQLCipher-encrypted SQLite file whose DEK exists on
 * disk only as a WDEK, so opening it needs the KMS. The WDEKs live in the registry (where
 * rewraps move them) and in the database's key file beside it (database-key-file.ts), from which
 * a lost registry or engine metadata is rebuilt. Backups are the encrypted file, re-encrypted
 * under a backup key, with the DEK's and the backup key's WDEKs in the header: an old backup
 * restores from its file and the KMS alone, after any number of rotations, as retired versions
 * unwrap. Databases use a rollback journal, so a read transaction freezes the file for a raw copy.
 */
export class EncryptedSqliteEngine implements DatabaseEngine {
  private readonly meta: Database.Database;
  private readonly busy = new Map<string, Promise<unknown>>();

  private constructor(
    private readonly dir: string,
    private readonly kms: KeyManagementService,
    private readonly registry: WdekRegistry,
    private readonly backupFormat: 2 | 4 | undefined,
  ) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const path = join(dir, 'engine.sqlite');
    const created = !existsSync(path);
    this.meta = new Database(path);
    if (created) chmodSync(path, 0o600);
    enableWal(this.meta);
    this.meta.pragma('busy_timeout = 5000');
    // Every commit durable before the engine goes on: a backup key or a DEK change recorded here
    // is followed by fsynced files (key files, backups) that must never outlive their record.
    this.meta.pragma('synchronous = FULL');
    this.meta.exec(`
      CREATE TABLE IF NOT EXISTS databases (
        database_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        key_change TEXT
      );
      CREATE TABLE IF NOT EXISTS backup_keys (
        database_id TEXT NOT NULL,
        hash TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'retired')),
        created_at TEXT NOT NULL,
        PRIMARY KEY (database_id, hash)
      );
    `);
  }

  /**
   * `dir` holds the database files, their key files and the engine's metadata (no key material).
   * Opening reconciles the three: a database known only by its key file is adopted, WDEKs missing
   * from the registry are registered again, and a database without a key file gets one.
   */
  /**
   * `backupFormat: 2` writes backups as keyops did before format 4 (a whole-file SHA-256): for
   * the tests that prove such files still restore, and the benchmark's before-and-after figures.
   */
  static open(options: { dir: string; kms: KeyManagementService; registry: WdekRegistry; backupFormat?: 2 | 4 }): EncryptedSqliteEngine {
    const engine = new EncryptedSqliteEngine(options.dir, options.kms, options.registry, options.backupFormat);
    try {
      engine.recovered = engine.reconcile();
      engine.sweepScratch();
    } catch (err) {
      engine.close();
      throw err;
    }
    return engine;
  }

  /**
   * What opening had to rebuild (databases adopted from key files, WDEKs registered again) and
   * key files it could not use (named, not fatal: one stray copy must not stop every database).
   */
  recovered: { databases: string[]; wdeks: number; problems: string[] } = { databases: [], wdeks: 0, problems: [] };

  private reconcile(): { databases: string[]; wdeks: number; problems: string[] } {
    const adopted: string[] = [];
    const problems: string[] = [];
    let wdeks = 0;
    // Under the metadata lock, which every key-file writer holds: a temporary seen here is a
    // crash's leftover, not another process's file about to be renamed.
    this.meta
      .transaction(() => {
        for (const name of readdirSync(this.dir)) if (name.includes(`${KEY_FILE_SUFFIX}.partial-`)) rmSync(join(this.dir, name), { force: true });
      })
      .immediate();
    for (const name of readdirSync(this.dir)) {
      if (!name.endsWith(KEY_FILE_SUFFIX)) continue;
      const path = join(this.dir, name);
      this.meta
        .transaction(() => {
          let file;
          try {
            file = readKeyFile(path);
            if (file && `${file.databaseId}${KEY_FILE_SUFFIX}` !== name) throw new EngineError('INVALID_CONFIGURATION', `${path} names database ${file.databaseId}; it belongs beside ${file.databaseId}.db`);
          } catch (err) {
            problems.push(err instanceof Error ? err.message : String(err));
            return;
          }
          if (!file) return;
          const known = this.meta.prepare('SELECT 1 FROM databases WHERE database_id = ?').get(file.databaseId);
          if (!known) {
            this.meta
              .prepare('INSERT INTO databases (database_id, key_id, created_at, key_change) VALUES (?, ?, ?, ?)')
              .run(file.databaseId, file.keyId, file.createdAt, file.keyChange);
            adopted.push(file.databaseId);
          }
          const addKey = this.meta.prepare('INSERT OR IGNORE INTO backup_keys (database_id, hash, state, created_at) VALUES (?, ?, ?, ?)');
          for (const k of file.backupKeys) addKey.run(file.databaseId, k.hash, k.state, k.createdAt);
          // A WDEK the registry lacks comes back; one it holds differently is decided, with
          // proof, the next time the database's keys are read (keyState).
          for (const w of file.wdeks) {
            if (this.registry.get(w.id)) continue;
            this.registry.register(fromFileWdek(w));
            wdeks++;
          }
        })
        .immediate();
    }
    // Databases created before key files existed: write theirs now, from the registry.
    for (const { database_id: id } of this.meta.prepare<[], { database_id: string }>('SELECT database_id FROM databases').all()) {
      if (!existsSync(this.keyFilePath(id))) this.meta.transaction(() => this.syncKeyFile(id)).immediate();
    }
    return { databases: adopted, wdeks, problems };
  }

  /** The database's key file: its WDEKs, beside its data file. */
  keyFilePath(databaseId: string): string {
    return join(this.dir, `${checkDatabaseId(databaseId)}${KEY_FILE_SUFFIX}`);
  }

  /**
   * Writes the key file from the metadata and the WDEKs, writing only on a change. Runs inside an
   * IMMEDIATE metadata transaction: that lock serializes every process's writes.
   *
   * For each id the key file keeps its own WDEK unless the registry's is `trusted` (the engine
   * itself just made it: a reprotect, a regeneration's swap) or the key file has none. A WDEK the
   * registry lacks is registered again from the key file, never dropped. A registry WDEK that
   * differs and is not trusted waits for `followRegistry`, which decides with proof. Only ids in
   * `without` (a DEK a regeneration gave up or replaced) leave the file.
   */
  private syncKeyFile(databaseId: string, options: { without?: readonly string[]; trusted?: readonly string[]; superseded?: readonly WdekRecord[] } = {}): void {
    const { without = [], trusted = [], superseded = [] } = options;
    const row = this.requireDatabase(databaseId);
    const id = row.database_id;
    const path = this.keyFilePath(id);
    const existing = readKeyFile(path);
    const backupKeys = this.meta
      .prepare<[string], { hash: string; state: 'pending' | 'active' | 'retired'; created_at: string }>('SELECT hash, state, created_at FROM backup_keys WHERE database_id = ? ORDER BY created_at, hash')
      .all(id);
    const ids = [dekWdekId(id), nextDekWdekId(id), ...backupKeys.map((k) => backupKeyWdekId(id, k.hash))].filter((w) => !without.includes(w));
    const wdeks: KeyFileWdek[] = [];
    for (const wid of ids) {
      const registered = this.registry.get(wid);
      const kept = existing?.wdeks.find((w) => w.id === wid);
      if (registered && (!kept || trusted.includes(wid))) {
        wdeks.push(toFileWdek(registered));
      } else if (kept) {
        if (!registered) this.registry.register(fromFileWdek(kept));
        wdeks.push(kept);
      }
    }
    const keptSuperseded = [...(existing?.superseded ?? []), ...superseded.map(toFileWdek)];
    const content: DatabaseKeyFile = databaseKeyFileSchema.parse({
      format: keyFileFormat,
      databaseId: id,
      keyId: row.key_id,
      createdAt: row.created_at,
      keyChange: row.key_change,
      wdeks,
      superseded: keptSuperseded.filter((w, i) => keptSuperseded.findIndex((x) => x.wdek === w.wdek) === i),
      backupKeys: backupKeys.map((k) => ({ hash: k.hash, state: k.state, createdAt: k.created_at })),
    });
    if (existing && JSON.stringify(existing) === JSON.stringify(content)) return;
    writeKeyFile(path, content);
  }

  /** Runs `fn` and then brings the database's key file up to date, under the metadata write lock. */
  private recordKeys<T>(databaseId: string, fn: () => T, options: { without?: readonly string[]; trusted?: readonly string[]; superseded?: readonly WdekRecord[] } = {}): T {
    return this.meta
      .transaction(() => {
        const result = fn();
        this.syncKeyFile(databaseId, options);
        return result;
      })
      .immediate();
  }

  /**
   * Settles every difference between the registry and the key file with proof, then writes both.
   * Rewraps move the registry's WDEKs (same key, newer version): the key file follows once both
   * unwrap to the same key. Otherwise one of them is stale (a registry or a data directory
   * restored from an older copy): the one that opens the data file (DEK) or matches its hash
   * (backup key) is kept in both places, and the other stays in the key file as superseded.
   */
  private async followRegistry(databaseId: string): Promise<void> {
    const row = this.requireDatabase(databaseId);
    const id = row.database_id;
    const file = readKeyFile(this.keyFilePath(id));
    const decisions: Decision[] = [];
    for (const kept of file?.wdeks ?? []) {
      const registered = this.registry.get(kept.id);
      if (!registered || registered.wdek.equals(Buffer.from(kept.wdek, 'base64'))) continue;
      decisions.push(await this.decide(row, registered, fromFileWdek(kept)));
    }
    this.recordKeys(
      id,
      () => {
        for (const d of decisions) {
          // Decided on what the registry held then; a change since is decided on the next call.
          const now = this.registry.get(d.id);
          if (!now?.wdek.equals(d.registry.wdek)) continue;
          if (d.keep === 'file') this.registry.register(d.file);
        }
      },
      {
        trusted: decisions.filter((d) => d.keep === 'registry' && this.registry.get(d.id)?.wdek.equals(d.registry.wdek)).map((d) => d.id),
        superseded: decisions.filter((d) => !d.sameKey).map((d) => (d.keep === 'registry' ? d.file : d.registry)),
      },
    );
  }

  private async decide(row: DatabaseRow, registry: WdekRecord, file: WdekRecord): Promise<Decision> {
    const open = async (r: WdekRecord) => (await this.kmsCall(() => this.kms.unwrapBatch(r.keyId, [r.wdek])))[0];
    const [a, b] = [await open(registry), await open(file)];
    const keyA = a instanceof KmsError || !a ? undefined : a.dek;
    const keyB = b instanceof KmsError || !b ? undefined : b.dek;
    try {
      const newer: 'registry' | 'file' = registry.keyVersion >= file.keyVersion ? 'registry' : 'file';
      if (keyA && keyB && keyA.equals(keyB)) return { id: registry.id, registry, file, keep: newer, sameKey: true };
      const fits = (dek: Buffer | undefined): boolean => {
        if (!dek) return false;
        const hash = /\/backup-key\/([0-9a-f]{64})$/.exec(registry.id)?.[1];
        return hash ? keyHash(dek) === hash : opensWith(this.databasePath(row.database_id), dek) === 'yes';
      };
      // Neither proven: the key file's stays (it is written before any data is encrypted).
      const keep = fits(keyA) && !fits(keyB) ? 'registry' : 'file';
      return { id: registry.id, registry, file, keep, sameKey: false };
    } finally {
      keyA?.fill(0);
      keyB?.fill(0);
    }
  }

  /**
   * Brings the key files of every database protected by `keyId` up to the registry after a
   * rewrap, so that a registry lost afterwards is rebuilt at the rewrapped versions.
   */
  async followRewrap(keyId: string): Promise<void> {
    const ids = this.meta.prepare<[string], { database_id: string }>('SELECT database_id FROM databases WHERE key_id = ?').all(keyId);
    for (const { database_id: id } of ids) await this.followRegistry(id);
  }

  close(): void {
    this.meta.close();
  }

  databasePath(databaseId: string): string {
    return join(this.dir, `${checkDatabaseId(databaseId)}.db`);
  }

  listDatabases(): { databaseId: string; keyId: string; createdAt: string }[] {
    return this.meta
      .prepare<[], DatabaseRow>('SELECT * FROM databases ORDER BY database_id')
      .all()
      .map((r) => ({ databaseId: r.database_id, keyId: r.key_id, createdAt: r.created_at }));
  }

  /**
   * A new encrypted database protected by root key `keyId`, with its first backup key active.
   * The name is claimed in one metadata transaction that also writes the key file, before the
   * registry or the data file are touched: of two concurrent creations (in any processes) one
   * wins and the other fails DATABASE_EXISTS having changed nothing, so a WDEK that encrypts
   * data is never replaced.
   */
  async createDatabase(databaseId: string, keyId: string): Promise<DatabaseKeyState> {
    const id = checkDatabaseId(databaseId);
    const path = this.databasePath(id);
    const holders = () =>
      [
        this.meta.prepare('SELECT 1 FROM databases WHERE database_id = ?').get(id) !== undefined ? 'the engine metadata' : '',
        existsSync(path) ? `the data file ${path}` : '',
        existsSync(this.keyFilePath(id)) ? `the key file ${this.keyFilePath(id)}` : '',
      ].filter(Boolean);
    const exists = (found: string[]) => new EngineError('DATABASE_EXISTS', `database ${id} already exists (${found.join(', ')})`);
    if (holders().length > 0) throw exists(holders());
    const { dek, wdek, keyVersion } = await this.kmsCall(() => this.kms.wrap(keyId));
    const material = randomBytes(32);
    try {
      const hash = keyHash(material);
      const backupKey = await this.kmsCall(() => this.kms.wrap(keyId, material));
      const records: WdekRecord[] = [
        { id: dekWdekId(id), keyId, keyVersion, wdek, owner: `database ${id}` },
        { id: backupKeyWdekId(id, hash), keyId, keyVersion: backupKey.keyVersion, wdek: backupKey.wdek, owner: `backup key of database ${id}` },
      ];
      const now = new Date().toISOString();
      this.meta
        .transaction(() => {
          const found = holders();
          if (found.length > 0) throw exists(found);
          writeKeyFile(this.keyFilePath(id), {
            format: keyFileFormat,
            databaseId: id,
            keyId,
            createdAt: now,
            keyChange: null,
            wdeks: records.map(toFileWdek),
            backupKeys: [{ hash, state: 'active', createdAt: now }],
          });
          try {
            this.meta.prepare('INSERT INTO databases (database_id, key_id, created_at) VALUES (?, ?, ?)').run(id, keyId, now);
            this.meta.prepare(`INSERT INTO backup_keys (database_id, hash, state, created_at) VALUES (?, ?, 'active', ?)`).run(id, hash, now);
          } catch (err) {
            // The claim rolls back: its key file goes with it, or a retry would find the name taken.
            rmSync(this.keyFilePath(id), { force: true });
            throw err;
          }
        })
        .immediate();
      this.registry.registerMany(records);
      const db = openKeyed(path, dek);
      chmodSync(path, 0o600);
      db.close();
    } finally {
      dek.fill(0);
      material.fill(0);
    }
    return this.keyState(id);
  }

  /** Runs `fn` on the open, keyed database (the application's view, for demos and tests). */
  async withDatabase<T>(databaseId: string, fn: (db: Database.Database) => T): Promise<T> {
    const row = this.requireDatabase(databaseId);
    return this.exclusive(row.database_id, () => this.openAndRun(row, fn));
  }

  private async openAndRun<T>(row: DatabaseRow, fn: (db: Database.Database) => T): Promise<T> {
    const { dek } = await this.liveDek(row);
    try {
      const db = openKeyed(this.databasePath(row.database_id), dek);
      try {
        return fn(db);
      } finally {
        db.close();
      }
    } finally {
      dek.fill(0);
    }
  }

  async keyState(databaseId: string): Promise<DatabaseKeyState> {
    const row = this.requireDatabase(databaseId);
    // Rewraps move the registry's WDEKs; the key file follows here, the next time anyone looks.
    await this.followRegistry(row.database_id);
    const wdeks = this.wdeksOf(row);
    const active = this.meta
      .prepare<[string], { hash: string }>(`SELECT hash FROM backup_keys WHERE database_id = ? AND state = 'active'`)
      .get(row.database_id);
    if (!active) throw new EngineError('INVALID_CONFIGURATION', `database ${row.database_id} has no active backup key`);
    return {
      databaseId: row.database_id,
      keyId: row.key_id,
      wdekVersions: wdeks.map((w) => w.keyVersion),
      keyChangeInProgress: row.key_change !== null,
      backupKeyHash: active.hash,
    };
  }

  /**
   * Runs `fn` alone among this process's users of the database: a regeneration's swap of the
   * file must not race a write, which would land in the file being replaced and be lost.
   */
  private async exclusive<T>(databaseId: string, fn: () => Promise<T>): Promise<T> {
    const before = this.busy.get(databaseId) ?? Promise.resolve();
    const mine = before.then(fn, fn);
    const settled = mine.then(
      () => undefined,
      () => undefined,
    );
    this.busy.set(databaseId, settled);
    try {
      return await mine;
    } finally {
      if (this.busy.get(databaseId) === settled) this.busy.delete(databaseId);
    }
  }

  async backup(databaseId: string, path: string, progress?: Progress, label?: { backupId: string; night: string }): Promise<BackupImage> {
    // Alone with the database in this process: a regeneration's swap cannot slip in between the
    // key checks and the copy, and the header names the DEK the copied pages are under.
    const id = this.requireDatabase(databaseId).database_id;
    return this.exclusive(id, () => this.backupAlone(id, path, progress, label));
  }

  private async backupAlone(databaseId: string, path: string, progress?: Progress, label?: { backupId: string; night: string }): Promise<BackupImage> {
    const state = await this.keyState(databaseId);
    const row = this.requireDatabase(databaseId);
    if (state.keyChangeInProgress) {
      throw new EngineError('KEY_IN_TRANSITION', `database ${row.database_id} is being re-encrypted under a new DEK (${row.key_change}); back it up afterwards`);
    }
    const key = await this.kmsCall(() => this.kms.getKeyMetadata(row.key_id));
    const behind = state.wdekVersions.filter((v) => v < key.currentVersion);
    if (behind.length > 0) {
      // Like Db2 during a Key Protect rotation (reference 000): the keys are between versions,
      // and a backup now would record a key state that is already being replaced.
      throw new EngineError(
        'KEY_IN_TRANSITION',
        `database ${row.database_id}: root key ${row.key_id} is at version ${key.currentVersion} but ${behind.length} of its WDEKs are still on version ${Math.min(...behind)}; the rewrap is in progress`,
      );
    }
    const backupKeyRecord = this.requireWdek(backupKeyWdekId(row.database_id, state.backupKeyHash));
    const backupKey = await this.backupKey(row.database_id, state.backupKeyHash);
    const { record: dekRecord, dek } = await this.liveDek(row);
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    try {
      // A read transaction holds SQLite's shared lock: no writer can commit into the file while
      // its raw bytes are copied, so the copy is one consistent state.
      const db = openKeyed(this.databasePath(row.database_id), dek, { readonly: true });
      const source = await open(this.databasePath(row.database_id), 'r');
      try {
        db.exec('BEGIN');
        db.prepare('SELECT count(*) FROM sqlite_master').get();
        const { size } = await source.stat();
        const createdAt = new Date().toISOString();
        const night = label?.night ?? createdAt.slice(0, 10);
        const written = await writeBackupFile({
          path,
          header: {
            databaseId: row.database_id,
            backupId: label?.backupId ?? `backup/${row.database_id}/${night}`,
            night,
            createdAt,
            keyId: row.key_id,
            keyVersion: dekRecord.keyVersion,
            wdek: dekRecord.wdek.toString('base64'),
            backupKeyHash: state.backupKeyHash,
            backupKey: { keyId: backupKeyRecord.keyId, keyVersion: backupKeyRecord.keyVersion, wdek: backupKeyRecord.wdek.toString('base64') },
          },
          plainBytes: size,
          read: async (buffer, length, position) => (await source.read(buffer, 0, length, position)).bytesRead,
          key: backupKey,
          ...(progress ? { progress } : {}),
          ...(this.backupFormat ? { format: this.backupFormat } : {}),
        });
        return {
          databaseId: row.database_id,
          path,
          bytes: written.bytes,
          sha256: written.sha256,
          keyId: row.key_id,
          keyVersion: dekRecord.keyVersion,
          backupKeyHash: state.backupKeyHash,
          createdAt,
        };
      } finally {
        if (db.inTransaction) db.exec('COMMIT');
        db.close();
        await source.close();
      }
    } finally {
      dek.fill(0);
      backupKey.fill(0);
    }
  }

  async verifyBackup(image: BackupToRead, progress?: Progress): Promise<RestoreCheck> {
    return (await this.verifyBackupFile(image, progress)).check;
  }

  async verifyBackupFile(image: BackupToRead, progress?: Progress): Promise<VerifiedBackupFile> {
    // In the engine's own directory: the backup's may be read-only (an import from a mount).
    // Named with this process's id, so a sweep can tell a dead process's leftover from a live one's.
    const scratchDir = this.sweepScratch();
    const scratch = join(scratchDir, `${basename(image.path)}.verify-${process.pid}-${randomBytes(4).toString('hex')}.db`);
    try {
      const { check, header, sha256 } = await this.restoreTo(image, scratch, progress);
      return { check, sha256, description: describeHeader(header) };
    } finally {
      await rm(scratch, { force: true });
    }
  }

  /**
   * Removes test-restore scratch files whose process is gone (killed mid-verify: its `finally`
   * never ran), at engine start and before every verify. Returns the scratch directory.
   */
  sweepScratch(): string {
    const scratchDir = join(this.dir, 'scratch');
    mkdirSync(scratchDir, { recursive: true, mode: 0o700 });
    for (const name of readdirSync(scratchDir)) {
      const pid = Number(/\.verify-(\d+)-[0-9a-f]+\.db(?:-journal)?$/.exec(name)?.[1]);
      if (!pid || pid === process.pid || processAlive(pid)) continue;
      rmSync(join(scratchDir, name), { force: true });
    }
    return scratchDir;
  }

  async describeBackup(path: string): Promise<BackupDescription> {
    return describeHeader(await readBackupHeader(path));
  }

  async restore(image: BackupToRead, targetPath: string, progress?: Progress): Promise<RestoreCheck> {
    mkdirSync(dirname(targetPath), { recursive: true, mode: 0o700 });
    // An earlier attempt killed mid-restore (its `finally` never ran) left its partial file here.
    const prefix = `${basename(targetPath)}.partial-`;
    for (const name of readdirSync(dirname(targetPath))) {
      const pid = name.startsWith(prefix) ? Number(/^(\d+)-[0-9a-f]+$/.exec(name.slice(prefix.length))?.[1]) : 0;
      if (pid && pid !== process.pid && !processAlive(pid)) rmSync(join(dirname(targetPath), name), { force: true });
    }
    const partial = `${targetPath}.partial-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      const { check } = await this.restoreTo(image, partial, progress);
      // link() publishes without ever replacing: a file that appeared at the target meanwhile
      // (another restore, the operator) stays. The same bytes there mean an earlier attempt of
      // this restore got that far before its worker died: done.
      try {
        await link(partial, targetPath);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        if ((await fileSha256(targetPath)) !== (await fileSha256(partial))) {
          throw new EngineError('INVALID_CONFIGURATION', `restore target ${targetPath} exists; restore never overwrites a file`);
        }
      }
      await syncDirectory(targetPath);
      return check;
    } finally {
      await rm(partial, { force: true });
    }
  }

  async reprotect(databaseId: string): Promise<DatabaseKeyState> {
    const row = this.requireDatabase(databaseId);
    // Settled first: what is rewrapped here is trusted into the key file as it is.
    await this.followRegistry(row.database_id);
    const records = this.wdeksOf(row);
    const results = await this.kmsCall(() => this.kms.rewrapBatch(row.key_id, records.map((r) => r.wdek)));
    const updates = records.map((record, i) => {
      const result = results[i]!;
      if (result instanceof KmsError) throw new EngineError('KEY_UNAVAILABLE', `WDEK ${record.id} does not unwrap: ${result.message}`);
      return { id: record.id, wdek: result.wdek, keyVersion: result.keyVersion, expectedVersion: record.keyVersion, expectedWdek: record.wdek };
    });
    // Rewrapped here: the same keys under a newer version, so the key file takes them as they are.
    this.recordKeys(row.database_id, () => this.registry.update(updates), { trusted: records.map((r) => r.id) });
    return this.keyState(row.database_id);
  }

  async createPendingBackupKey(databaseId: string): Promise<string> {
    const row = this.requireDatabase(databaseId);
    const pending = this.meta
      .prepare<[string], { hash: string }>(`SELECT hash FROM backup_keys WHERE database_id = ? AND state = 'pending'`)
      .get(row.database_id);
    return pending?.hash ?? this.addBackupKey(row.database_id, 'pending');
  }

  backupKeyMaterial(databaseId: string, hash: string): Promise<Buffer> {
    return this.backupKey(this.requireDatabase(databaseId).database_id, hash);
  }

  activateBackupKey(databaseId: string, hash: string): Promise<void> {
    const row = this.requireDatabase(databaseId);
    this.recordKeys(row.database_id, () => {
      const key = this.meta.prepare<[string, string], { state: string }>('SELECT state FROM backup_keys WHERE database_id = ? AND hash = ?').get(row.database_id, hash);
      if (!key) throw new EngineError('BACKUP_KEY_MISSING', `database ${row.database_id} has no backup key ${hash.slice(0, 12)}…`);
      if (key.state === 'active') return;
      this.meta.prepare(`UPDATE backup_keys SET state = 'retired' WHERE database_id = ? AND state = 'active'`).run(row.database_id);
      this.meta.prepare(`UPDATE backup_keys SET state = 'active' WHERE database_id = ? AND hash = ?`).run(row.database_id, hash);
    });
    return Promise.resolve();
  }

  hasBackupKey(databaseId: string, hash: string): boolean {
    return this.registry.get(backupKeyWdekId(databaseId, hash)) !== undefined || this.keyFileWdek(databaseId, backupKeyWdekId(databaseId, hash)) !== undefined;
  }

  /**
   * Registers a backup key read from its export file again (`keyops backup key import`), wrapped
   * under the database's root key (or `keyId` for a database this engine does not hold), so that
   * backups whose files do not carry their backup key (format 1) restore. Idempotent.
   */
  async importBackupKey(databaseId: string, material: Buffer, keyId?: string): Promise<{ hash: string; keyId: string; keyVersion: number; alreadyRegistered: boolean }> {
    const id = checkDatabaseId(databaseId);
    const hash = keyHash(material);
    const wid = backupKeyWdekId(id, hash);
    const row = this.meta.prepare<[string], DatabaseRow>('SELECT * FROM databases WHERE database_id = ?').get(id);
    const rootKey = row?.key_id ?? keyId;
    if (!rootKey) {
      throw new EngineError('DATABASE_NOT_FOUND', `no database ${id} in this engine: name the root key to wrap its backup key under (--key)`);
    }
    if (row && keyId !== undefined && keyId !== row.key_id) {
      throw new EngineError('INVALID_CONFIGURATION', `database ${id} is protected by root key ${row.key_id}, not ${keyId}`);
    }
    const existing = this.registry.get(wid);
    if (existing) return { hash, keyId: existing.keyId, keyVersion: existing.keyVersion, alreadyRegistered: true };
    const { wdek, keyVersion } = await this.kmsCall(() => this.kms.wrap(rootKey, material));
    const record: WdekRecord = { id: wid, keyId: rootKey, keyVersion, wdek, owner: `backup key of database ${id} (imported)` };
    if (row) {
      this.recordKeys(id, () => {
        this.registry.register(record);
        this.meta.prepare(`INSERT OR IGNORE INTO backup_keys (database_id, hash, state, created_at) VALUES (?, ?, 'retired', ?)`).run(id, hash, new Date().toISOString());
      });
    } else {
      this.registry.register(record);
    }
    return { hash, keyId: rootKey, keyVersion, alreadyRegistered: false };
  }

  /**
   * A new DEK, and every page re-encrypted under it (sqlite-rekey.ts: a page copy rekeyed and
   * swapped in, never while another process holds the file). Writers wait for the duration (the
   * copy holds the write lock), and so do backups (keyState reports the key change). The new DEK
   * is in the key file before any page is encrypted under it. Resumable: a crash before the swap
   * leaves the old file and DEK in use and the copy starts again; a crash after it finishes the
   * registry swap. A refusal that a retry cannot fix (WAL mode, no disk space) ends the change.
   */
  async regenerate(databaseId: string, progress?: Progress): Promise<DatabaseKeyState> {
    const id = this.requireDatabase(databaseId).database_id;
    await this.followRegistry(id);
    const row = this.requireDatabase(id);
    const nextId = nextDekWdekId(id);
    const live = await this.liveDek(row);
    live.dek.fill(0);
    let next = live.record.id === nextId ? live.record : this.wdek(nextId);
    // A dek-next with no key change recorded, that the file is not under, is a leftover (a
    // registry or key file restored from an older copy): reusing it would "regenerate" to a key
    // that may already be in use. A fresh one replaces it.
    if (next && row.key_change === null && live.record.id !== nextId) next = undefined;
    if (!next) {
      const { dek, wdek, keyVersion } = await this.kmsCall(() => this.kms.wrap(row.key_id));
      dek.fill(0);
      next = { id: nextId, keyId: row.key_id, keyVersion, wdek, owner: `database ${id} (regenerating)` };
    }
    // The new DEK is in the key file before any page is encrypted under it.
    const record = next;
    this.recordKeys(
      id,
      () => {
        if (!this.registry.get(nextId)?.wdek.equals(record.wdek)) this.registry.register(record);
        this.meta.prepare('UPDATE databases SET key_change = ? WHERE database_id = ? AND key_change IS NULL').run(`DEK regeneration since ${new Date().toISOString()}`, id);
      },
      { trusted: [nextId] },
    );
    const newDek = (await this.kmsCall(() => this.kms.unwrap(next.keyId, next.wdek))).dek;
    const path = this.databasePath(id);
    await this.exclusive(id, async () => {
      try {
        if (opensWith(path, newDek) !== 'yes') {
          const { dek: oldDek, record: oldRecord } = await this.liveDek(row);
          try {
            await copyUnderNewKey({ path, oldDek, newDek, ...(progress ? { progress } : {}) });
          } catch (err) {
            // A refusal a retry cannot fix (WAL mode, no disk space): the database stays on its
            // old file and DEK, and backups must not wait for a change that is not coming. The
            // new DEK is dropped only once the file is proven to open with the one it keeps.
            if (err instanceof EngineError && !err.retryable && oldRecord.id !== nextId && opensWith(path, oldDek) === 'yes') {
              this.recordKeys(
                id,
                () => {
                  this.registry.remove(nextId);
                  this.meta.prepare('UPDATE databases SET key_change = NULL WHERE database_id = ?').run(id);
                },
                { without: [nextId] },
              );
            }
            throw err;
          } finally {
            oldDek.fill(0);
          }
        }
      } finally {
        newDek.fill(0);
      }
      // The file is under the new DEK: make it the database's DEK, then end the key change. The
      // records are read again: a root-key rewrap during the copy may have moved them to a newer
      // version. Compare-and-set: if another process changed the DEK record meanwhile, stop with
      // dek-next kept; the file opens with it (liveDek), and a retry swaps again.
      this.recordKeys(
        id,
        () => {
          const latest = this.requireWdek(nextId);
          const current = this.requireWdek(dekWdekId(id));
          const swapped = this.registry.update([{ id: current.id, wdek: latest.wdek, keyVersion: latest.keyVersion, expectedVersion: current.keyVersion, expectedWdek: current.wdek }]);
          if (swapped !== 1) {
            throw new EngineError('KEY_IN_TRANSITION', `the DEK record of database ${id} changed while its regeneration swapped it; the new DEK stays recorded as ${nextId} and the database opens with it: retry`);
          }
          this.registry.remove(nextId);
          this.meta.prepare('UPDATE databases SET key_change = NULL WHERE database_id = ?').run(id);
        },
        { without: [nextId], trusted: [dekWdekId(id)] },
      );
    });
    return this.keyState(id);
  }

  /** Creates a backup key (wrapped by the database's root key); `pending` keys wait for activation. */
  async addBackupKey(databaseId: string, state: 'pending' | 'active'): Promise<string> {
    const row = this.requireDatabase(databaseId);
    const material = randomBytes(32);
    const hash = keyHash(material);
    try {
      const { wdek, keyVersion } = await this.kmsCall(() => this.kms.wrap(row.key_id, material));
      this.recordKeys(row.database_id, () => {
        this.registry.register({ id: backupKeyWdekId(row.database_id, hash), keyId: row.key_id, keyVersion, wdek, owner: `backup key of database ${row.database_id}` });
        this.meta.prepare('INSERT INTO backup_keys (database_id, hash, state, created_at) VALUES (?, ?, ?, ?)').run(row.database_id, hash, state, new Date().toISOString());
      });
    } finally {
      material.fill(0);
    }
    return hash;
  }

  private async restoreTo(image: BackupToRead, target: string, progress?: Progress): Promise<{ check: RestoreCheck; header: BackupHeader; sha256: string }> {
    const { header, sha256 } = await this.restoreFile(image, target, progress);
    return { check: await this.checkRestored(target, header, image.check ?? 'full', image.path, progress), header, sha256 };
  }

  /**
   * A restore's first half: every chunk decrypted and authenticated into `target` (created, never
   * replaced), the integrity value compared with the recorded one, and the file synced.
   */
  async restoreFile(image: BackupToRead, target: string, progress?: Progress): Promise<{ header: BackupHeader; sha256: string }> {
    const out = await open(target, 'wx', 0o600);
    // As the backup does: an fdatasync every 64 MiB keeps dirty pages from piling up for one
    // long fsync at the end.
    const sync = new BackgroundSync(out);
    try {
      const read = await readBackupFile({
        path: image.path,
        expectedSha256: image.sha256,
        keyFor: (h) => this.backupKeyOf(h),
        write: async (data, position) => {
          let written = 0;
          while (written < data.length) written += (await out.write(data, written, data.length - written, position + written)).bytesWritten;
          await sync.wrote(data.length);
        },
        ...(progress ? { progress } : {}),
      });
      await sync.finish();
      return read;
    } finally {
      await sync.settled();
      await out.close();
    }
  }

  /**
   * A restore's second half: the database restored at `target` opens with the DEK its backup
   * recorded (a retired root-key version still unwraps it), its rows are counted and, at level
   * `full`, SQLite's quick_check reads every page.
   */
  async checkRestored(target: string, header: BackupHeader, level: RestoreCheckLevel, backupPath: string, progress?: Progress): Promise<RestoreCheck> {
    const { dek } = await this.kmsCall(() => this.kms.unwrap(header.keyId, Buffer.from(header.wdek, 'base64')));
    try {
      // Anything but an explicit `authenticated` gets the full check: a mistyped level never skips it.
      return await inspectInThread(target, dek, () => progress?.(header.plainBytes ?? 0, header.plainBytes ?? 0), { quickCheck: level !== 'authenticated' });
    } catch (err) {
      if (err instanceof InspectError) throw new EngineError('BACKUP_INVALID', `the database restored from ${backupPath} fails SQLite's quick_check: ${err.message}`);
      throw new EngineError('BACKUP_INVALID', `backup ${backupPath} decrypts but does not open as database ${header.databaseId}: ${String(err)}`);
    } finally {
      dek.fill(0);
    }
  }

  private requireDatabase(databaseId: string): DatabaseRow {
    const row = this.meta.prepare<[string], DatabaseRow>('SELECT * FROM databases WHERE database_id = ?').get(checkDatabaseId(databaseId));
    if (!row) throw new EngineError('DATABASE_NOT_FOUND', `no database ${databaseId} in this engine`);
    return row;
  }

  /**
   * A WDEK from the registry, or from the database's key file when the registry lost it (then
   * registered again, under the metadata lock: a key file being rewritten by another process is
   * read only once it is whole, so a DEK it just retired does not come back).
   */
  private wdek(id: string): WdekRecord | undefined {
    const found = this.registry.get(id);
    if (found) return found;
    const databaseId = /^db\/([^/]+)\//.exec(id)?.[1] ?? '';
    if (!this.keyFileWdek(databaseId, id)) return undefined;
    return this.meta
      .transaction(() => {
        const again = this.registry.get(id);
        if (again) return again;
        const kept = this.keyFileWdek(databaseId, id);
        if (kept) this.registry.register(kept);
        return kept;
      })
      .immediate();
  }

  private keyFileWdek(databaseId: string, id: string): WdekRecord | undefined {
    if (!DATABASE_ID.test(databaseId)) return undefined;
    const kept = readKeyFile(this.keyFilePath(databaseId))?.wdeks.find((w) => w.id === id);
    return kept && fromFileWdek(kept);
  }

  private requireWdek(id: string): WdekRecord {
    const record = this.wdek(id);
    if (!record) throw new EngineError('INVALID_CONFIGURATION', `neither the WDEK registry nor the database's key file holds ${id}`);
    return record;
  }

  /** The database's DEK and backup keys, as registered (their versions are what rewrap moves). */
  private wdeksOf(row: DatabaseRow): WdekRecord[] {
    const hashes = this.meta.prepare<[string], { hash: string }>('SELECT hash FROM backup_keys WHERE database_id = ? ORDER BY created_at').all(row.database_id);
    return [dekWdekId(row.database_id), ...hashes.map((h) => backupKeyWdekId(row.database_id, h.hash))].map((id) => this.requireWdek(id));
  }

  /**
   * The DEK the database file is under now, and the WDEK that holds it: normally `dek`; between a
   * regeneration's file swap and its record swap (a crash, a lost compare-and-set) `dek-next`;
   * and where the registry and the key file disagree (one restored from an older copy), the one
   * that opens the file. With one candidate nothing is probed.
   */
  private async liveDek(row: DatabaseRow): Promise<{ record: WdekRecord; dek: Buffer }> {
    const id = row.database_id;
    const file = readKeyFile(this.keyFilePath(id));
    const candidates: WdekRecord[] = [];
    for (const wid of [dekWdekId(id), nextDekWdekId(id)]) {
      const kept = file?.wdeks.find((w) => w.id === wid);
      for (const record of [this.wdek(wid), kept && fromFileWdek(kept)]) {
        if (record && !candidates.some((c) => c.wdek.equals(record.wdek))) candidates.push(record);
      }
    }
    for (const w of file?.superseded ?? []) {
      if (w.id === dekWdekId(id) && !candidates.some((c) => c.wdek.equals(Buffer.from(w.wdek, 'base64')))) candidates.push(fromFileWdek(w));
    }
    const first = candidates[0];
    if (!first) throw new EngineError('INVALID_CONFIGURATION', `neither the WDEK registry nor the key file ${this.keyFilePath(id)} holds a DEK of database ${id}`);
    const path = this.databasePath(id);
    if (candidates.length === 1 || !existsSync(path)) return { record: first, dek: (await this.kmsCall(() => this.kms.unwrap(first.keyId, first.wdek))).dek };
    let unsure = false;
    for (const record of candidates) {
      const [result] = await this.kmsCall(() => this.kms.unwrapBatch(record.keyId, [record.wdek]));
      if (!result || result instanceof KmsError) continue;
      const opens = opensWith(path, result.dek);
      if (opens === 'yes') return { record, dek: result.dek };
      unsure ||= opens === 'unknown';
      result.dek.fill(0);
    }
    if (unsure) throw new EngineError('DATABASE_BUSY', `database ${id} could not be opened to find which of its DEKs it is under; try again`);
    throw new EngineError('INVALID_CONFIGURATION', `database ${id} opens with none of the ${candidates.length} DEKs its registry and key file hold`);
  }

  /** A backup's key: from its own header (format 2), else from the registry or key file. */
  private async backupKeyOf(header: BackupHeader): Promise<Buffer> {
    if (!header.backupKey) return this.backupKey(header.databaseId, header.backupKeyHash);
    const { keyId, wdek } = header.backupKey;
    const { dek } = await this.kmsCall(() => this.kms.unwrap(keyId, Buffer.from(wdek, 'base64')));
    if (keyHash(dek) !== header.backupKeyHash) {
      dek.fill(0);
      throw new EngineError('BACKUP_INVALID', `the backup key inside the backup of ${header.databaseId} does not match its hash ${header.backupKeyHash.slice(0, 12)}…`);
    }
    return dek;
  }

  private async backupKey(databaseId: string, hash: string): Promise<Buffer> {
    const record = this.wdek(backupKeyWdekId(databaseId, hash));
    if (!record) throw new EngineError('BACKUP_KEY_MISSING', `backup key ${hash.slice(0, 12)}… of database ${databaseId} is not in the key registry: import its key backup first (keyops backup key import FILE)`);
    const { dek } = await this.kmsCall(() => this.kms.unwrap(record.keyId, record.wdek));
    if (keyHash(dek) !== hash) throw new EngineError('BACKUP_KEY_MISSING', `the registered backup key ${hash.slice(0, 12)}… of database ${databaseId} does not match its hash`);
    return dek;
  }

  /** An unreachable KMS is the engine's "keystore not accessible" (Db2 SQL1728N): retryable. */
  private async kmsCall<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof KmsError && err.code === 'KMS_UNAVAILABLE') throw new EngineError('KEY_UNAVAILABLE', `the keystore could not be accessed: ${err.message}`);
      throw err;
    }
  }
}
