/**
 * The backup catalog: every backup keyops took, with what restoring it needs (key id, key
 * version, backup-key hash, checksum) and how its verification went; and every night's outcome,
 * for the two-failed-nights alert.
 */
export type BackupStatus = 'good' | 'failed' | 'deleted';

export interface CatalogEntry {
  /** The nightly run's backup id, e.g. `backup/<databaseId>/<night>`. */
  backupId: string;
  databaseId: string;
  /** The night it belongs to (YYYY-MM-DD). */
  night: string;
  createdAt: string;
  path: string;
  bytes: number;
  sha256: string;
  keyId: string;
  keyVersion: number;
  backupKeyHash: string;
  /** What the test restore found; undefined when it was not verified. */
  verification: { tables: number; rows: number } | undefined;
  status: BackupStatus;
  /** The last restore drill of this backup (restoreDrill), if it was ever drilled. */
  lastDrill?: DrillRecord | undefined;
}

export type DrillResult = 'passed' | 'failed';

/** How the last restore drill of a backup went: when, the result, and why it failed. */
export interface DrillRecord {
  drilledAt: string;
  result: DrillResult;
  /** The drill run that restored it. */
  workflowId: string;
  /** What the restore found: tables and rows, when it passed. */
  rows?: number | undefined;
  tables?: number | undefined;
  /** Why it failed (no key material: engine and KMS messages name ids and versions only). */
  error?: string | undefined;
}

export type NightOutcome = 'succeeded' | 'failed';

/** How one database's night ended, as recorded (the audit trail of failed nights). */
export interface NightRecord {
  databaseId: string;
  night: string;
  outcome: NightOutcome;
  /** Why it failed (ids and versions only, as the run's error said). */
  error?: string | undefined;
  recordedAt: string;
}

export interface BackupCatalog {
  /** Inserts or replaces the entry with this backup id (a retried run records once). */
  /**
   * Records or updates an entry and returns the entry as kept. A good backup is never replaced
   * by another file for the same backup id (two runs of one night): the first one kept wins.
   */
  record(entry: CatalogEntry): CatalogEntry;
  get(backupId: string): CatalogEntry | undefined;
  /** Newest first. */
  list(filter?: { databaseId?: string; status?: BackupStatus; limit?: number }): CatalogEntry[];
  /** The newest good backup of the database. */
  lastGood(databaseId: string): CatalogEntry | undefined;
  /** Records how a night ended; returns how many nights in a row have now failed. */
  recordNight(databaseId: string, night: string, outcome: NightOutcome, error?: string): number;
  /** Recorded nights, oldest first; `since` compares with when each was recorded. */
  listNights(filter?: { databaseId?: string; since?: string }): NightRecord[];
  /** Records the drill of a backup, replacing its earlier one (a retried drill records once). */
  recordDrill(backupId: string, drill: DrillRecord): void;
  close(): void;
}
