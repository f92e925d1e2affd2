import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync } from 'node:fs';
import { link, open, readdir, rename, rm } from 'node:fs/promises';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3-multiple-ciphers';
import type { KeyManagementService } from '../kms/key-management-service';
import { KmsError } from '../kms/kms-error';
import type { WdekRegistry, WdekRecord } from '../wdek-registry/wdek-registry';
import type { BackupImage, DatabaseEngine, DatabaseKeyState, Progress, RestoreCheck } from './database-engine';
import { readBackupFile, syncDirectory, writeBackupFile } from './backup-file-format';
import { InspectError, inspectInThread } from './inspect-thread';
import { EngineError } from './engine-error';

const DATABASE_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/;

export const dekWdekId = (databaseId: string) => `db/${databaseId}/dek`;
/** The DEK a regeneration is moving the database to, until it takes the place of `dek`. */
const nextDekWdekId = (databaseId: string) => `db/${databaseId}/dek-next`;
const SCHEMA_OBJECT = /^(CREATE\s+(?:UNIQUE\s+)?(?:TABLE|INDEX|VIEW|TRIGGER)\s+(?:IF\s+NOT\s+EXISTS\s+)?)/i;
const COPY_BATCH_ROWS = 5000;
export const backupKeyWdekId = (databaseId: string, hash: string) => `db/${databaseId}/backup-key/${hash}`;
const keyHash = (material: Buffer) => createHash('sha256').update(material).digest('hex');

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

