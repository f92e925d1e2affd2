/**
 * Where keyops records which WDEKs each root key protects and at which version. Rewrap
 * progress is durable per WDEK: a row's version changes only together with its new WDEK.
 * Synchronous: it is keyops' own local store, and a million rows must rewrap fast.
 */
export interface WdekRecord {
  /** Stable id chosen by the owner, e.g. `db/<databaseId>/dek`. */
  id: string;
  keyId: string;
  keyVersion: number;
  wdek: Buffer;
  /** What the DEK protects (a database, a backup key): for people reading the registry. */
  owner: string;
}

/** What rewrap and verification read of each WDEK: its id, version and ciphertext, nothing more. */
export type StoredWdek = Pick<WdekRecord, 'id' | 'keyVersion' | 'wdek'>;

/** Ids after `afterId` (exclusive) up to `untilId` (inclusive); either end may be open. */
export interface IdRange {
  afterId?: string | undefined;
  untilId?: string | undefined;
}

export interface WdekUpdate {
  id: string;
  wdek: Buffer;
  keyVersion: number;
  /**
   * Compare-and-set: the update applies only if the row still holds exactly this version and
   * WDEK; an owner that re-registered the id meanwhile (a new DEK) is never overwritten.
   */
  expectedVersion: number;
  expectedWdek: Buffer;
}

export interface RegisteredKey {
  keyId: string;
  wdekCount: number;
  /** The version keyops last finished rewrapping every WDEK to; undefined before any rewrap. */
  rewrappedVersion: number | undefined;
}

export interface WdekRegistry {
  /** Inserts or replaces one record. */
  register(record: WdekRecord): void;
  /** Inserts many records in one transaction (setup, benchmarks). */
  registerMany(records: Iterable<WdekRecord>): void;
  get(id: string): WdekRecord | undefined;
  /** Forgets one record (its key is no longer needed by anything); true if it existed. */
  remove(id: string): boolean;
  /** How many WDEKs the key protects, and how many of them are on a version lower than `version` (one scan). */
  countBelowVersion(keyId: string, version: number): { total: number; below: number };
  countByVersion(keyId: string): Map<number, number>;
  /** Up to `limit` WDEKs of the key below `version`, in id order, in the id range. */
  listBelowVersion(keyId: string, version: number, range: IdRange, limit: number): StoredWdek[];
  /** Up to `limit` WDEKs of the key in id order in the id range, whatever their version. */
  list(keyId: string, range: IdRange, limit: number): StoredWdek[];
  /** Ids that cut the key's WDEKs into `parts` ranges of nearly equal size (parts - 1 ids). */
  partitionIds(keyId: string, parts: number): string[];
  /** Applies updates in one transaction; returns how many rows matched their expected version. */
  update(updates: readonly WdekUpdate[]): number;
  /** Records the version rewrap finished at; never moves backwards. */
  setRewrappedVersion(keyId: string, version: number): void;
  getRewrappedVersion(keyId: string): number | undefined;
  /** Keys that have WDEKs or a recorded rewrap. */
  listKeys(): RegisteredKey[];
  close(): void;
}
