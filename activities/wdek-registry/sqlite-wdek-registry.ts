import { chmodSync, existsSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3-multiple-ciphers';
import type { IdRange, RegisteredKey, StoredWdek, WdekRecord, WdekRegistry, WdekUpdate } from './wdek-registry';
import { enableWal } from '../sqlite-wal';

/** Sorts after every id keyops writes (ids are printable text). */
const MAX_ID = '\u{10FFFF}';

interface Row {
  id: string;
  key_id: string;
  key_version: number;
  wdek: Buffer;
  owner: string;
}

const toRecord = (r: Row): WdekRecord => ({ id: r.id, keyId: r.key_id, keyVersion: r.key_version, wdek: r.wdek, owner: r.owner });
/** A bulk scan's row, read as an array (id, key_version, wdek): rewrap reads every WDEK of a key this way. */
type StoredRow = [string, number, Buffer];
const toStored = (r: StoredRow): StoredWdek => ({ id: r[0], keyVersion: r[1], wdek: r[2] });

/**
 * The embedded WDEK registry: one SQLite file (WAL, so the worker and the CLI can read while a
 * rewrap writes). WDEKs are ciphertext, but the file is still created 0600 in a 0700 directory.
 */
export class SqliteWdekRegistry implements WdekRegistry {
  private readonly db: Database.Database;
  private readonly statements;

  private constructor(path: string) {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const created = !existsSync(path);
    this.db = new Database(path);
    if (created) chmodSync(path, 0o600);
    enableWal(this.db);
    this.db.pragma('busy_timeout = 5000');
    // FULL: a commit is on disk before the caller goes on. NORMAL can lose the last commits on a
    // power loss, while what followed them (a fsynced rename of a backup or key file, a KMS
    // rotation) survives: a WDEK rewrapped to a version the registry then forgets.
    this.db.pragma('synchronous = FULL');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS wdeks (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        key_version INTEGER NOT NULL,
        wdek BLOB NOT NULL,
        owner TEXT NOT NULL
      ) WITHOUT ROWID;
      -- No index on key_version: every rewrap would move every entry of it. Rewrap walks a
      -- key's WDEKs in id order from a cursor, where the rows still below the version are next.
      CREATE INDEX IF NOT EXISTS wdeks_by_key ON wdeks (key_id, id);
      CREATE TABLE IF NOT EXISTS rewrapped_versions (
        key_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL
      );
    `);
    const db = this.db;
    this.statements = {
      upsert: db.prepare(
        `INSERT INTO wdeks (id, key_id, key_version, wdek, owner) VALUES (@id, @keyId, @keyVersion, @wdek, @owner)
         ON CONFLICT (id) DO UPDATE SET key_id = excluded.key_id, key_version = excluded.key_version,
           wdek = excluded.wdek, owner = excluded.owner`,
      ),
      get: db.prepare<[string], Row>('SELECT * FROM wdeks WHERE id = ?'),
      remove: db.prepare<[string]>('DELETE FROM wdeks WHERE id = ?'),
      countBelow: db.prepare<[number, string], { total: number; below: number }>(
        'SELECT count(*) AS total, coalesce(sum(key_version < ?), 0) AS below FROM wdeks WHERE key_id = ?',
      ),
      countByVersion: db.prepare<[string], { key_version: number; n: number }>(
        'SELECT key_version, count(*) AS n FROM wdeks WHERE key_id = ? GROUP BY key_version',
      ),
      // Id order (not version order) so a cursor survives rows leaving the "below" set.
      // Three columns, as arrays: a million-WDEK rewrap reads every row, and the owner text and
      // a key id the caller already knows would be built a million times for nothing.
      listBelow: db
        .prepare<[string, string, string, number, number], StoredRow>(
          'SELECT id, key_version, wdek FROM wdeks WHERE key_id = ? AND id > ? AND id <= ? AND key_version < ? ORDER BY id LIMIT ?',
        )
        .raw(true),
      list: db.prepare<[string, string, string, number], StoredRow>('SELECT id, key_version, wdek FROM wdeks WHERE key_id = ? AND id > ? AND id <= ? ORDER BY id LIMIT ?').raw(true),
      count: db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM wdeks WHERE key_id = ?'),
      idAt: db.prepare<[string, number], { id: string }>('SELECT id FROM wdeks WHERE key_id = ? ORDER BY id LIMIT 1 OFFSET ?'),
      // Positional parameters: binding by name costs a third more per row, and rewrap writes every row.
      update: db.prepare<[Buffer, number, string, number, Buffer]>('UPDATE wdeks SET wdek = ?, key_version = ? WHERE id = ? AND key_version = ? AND wdek = ?'),
      setRewrapped: db.prepare(
        `INSERT INTO rewrapped_versions (key_id, version) VALUES (?, ?)
         ON CONFLICT (key_id) DO UPDATE SET version = max(version, excluded.version)`,
      ),
      getRewrapped: db.prepare<[string], { version: number }>('SELECT version FROM rewrapped_versions WHERE key_id = ?'),
      listKeys: db.prepare<[], { key_id: string; n: number; version: number | null }>(
        `SELECT k.key_id, (SELECT count(*) FROM wdeks w WHERE w.key_id = k.key_id) AS n, r.version
         FROM (SELECT DISTINCT key_id FROM wdeks UNION SELECT key_id FROM rewrapped_versions) k
         LEFT JOIN rewrapped_versions r ON r.key_id = k.key_id ORDER BY k.key_id`,
      ),
    };
  }

  static open(path: string): SqliteWdekRegistry {
    return new SqliteWdekRegistry(path);
  }

  register(record: WdekRecord): void {
    this.statements.upsert.run(record);
  }

  registerMany(records: Iterable<WdekRecord>): void {
    this.db.transaction(() => {
      for (const record of records) this.statements.upsert.run(record);
    })();
  }

  get(id: string): WdekRecord | undefined {
    const row = this.statements.get.get(id);
    return row && toRecord(row);
  }

  remove(id: string): boolean {
    return this.statements.remove.run(id).changes > 0;
  }

  countBelowVersion(keyId: string, version: number): { total: number; below: number } {
    return this.statements.countBelow.get(version, keyId) ?? { total: 0, below: 0 };
  }

  countByVersion(keyId: string): Map<number, number> {
    return new Map(this.statements.countByVersion.all(keyId).map((r) => [r.key_version, r.n]));
  }

  listBelowVersion(keyId: string, version: number, range: IdRange, limit: number): StoredWdek[] {
    return this.statements.listBelow.all(keyId, range.afterId ?? '', range.untilId ?? MAX_ID, version, limit).map(toStored);
  }

  list(keyId: string, range: IdRange, limit: number): StoredWdek[] {
    return this.statements.list.all(keyId, range.afterId ?? '', range.untilId ?? MAX_ID, limit).map(toStored);
  }

  partitionIds(keyId: string, parts: number): string[] {
    const total = this.statements.count.get(keyId)?.n ?? 0;
    const ids: string[] = [];
    for (let i = 1; i < parts; i++) {
      const id = this.statements.idAt.get(keyId, Math.floor((total * i) / parts) - 1)?.id;
      if (id !== undefined && id !== ids[ids.length - 1]) ids.push(id);
    }
    return ids;
  }

  update(updates: readonly WdekUpdate[]): number {
    return this.db.transaction(() => {
      let changed = 0;
      for (const u of updates) changed += this.statements.update.run(u.wdek, u.keyVersion, u.id, u.expectedVersion, u.expectedWdek).changes;
      return changed;
    })();
  }

  setRewrappedVersion(keyId: string, version: number): void {
    this.statements.setRewrapped.run(keyId, version);
  }

  getRewrappedVersion(keyId: string): number | undefined {
    return this.statements.getRewrapped.get(keyId)?.version;
  }

  listKeys(): RegisteredKey[] {
    return this.statements.listKeys.all().map((r) => ({ keyId: r.key_id, wdekCount: r.n, rewrappedVersion: r.version ?? undefined }));
  }

  close(): void {
    this.db.close();
  }
}
