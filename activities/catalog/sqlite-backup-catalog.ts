import { chmodSync, existsSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3-multiple-ciphers';
import type { BackupCatalog, BackupStatus, CatalogEntry, DrillRecord, DrillResult, NightOutcome, NightRecord } from './backup-catalog';
import { enableWal } from '../sqlite-wal';

interface Row {
  backup_id: string;
  database_id: string;
  night: string;
  created_at: string;
  path: string;
  bytes: number;
  sha256: string;
  key_id: string;
  key_version: number;
  backup_key_hash: string;
  verified_tables: number | null;
  verified_rows: number | null;
  status: BackupStatus;
  drilled_at: string | null;
  drill_result: DrillResult | null;
  drill_workflow_id: string | null;
  drill_rows: number | null;
  drill_tables: number | null;
  drill_error: string | null;
}

// Every read joins the backup's last drill (a table of its own: catalogs written before drills
// existed gain it at open, and their rows are not touched).
const SELECT_ENTRIES = `SELECT b.*, d.drilled_at, d.result AS drill_result, d.workflow_id AS drill_workflow_id, d.rows AS drill_rows,
  d.tables AS drill_tables, d.error AS drill_error FROM backups b LEFT JOIN drills d ON d.backup_id = b.backup_id`;

const drillOf = (r: Row): DrillRecord | undefined =>
  r.drilled_at === null || r.drill_result === null
    ? undefined
    : {
        drilledAt: r.drilled_at,
        result: r.drill_result,
        workflowId: r.drill_workflow_id ?? '',
        ...(r.drill_rows === null ? {} : { rows: r.drill_rows }),
        ...(r.drill_tables === null ? {} : { tables: r.drill_tables }),
        ...(r.drill_error === null ? {} : { error: r.drill_error }),
      };

const toEntry = (r: Row): CatalogEntry => ({
  backupId: r.backup_id,
  databaseId: r.database_id,
  night: r.night,
  createdAt: r.created_at,
  path: r.path,
  bytes: r.bytes,
  sha256: r.sha256,
  keyId: r.key_id,
  keyVersion: r.key_version,
  backupKeyHash: r.backup_key_hash,
  verification: r.verified_tables === null || r.verified_rows === null ? undefined : { tables: r.verified_tables, rows: r.verified_rows },
  status: r.status,
  ...(drillOf(r) ? { lastDrill: drillOf(r) } : {}),
});

/** The embedded catalog: one SQLite file (WAL: the CLI reads while a worker writes). */
export class SqliteBackupCatalog implements BackupCatalog {
  private readonly db: Database.Database;

  private constructor(path: string) {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const created = !existsSync(path);
    this.db = new Database(path);
    if (created) chmodSync(path, 0o600);
    enableWal(this.db);
    // Durable commits: files renamed and fsynced after a commit must never outlive it.
    this.db.pragma('synchronous = FULL');
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS backups (
        backup_id TEXT PRIMARY KEY,
        database_id TEXT NOT NULL,
        night TEXT NOT NULL,
        created_at TEXT NOT NULL,
        path TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        key_id TEXT NOT NULL,
        key_version INTEGER NOT NULL,
        backup_key_hash TEXT NOT NULL,
        verified_tables INTEGER,
        verified_rows INTEGER,
        status TEXT NOT NULL CHECK (status IN ('good', 'failed', 'deleted'))
      );
      CREATE INDEX IF NOT EXISTS backups_by_database ON backups (database_id, created_at);
      CREATE TABLE IF NOT EXISTS nights (
        database_id TEXT NOT NULL,
        night TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
        error TEXT,
        recorded_at TEXT NOT NULL,
        PRIMARY KEY (database_id, night)
      );
      CREATE TABLE IF NOT EXISTS drills (
        backup_id TEXT PRIMARY KEY,
        drilled_at TEXT NOT NULL,
        result TEXT NOT NULL CHECK (result IN ('passed', 'failed')),
        workflow_id TEXT NOT NULL,
        rows INTEGER,
        tables INTEGER,
        error TEXT
      );
    `);
  }

  static open(path: string): SqliteBackupCatalog {
    return new SqliteBackupCatalog(path);
  }

  record(entry: CatalogEntry): CatalogEntry {
    return this.db.transaction(() => {
      const kept = this.get(entry.backupId);
      if (kept?.status === 'good' && kept.path !== entry.path) return kept;
      this.insert(entry);
      return entry;
    }).immediate();
  }

  private insert(entry: CatalogEntry): void {
    this.db
      .prepare(
        `INSERT OR REPLACE INTO backups VALUES (@backupId, @databaseId, @night, @createdAt, @path, @bytes, @sha256, @keyId, @keyVersion,
           @backupKeyHash, @tables, @rows, @status)`,
      )
      .run({
        backupId: entry.backupId,
        databaseId: entry.databaseId,
        night: entry.night,
        createdAt: entry.createdAt,
        path: entry.path,
        bytes: entry.bytes,
        sha256: entry.sha256,
        keyId: entry.keyId,
        keyVersion: entry.keyVersion,
        backupKeyHash: entry.backupKeyHash,
        tables: entry.verification?.tables ?? null,
        rows: entry.verification?.rows ?? null,
        status: entry.status,
      });
  }

  get(backupId: string): CatalogEntry | undefined {
    const row = this.db.prepare<[string], Row>(`${SELECT_ENTRIES} WHERE b.backup_id = ?`).get(backupId);
    return row && toEntry(row);
  }

  list(filter: { databaseId?: string; status?: BackupStatus; limit?: number } = {}): CatalogEntry[] {
    return this.db
      .prepare<[{ databaseId: string | null; status: string | null; limit: number }], Row>(
        `${SELECT_ENTRIES} WHERE (@databaseId IS NULL OR b.database_id = @databaseId) AND (@status IS NULL OR b.status = @status)
         ORDER BY b.created_at DESC, b.backup_id DESC LIMIT @limit`,
      )
      .all({ databaseId: filter.databaseId ?? null, status: filter.status ?? null, limit: filter.limit ?? -1 })
      .map(toEntry);
  }

  lastGood(databaseId: string): CatalogEntry | undefined {
    return this.list({ databaseId, status: 'good', limit: 1 })[0];
  }

  recordNight(databaseId: string, night: string, outcome: NightOutcome, error?: string): number {
    return this.db.transaction(() => {
      this.db
        .prepare('INSERT OR REPLACE INTO nights VALUES (?, ?, ?, ?, ?)')
        .run(databaseId, night, outcome, error ?? null, new Date().toISOString());
      const recent = this.db
        // In the order the nights ran, not by their dates: a backfilled or mistyped night must
        // not hide the failures of the nights around it.
        .prepare<[string], { outcome: NightOutcome }>('SELECT outcome FROM nights WHERE database_id = ? ORDER BY recorded_at DESC, rowid DESC')
        .all(databaseId);
      const streak = recent.findIndex((n) => n.outcome === 'succeeded');
      return streak === -1 ? recent.length : streak;
    })();
  }

  listNights(filter: { databaseId?: string; since?: string } = {}): NightRecord[] {
    return this.db
      .prepare<[{ databaseId: string | null; since: string | null }], { database_id: string; night: string; outcome: NightOutcome; error: string | null; recorded_at: string }>(
        `SELECT database_id, night, outcome, error, recorded_at FROM nights
         WHERE (@databaseId IS NULL OR database_id = @databaseId) AND (@since IS NULL OR recorded_at >= @since)
         ORDER BY recorded_at, rowid`,
      )
      .all({ databaseId: filter.databaseId ?? null, since: filter.since ?? null })
      .map((r) => ({ databaseId: r.database_id, night: r.night, outcome: r.outcome, ...(r.error === null ? {} : { error: r.error }), recordedAt: r.recorded_at }));
  }

  recordDrill(backupId: string, drill: DrillRecord): void {
    this.db
      .prepare('INSERT OR REPLACE INTO drills (backup_id, drilled_at, result, workflow_id, rows, tables, error) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .run(backupId, drill.drilledAt, drill.result, drill.workflowId, drill.rows ?? null, drill.tables ?? null, drill.error ?? null);
  }

  close(): void {
    this.db.close();
  }
}