/** Opens a SQLCipher (v4) database keyed with the raw 32-byte DEK: no passphrase KDF. */
function openKeyed(path: string, dek: Buffer, options: Database.Options = {}): Database.Database {
  const db = new Database(path, options);
  try {
    db.pragma(`cipher='sqlcipher'`);
    db.pragma('legacy=4');
    db.pragma(`key="x'${dek.toString('hex')}'"`);
    db.pragma('busy_timeout = 10000');
    // Reading the schema proves the key: a wrong one fails here with SQLITE_NOTADB.
    db.prepare('SELECT count(*) FROM sqlite_master').get();
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}

/** Whether the file opens with this DEK (a regeneration may have swapped it in before a crash). */
function opensWith(path: string, dek: Buffer): boolean {
  try {
    openKeyed(path, dek).close();
    return true;
  } catch {
    return false;
  }
}

interface DatabaseRow {
  database_id: string;
  key_id: string;
  created_at: string;
  key_change: string | null;
}

/**
 * The embedded engine: each database is a SQLCipher-encrypted SQLite file whose DEK exists on
 * disk only as a WDEK in the registry, so opening it needs the KMS. Backups are the encrypted
 * file, re-encrypted under a backup key (itself a registered WDEK) with the DEK's WDEK in the
 * header: an old backup restores after any number of rotations, as retired versions unwrap.
 * Databases use a rollback journal, so a read transaction freezes the file for a raw copy.
 */
export class EncryptedSqliteEngine implements DatabaseEngine {
  private readonly meta: Database.Database;
  private readonly busy = new Map<string, Promise<unknown>>();

  private constructor(
    private readonly dir: string,
    private readonly kms: KeyManagementService,
    private readonly registry: WdekRegistry,
  ) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const path = join(dir, 'engine.sqlite');
    const created = !existsSync(path);
    this.meta = new Database(path);
    if (created) chmodSync(path, 0o600);
    this.meta.pragma('journal_mode = WAL');
    this.meta.pragma('busy_timeout = 5000');
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

  /** `dir` holds the database files and the engine's metadata (no key material). */
  static open(options: { dir: string; kms: KeyManagementService; registry: WdekRegistry }): EncryptedSqliteEngine {
    return new EncryptedSqliteEngine(options.dir, options.kms, options.registry);
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

  /** A new encrypted database protected by root key `keyId`, with its first backup key active. */
  async createDatabase(databaseId: string, keyId: string): Promise<DatabaseKeyState> {
    const id = checkDatabaseId(databaseId);
    const path = this.databasePath(id);
    if (this.meta.prepare('SELECT 1 FROM databases WHERE database_id = ?').get(id) || existsSync(path)) {
      throw new EngineError('DATABASE_EXISTS', `database ${id} already exists`);
    }
    const { dek, wdek, keyVersion } = await this.kmsCall(() => this.kms.wrap(keyId));
    try {
      this.registry.register({ id: dekWdekId(id), keyId, keyVersion, wdek, owner: `database ${id}` });
      const db = openKeyed(path, dek);
      chmodSync(path, 0o600);
      db.close();
    } finally {
      dek.fill(0);
    }
    const now = new Date().toISOString();
    this.meta.prepare('INSERT INTO databases (database_id, key_id, created_at) VALUES (?, ?, ?)').run(id, keyId, now);
    await this.addBackupKey(id, 'active');
    return this.keyState(id);
  }

  /** Runs `fn` on the open, keyed database (the application's view, for demos and tests). */
  async withDatabase<T>(databaseId: string, fn: (db: Database.Database) => T): Promise<T> {
    const row = this.requireDatabase(databaseId);
    return this.exclusive(row.database_id, () => this.openAndRun(row, fn));
  }

  private async openAndRun<T>(row: DatabaseRow, fn: (db: Database.Database) => T): Promise<T> {
    const dek = await this.unwrapDek(row);
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

  keyState(databaseId: string): Promise<DatabaseKeyState> {
    const row = this.requireDatabase(databaseId);
    const wdeks = this.wdeksOf(row);
    const active = this.meta
      .prepare<[string], { hash: string }>(`SELECT hash FROM backup_keys WHERE database_id = ? AND state = 'active'`)
      .get(row.database_id);
    if (!active) throw new EngineError('INVALID_CONFIGURATION', `database ${row.database_id} has no active backup key`);
    return Promise.resolve({
      databaseId: row.database_id,
      keyId: row.key_id,
      wdekVersions: wdeks.map((w) => w.keyVersion),
      keyChangeInProgress: row.key_change !== null,
      backupKeyHash: active.hash,
    });
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

  async backup(databaseId: string, path: string, progress?: Progress): Promise<BackupImage> {
    const row = this.requireDatabase(databaseId);
    const state = await this.keyState(row.database_id);
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
    const dekRecord = this.requireWdek(dekWdekId(row.database_id));
    const backupKey = await this.backupKey(row.database_id, state.backupKeyHash);
    const dek = await this.unwrapDek(row);
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
        const written = await writeBackupFile({
          path,
          header: {
            databaseId: row.database_id,
            createdAt,
            keyId: row.key_id,
            keyVersion: dekRecord.keyVersion,
            wdek: dekRecord.wdek.toString('base64'),
            backupKeyHash: state.backupKeyHash,
          },
          plainBytes: size,
          read: async (buffer, length, position) => (await source.read(buffer, 0, length, position)).bytesRead,
          key: backupKey,
          ...(progress ? { progress } : {}),
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

  async verifyBackup(image: Pick<BackupImage, 'path' | 'sha256'>, progress?: Progress): Promise<RestoreCheck> {
    const scratch = `${image.path}.verify-${randomBytes(4).toString('hex')}.db`;
    try {
      return await this.restoreTo(image, scratch, progress);
    } finally {
      await rm(scratch, { force: true });
    }
  }

  async restore(image: Pick<BackupImage, 'path' | 'sha256'>, targetPath: string, progress?: Progress): Promise<RestoreCheck> {
    const partial = `${targetPath}.partial-${randomBytes(4).toString('hex')}`;
    mkdirSync(dirname(targetPath), { recursive: true, mode: 0o700 });
    try {
      const check = await this.restoreTo(image, partial, progress);
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
    const records = this.wdeksOf(row);
    const results = await this.kmsCall(() => this.kms.rewrapBatch(row.key_id, records.map((r) => r.wdek)));
    const updates = records.map((record, i) => {
      const result = results[i]!;
      if (result instanceof KmsError) throw new EngineError('KEY_UNAVAILABLE', `WDEK ${record.id} does not unwrap: ${result.message}`);
      return { id: record.id, wdek: result.wdek, keyVersion: result.keyVersion, expectedVersion: record.keyVersion, expectedWdek: record.wdek };
    });
    this.registry.update(updates);
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
    this.meta.transaction(() => {
      const key = this.meta.prepare<[string, string], { state: string }>('SELECT state FROM backup_keys WHERE database_id = ? AND hash = ?').get(row.database_id, hash);
      if (!key) throw new EngineError('BACKUP_KEY_MISSING', `database ${row.database_id} has no backup key ${hash.slice(0, 12)}…`);
      if (key.state === 'active') return;
      this.meta.prepare(`UPDATE backup_keys SET state = 'retired' WHERE database_id = ? AND state = 'active'`).run(row.database_id);
      this.meta.prepare(`UPDATE backup_keys SET state = 'active' WHERE database_id = ? AND hash = ?`).run(row.database_id, hash);
    })();
    return Promise.resolve();
  }

  hasBackupKey(databaseId: string, hash: string): boolean {
    return this.registry.get(backupKeyWdekId(databaseId, hash)) !== undefined;
  }

  /**
   * A new DEK, and every page re-encrypted under it: the database is copied, table by table in
   * batches (progress in rows), into a new file keyed with the new DEK, which then replaces the
   * old file. Writers wait for the duration (the copy holds the write lock), and so do backups
   * (keyState reports the key change). Resumable: a crash before the swap leaves the old file and
   * DEK in use and the copy starts again; a crash after it finishes the registry swap.
   */
  async regenerate(databaseId: string, progress?: Progress): Promise<DatabaseKeyState> {
    const row = this.requireDatabase(databaseId);
    const id = row.database_id;
    let next = this.registry.get(nextDekWdekId(id));
    if (!next) {
      const { dek, wdek, keyVersion } = await this.kmsCall(() => this.kms.wrap(row.key_id));
      dek.fill(0);
      next = { id: nextDekWdekId(id), keyId: row.key_id, keyVersion, wdek, owner: `database ${id} (regenerating)` };
      this.registry.register(next);
    }
    this.meta.prepare('UPDATE databases SET key_change = ? WHERE database_id = ? AND key_change IS NULL').run(`DEK regeneration since ${new Date().toISOString()}`, id);
    const newDek = (await this.kmsCall(() => this.kms.unwrap(next.keyId, next.wdek))).dek;
    const path = this.databasePath(id);
    await this.exclusive(id, async () => {
      try {
        if (!opensWith(path, newDek)) {
          const oldDek = await this.unwrapDek(row);
          try {
            await this.copyUnderNewKey(path, oldDek, newDek, progress);
          } finally {
            oldDek.fill(0);
          }
        }
      } finally {
        newDek.fill(0);
      }
      // The file is under the new DEK: make it the database's DEK, then end the key change. The
      // record is read again: a root-key rewrap during the copy may have moved it to a newer version.
      const latest = this.requireWdek(nextDekWdekId(id));
      const current = this.requireWdek(dekWdekId(id));
      this.registry.update([{ id: current.id, wdek: latest.wdek, keyVersion: latest.keyVersion, expectedVersion: current.keyVersion, expectedWdek: current.wdek }]);
      this.registry.remove(latest.id);
      this.meta.prepare('UPDATE databases SET key_change = NULL WHERE database_id = ?').run(id);
    });
    return this.keyState(id);
  }

  private async copyUnderNewKey(path: string, oldDek: Buffer, newDek: Buffer, progress?: Progress): Promise<void> {
    // A name per attempt: an earlier attempt's copy (its worker died) is removed, never reused.
    const base = `${path.slice(dirname(path).length + 1)}.rekey-`;
    for (const name of await readdir(dirname(path))) if (name.startsWith(base)) await rm(join(dirname(path), name), { force: true });
    const fresh = `${path}.rekey-${randomBytes(4).toString('hex')}`;
    const db = openKeyed(path, oldDek);
    let rowsCopied = 0;
    let rowsExpected = 0;
    try {
      db.prepare('ATTACH DATABASE ? AS fresh KEY ?').run(fresh, `x'${newDek.toString('hex')}'`);
      const objects = db
        .prepare<[], { type: string; name: string; sql: string }>(`SELECT type, name, sql FROM main.sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY rowid`)
        .all();
      const tables = objects.filter((o) => o.type === 'table');
      const quoted = (name: string) => `"${name.replace(/"/g, '""')}"`;
      // Counted inside the write lock, so the count is of the rows the copy sees.
      db.exec('BEGIN IMMEDIATE');
      const total = tables.reduce((n, t) => n + db.prepare<[], { n: number }>(`SELECT count(*) AS n FROM main.${quoted(t.name)}`).get()!.n, 0);
      let done = 0;
      try {
        for (const t of tables) db.exec(t.sql.replace(SCHEMA_OBJECT, '$1fresh.'));
        for (const t of tables) {
          const withRowid = !/WITHOUT\s+ROWID\s*$/i.test(t.sql);
          if (!withRowid) {
            done += db.prepare(`INSERT INTO fresh.${quoted(t.name)} SELECT * FROM main.${quoted(t.name)}`).run().changes;
            continue;
          }
          const copy = db.prepare(`INSERT INTO fresh.${quoted(t.name)} SELECT * FROM main.${quoted(t.name)} WHERE rowid > ? ORDER BY rowid LIMIT ${COPY_BATCH_ROWS}`);
          const last = db.prepare<[], { r: number | null }>(`SELECT max(rowid) AS r FROM fresh.${quoted(t.name)}`);
          for (let after = Number.MIN_SAFE_INTEGER; ; ) {
            const copied = copy.run(after).changes;
            if (copied === 0) break;
            done += copied;
            after = last.get()!.r ?? after;
            progress?.(done, total);
            await yieldToEventLoop();
          }
        }
        for (const o of objects.filter((x) => x.type !== 'table')) db.exec(o.sql.replace(SCHEMA_OBJECT, '$1fresh.'));
        db.exec('COMMIT');
        rowsCopied = done;
        rowsExpected = total;
      } catch (err) {
        db.exec('ROLLBACK');
        throw err;
      }
      db.exec('DETACH DATABASE fresh');
    } finally {
      db.close();
    }
    // The copy replaces the only file of the database: it must open with the new DEK, pass
    // SQLite's check and hold every row first.
    const check = await inspectInThread(fresh, newDek, () => progress?.(rowsCopied, rowsExpected)).catch((err: unknown) => {
      throw new EngineError('ENGINE_COMMAND_FAILED', `the re-encrypted copy ${fresh} fails its check (${String(err)}); the database keeps its old file and DEK`);
    });
    if (check.rows !== rowsExpected) {
      throw new EngineError('ENGINE_COMMAND_FAILED', `the re-encrypted copy holds ${check.rows} rows, the database ${rowsExpected}; the database keeps its old file and DEK`);
    }
    const handle = await open(fresh, 'r');
    await handle.sync();
    await handle.close();
    chmodSync(fresh, 0o600);
    await rename(fresh, path);
    await syncDirectory(path);
  }

  /** Creates a backup key (wrapped by the database's root key); `pending` keys wait for activation. */
  async addBackupKey(databaseId: string, state: 'pending' | 'active'): Promise<string> {
    const row = this.requireDatabase(databaseId);
    const material = randomBytes(32);
    const hash = keyHash(material);
    try {
      const { wdek, keyVersion } = await this.kmsCall(() => this.kms.wrap(row.key_id, material));
      this.registry.register({ id: backupKeyWdekId(row.database_id, hash), keyId: row.key_id, keyVersion, wdek, owner: `backup key of database ${row.database_id}` });
    } finally {
      material.fill(0);
    }
    this.meta.prepare('INSERT INTO backup_keys (database_id, hash, state, created_at) VALUES (?, ?, ?, ?)').run(row.database_id, hash, state, new Date().toISOString());
    return hash;
  }

  private async restoreTo(image: Pick<BackupImage, 'path' | 'sha256'>, target: string, progress?: Progress): Promise<RestoreCheck> {
    const out = await open(target, 'wx', 0o600);
    let header;
    try {
      header = await readBackupFile({
        path: image.path,
        expectedSha256: image.sha256,
        keyFor: (h) => this.backupKey(h.databaseId, h.backupKeyHash),
        write: async (data, position) => {
          let written = 0;
          while (written < data.length) written += (await out.write(data, written, data.length - written, position + written)).bytesWritten;
        },
        ...(progress ? { progress } : {}),
      });
      await out.sync();
    } finally {
      await out.close();
    }
    // The DEK as the backup recorded it: a retired root-key version still unwraps it.
    const { dek } = await this.kmsCall(() => this.kms.unwrap(header.keyId, Buffer.from(header.wdek, 'base64')));
    try {
      // What the restored file holds, after SQLite's own consistency check.
      return await inspectInThread(target, dek, () => progress?.(header.plainBytes, header.plainBytes));
    } catch (err) {
      if (err instanceof InspectError) throw new EngineError('BACKUP_INVALID', `the database restored from ${image.path} fails SQLite's quick_check: ${err.message}`);
      throw new EngineError('BACKUP_INVALID', `backup ${image.path} decrypts but does not open as database ${header.databaseId}: ${String(err)}`);
    } finally {
      dek.fill(0);
    }
  }

  private requireDatabase(databaseId: string): DatabaseRow {
    const row = this.meta.prepare<[string], DatabaseRow>('SELECT * FROM databases WHERE database_id = ?').get(checkDatabaseId(databaseId));
    if (!row) throw new EngineError('DATABASE_NOT_FOUND', `no database ${databaseId} in this engine`);
    return row;
  }

  private requireWdek(id: string): WdekRecord {
    const record = this.registry.get(id);
    if (!record) throw new EngineError('INVALID_CONFIGURATION', `the WDEK registry lacks ${id}`);
    return record;
  }

  /** The database's DEK and backup keys, as registered (their versions are what rewrap moves). */
  private wdeksOf(row: DatabaseRow): WdekRecord[] {
    const hashes = this.meta.prepare<[string], { hash: string }>('SELECT hash FROM backup_keys WHERE database_id = ? ORDER BY created_at').all(row.database_id);
    return [dekWdekId(row.database_id), ...hashes.map((h) => backupKeyWdekId(row.database_id, h.hash))].map((id) => this.requireWdek(id));
  }

  private async unwrapDek(row: DatabaseRow): Promise<Buffer> {
    const record = this.requireWdek(dekWdekId(row.database_id));
    return (await this.kmsCall(() => this.kms.unwrap(record.keyId, record.wdek))).dek;
  }

  private async backupKey(databaseId: string, hash: string): Promise<Buffer> {
    const record = this.registry.get(backupKeyWdekId(databaseId, hash));
    if (!record) throw new EngineError('BACKUP_KEY_MISSING', `backup key ${hash.slice(0, 12)}… of database ${databaseId} is not in the key registry: restore its key backup first`);
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
