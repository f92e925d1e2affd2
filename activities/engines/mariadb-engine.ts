import { createPool, type Pool, SqlError } from 'mariadb';
import { EngineError } from './engine-error';
import type { MariaDbKeyStore } from './mariadb-key-store';

/**
 * A MariaDB server whose InnoDB tablespaces are encrypted with keys from Vault/OpenBao (the
 * `hashicorp_key_management` plugin), as keyops sees it: which key version every tablespace is
 * on, and rotations of that key. Unlike the embedded engine, MariaDB re-keys itself: after a new
 * key version its background threads re-encrypt pages, and keyops follows them.
 *
 * MariaDB re-encrypts a page only when its key version is more than `innodb_encryption_rotate_key_age`
 * versions behind the latest (`key_version + rotate_key_age < latest_key_version` in fil0crypt.cc).
 * With the usual age of 1, a new version leaves the pages on the one before; the next rotation
 * moves them on. So the version MariaDB still needs is the oldest any tablespace is on, and a
 * rotation is settled once no tablespace is behind by more than the age and none is rotating.
 */
export interface MariaDbEngineOptions {
  /** The server's unix socket; keyops connects as `user` through it (no password). */
  socket: string;
  user?: string;
  keyStore: MariaDbKeyStore;
  /** The MariaDB key id whose versions keyops rotates (1: the default key of every table). */
  keyId?: number;
}

export interface TablespaceEncryption {
  name: string;
  keyId: number;
  /** The oldest key version any page of the tablespace is still encrypted with. */
  minKeyVersion: number;
  currentKeyVersion: number;
  rotating: boolean;
  /** Where the background re-encryption is, while it runs. */
  page: number | undefined;
  maxPage: number | undefined;
}

export interface MariaDbEncryptionState {
  keyId: number;
  /** The key's latest version in the key store. */
  latestVersion: number;
  rotateKeyAge: number;
  encryptionThreads: number;
  tablespaces: TablespaceEncryption[];
  /** The oldest version a tablespace of this key still needs (never destroy it, or any later). */
  oldestVersionNeeded: number | undefined;
  /** Nothing is left for MariaDB to re-encrypt for the latest version. */
  settled: boolean;
}

interface TablespaceRow {
  NAME: string;
  CURRENT_KEY_ID: number;
  MIN_KEY_VERSION: number;
  CURRENT_KEY_VERSION: number;
  ROTATING_OR_FLUSHING: number;
  KEY_ROTATION_PAGE_NUMBER: number | bigint | null;
  KEY_ROTATION_MAX_PAGE_NUMBER: number | bigint | null;
}

const num = (v: number | bigint | null): number | undefined => (v === null ? undefined : Number(v));

/** A server error as an EngineError: connection trouble passes, the rest is the caller's to fix. */
export function mariadbError(what: string, err: unknown): EngineError {
  if (err instanceof EngineError) return err;
  if (err instanceof SqlError) {
    const code = err.code ?? '';
    if (code === 'ER_ACCESS_DENIED_ERROR' || code === 'ER_SPECIFIC_ACCESS_DENIED_ERROR' || code === 'ER_DBACCESS_DENIED_ERROR') {
      return new EngineError('PERMISSION_DENIED', `${what}: MariaDB refused access (${code}): ${err.sqlMessage ?? err.message}`, code);
    }
    if (code === 'ER_LOCK_WAIT_TIMEOUT' || code === 'ER_LOCK_DEADLOCK' || code === 'ER_CON_COUNT_ERROR' || err.fatal) {
      return new EngineError('DATABASE_BUSY', `${what}: MariaDB is busy or the connection dropped (${code}): ${err.sqlMessage ?? err.message}`, code);
    }
    return new EngineError('ENGINE_COMMAND_FAILED', `${what}: ${err.sqlMessage ?? err.message}`, code || undefined);
  }
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'EPIPE') {
    return new EngineError('DATABASE_BUSY', `${what}: MariaDB did not answer on its socket (${code})`, code);
  }
  return new EngineError('ENGINE_COMMAND_FAILED', `${what}: ${err instanceof Error ? err.message : String(err)}`);
}

export class MariaDbEngine {
  private readonly pool: Pool;
  readonly keyId: number;

  constructor(private readonly options: MariaDbEngineOptions) {
    this.keyId = options.keyId ?? 1;
    this.pool = createPool({ socketPath: options.socket, user: options.user ?? 'root', connectionLimit: 2, acquireTimeout: 10_000 });
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  /** Every tablespace's key versions, from information_schema, next to the key's latest version. */
  async encryptionState(): Promise<MariaDbEncryptionState> {
    const what = `reading MariaDB's encryption state (key ${this.keyId})`;
    const [rows, settings] = await Promise.all([
      this.query<TablespaceRow>(
        what,
        `SELECT NAME, CURRENT_KEY_ID, MIN_KEY_VERSION, CURRENT_KEY_VERSION, ROTATING_OR_FLUSHING, KEY_ROTATION_PAGE_NUMBER, KEY_ROTATION_MAX_PAGE_NUMBER
           FROM information_schema.INNODB_TABLESPACES_ENCRYPTION WHERE CURRENT_KEY_ID = ? ORDER BY SPACE`,
        [this.keyId],
      ),
      this.query<{ age: number | bigint; threads: number | bigint }>(what, 'SELECT @@innodb_encryption_rotate_key_age AS age, @@innodb_encryption_threads AS threads'),
    ]);
    const { current } = await this.options.keyStore.versions(this.keyId);
    const rotateKeyAge = Number(settings[0]?.age ?? 1);
    const tablespaces = rows.map((r) => ({
      name: r.NAME,
      keyId: Number(r.CURRENT_KEY_ID),
      minKeyVersion: Number(r.MIN_KEY_VERSION),
      currentKeyVersion: Number(r.CURRENT_KEY_VERSION),
      rotating: Number(r.ROTATING_OR_FLUSHING) !== 0,
      page: num(r.KEY_ROTATION_PAGE_NUMBER),
      maxPage: num(r.KEY_ROTATION_MAX_PAGE_NUMBER),
    }));
    const oldest = tablespaces.length > 0 ? Math.min(...tablespaces.map((t) => t.minKeyVersion)) : undefined;
    // Age 0 turns re-encryption off: nothing will move, so nothing is pending either.
    const behind = (t: TablespaceEncryption) => rotateKeyAge > 0 && t.minKeyVersion + rotateKeyAge < current;
    return {
      keyId: this.keyId,
      latestVersion: current,
      rotateKeyAge,
      encryptionThreads: Number(settings[0]?.threads ?? 0),
      tablespaces,
      oldestVersionNeeded: oldest,
      settled: tablespaces.every((t) => !t.rotating && !behind(t)),
    };
  }

  /**
   * A new version of the key, made from fresh random material in the key store; MariaDB sees it
   * on its next key lookup. Idempotent through `expectedVersion`: a retry, or a second rotation
   * asked for the same starting version, finds the key already past it and adds nothing.
   */
  async rotateKey(expectedVersion: number): Promise<{ version: number; rotated: boolean }> {
    return this.options.keyStore.rotate(this.keyId, expectedVersion);
  }

  private async query<T>(what: string, sql: string, values?: unknown[]): Promise<T[]> {
    try {
      return await this.pool.query<T[]>(sql, values);
    } catch (err) {
      throw mariadbError(what, err);
    }
  }
}
