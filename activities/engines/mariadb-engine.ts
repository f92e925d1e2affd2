import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, readFile, readdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { createConnection, createPool, type Pool, SqlError } from 'mariadb';
import type { KeyManagementService } from '../kms/key-management-service';
import { processAlive } from '../process-alive';
import { readBackupFile, writeBackupStream } from './backup-file-format';
import { childEnvironment } from './child-environment';
import { EngineError } from './engine-error';
import { classifyMariaDbTool, runTool, toolOutput } from './mariadb-backup-tool';
import { writeCheckServerOptions } from './mariadb-check-options';
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
  /** The server's option file: mariadb-backup and scratch servers read the plugin's settings from it. */
  serverConfig: string;
  /** The token the server's plugin uses, in a file: mariadb-backup gets it as VAULT_TOKEN. */
  vaultTokenFile: string;
  tools?: { mariadbBackup?: string; mbstream?: string; mariadbd?: string; myPrintDefaults?: string };
}

export interface MariaDbBackup {
  path: string;
  bytes: number;
  sha256: string;
  plainBytes: number;
  /** The KMS root key and version wrapping the backup's key. */
  keyId: string;
  keyVersion: number;
  /** The versions of MariaDB's own key the pages inside are encrypted with (a restore needs them). */
  engineKeys: { keyId: number; oldestVersion: number; latestVersion: number };
  /** SHA-256 of this backup's own key (each backup has a fresh one). */
  backupKeyHash: string;
  createdAt: string;
}

export interface MariaDbCheck {
  tables: number;
  rows: number;
  /** Rows per `schema.table`. */
  counts: Record<string, number>;
}

/** Schemas of the server itself: not the operator's data. */
const SYSTEM_SCHEMAS = ['mysql', 'information_schema', 'performance_schema', 'sys'];

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
  /**
   * MariaDB itself reports no valid latest version (4294967295): its plugin could not read the
   * key store. With hashicorp_key_management_cache_version_timeout=0 it stays so after the store
   * is back (seen on 10.11.19), and no page is re-encrypted until the server restarts.
   */
  serverLostKey: boolean;
}

/** ENCRYPTION_KEY_VERSION_INVALID: what MariaDB reports when its plugin returned no version. */
const INVALID_KEY_VERSION = 0xffffffff;

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

/**
 * Scratch directories are named `<prefix>-<pid>-…` after the worker process that made them. One
 * whose process is gone (a worker killed mid-backup or mid-check) is removed; a live one may be
 * another worker's backup of the same database, and stays.
 */
export async function removeStaleScratch(workDir: string, prefix: string): Promise<void> {
  const entries = await readdir(workDir).catch(() => [] as string[]);
  const pattern = new RegExp(`^${prefix}-(\\d+)-`);
  for (const name of entries) {
    const pid = pattern.exec(name)?.[1];
    if (pid !== undefined && Number(pid) !== process.pid && !processAlive(Number(pid))) {
      await stopOrphanedCheckServer(join(workDir, name));
      await rm(join(workDir, name), { recursive: true, force: true });
    }
  }
}

/**
 * A worker killed during a check leaves its scratch mariadbd running on the scratch directory.
 * It is stopped before the directory goes, but only if the pid in its pid file still belongs to
 * a mariadbd started on this directory (a reused pid is some other process: left alone).
 */
async function stopOrphanedCheckServer(dir: string): Promise<void> {
  const pid = Number((await readFile(join(dir, 'check.pid'), 'utf8').catch(() => '')).trim());
  if (!Number.isInteger(pid) || pid <= 0 || !processAlive(pid)) return;
  const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
  if (!cmdline.some((arg) => arg === `--datadir=${dir}`)) return;
  process.kill(pid, 'SIGKILL');
  for (let i = 0; i < 100 && processAlive(pid); i++) await new Promise((r) => setTimeout(r, 50));
}

/** A server error as an EngineError: connection trouble passes, the rest is the caller's to fix. */
export function mariadbError(what: string, err: unknown): EngineError {
  if (err instanceof EngineError) return err;
  if (err instanceof SqlError) {
    const code = err.code ?? '';
    // The server asks its key store for the latest versions while answering: a sealed or
    // unreachable store fails the statement, and passes once the store is back.
    if (/hashicorp|Unable to get key|encryption key/i.test(err.sqlMessage ?? err.message)) {
      return new EngineError('KEY_UNAVAILABLE', `${what}: MariaDB could not get its key from the key store: ${err.sqlMessage ?? err.message}`, code || undefined);
    }
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
           FROM information_schema.INNODB_TABLESPACES_ENCRYPTION WHERE CURRENT_KEY_ID = ? AND ENCRYPTION_SCHEME <> 0 ORDER BY SPACE`,
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
      serverLostKey: tablespaces.some((t) => t.currentKeyVersion === INVALID_KEY_VERSION),
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

  /** The key's versions in the key store, oldest first (metadata only: the material is never read). */
  keyVersions(): ReturnType<MariaDbKeyStore['versions']> {
    return this.options.keyStore.versions(this.keyId);
  }

  destroyKeyVersions(versions: number[]): Promise<void> {
    return this.options.keyStore.destroyVersions(this.keyId, versions);
  }

  /** For messages: the key and the store it is in. */
  get keyDescription(): string {
    return `MariaDB key ${this.keyId} in ${this.options.keyStore.where}`;
  }

  private get tools() {
    return { mariadbBackup: 'mariadb-backup', mbstream: 'mbstream', mariadbd: 'mariadbd', ...this.options.tools };
  }

  private async vaultToken(): Promise<string> {
    try {
      return (await readFile(this.options.vaultTokenFile, 'utf8')).trim();
    } catch (err) {
      throw new EngineError('PERMISSION_DENIED', `cannot read the Vault token file ${this.options.vaultTokenFile}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
  }

  /**
   * `mariadb-backup --backup --stream=xbstream`, encrypted on the fly into keyops' backup format
   * (format 3) under a fresh backup key wrapped by the KMS root key. Refused while MariaDB still
   * re-encrypts pages for a new key version (KEY_IN_TRANSITION: the night waits, reference 000).
   * `workDir` holds the tool's scratch files (never backup data: the stream goes to the file).
   */
  async backup(input: {
    path: string;
    databaseId: string;
    backupId: string;
    night: string;
    kms: Pick<KeyManagementService, 'wrap'>;
    rootKeyId: string;
    workDir: string;
    progress?: (bytes: number) => void;
  }): Promise<MariaDbBackup> {
    const state = await this.encryptionState();
    if (state.serverLostKey) {
      throw new EngineError(
        'KEY_UNAVAILABLE',
        `MariaDB reports no valid version of key ${this.keyId}: its key-management plugin cannot read ${this.options.keyStore.where} (if the store is reachable again, a hashicorp_key_management_cache_version_timeout of 0 keeps the failure until mariadbd restarts)`,
      );
    }
    if (!state.settled || state.oldestVersionNeeded === undefined) {
      const moving = state.tablespaces.filter((t) => t.rotating || t.minKeyVersion + state.rotateKeyAge < state.latestVersion).map((t) => t.name);
      throw new EngineError('KEY_IN_TRANSITION', `MariaDB is re-encrypting ${moving.length} tablespace(s) for key ${this.keyId} version ${state.latestVersion} (${moving.slice(0, 5).join(', ')}): the backup waits`);
    }
    const token = await this.vaultToken();
    const { wdek, keyVersion, dek } = await input.kms.wrap(input.rootKeyId);
    try {
      await removeStaleScratch(input.workDir, 'mariadb-backup');
      const scratch = join(input.workDir, `mariadb-backup-${process.pid}-${Date.now()}`);
      await mkdir(scratch, { recursive: true, mode: 0o700 });
      try {
        const engineKeys = { keyId: this.keyId, oldestVersion: state.oldestVersionNeeded, latestVersion: state.latestVersion };
        const createdAt = new Date().toISOString();
        const backupKeyHash = createHash('sha256').update(dek).digest('hex');
        const source = toolOutput(
          this.tools.mariadbBackup,
          [`--defaults-file=${this.options.serverConfig}`, '--backup', '--stream=xbstream', `--target-dir=${scratch}`, `--socket=${this.options.socket}`, `--user=${this.options.user ?? 'root'}`],
          { vaultToken: token },
        );
        const written = await writeBackupStream({
          path: input.path,
          header: {
            databaseId: input.databaseId,
            createdAt,
            keyId: input.rootKeyId,
            keyVersion,
            // The backup key is the only key keyops holds for this engine: its WDEK is the file's.
            wdek: wdek.toString('base64'),
            backupKeyHash,
            backupKey: { keyId: input.rootKeyId, keyVersion, wdek: wdek.toString('base64') },
            backupId: input.backupId,
            night: input.night,
            engineKeys: { store: 'vault-kv', ...engineKeys },
          },
          source,
          key: dek,
          ...(input.progress ? { progress: input.progress } : {}),
        });
        return { path: input.path, ...written, keyId: input.rootKeyId, keyVersion, engineKeys, backupKeyHash, createdAt };
      } finally {
        await rm(scratch, { recursive: true, force: true });
      }
    } finally {
      dek.fill(0);
    }
  }

  /**
   * Proves a backup restores: decrypts it (every chunk authenticated), `mbstream -x` into
   * `targetDir`, `mariadb-backup --prepare`, then a scratch `mariadbd` on the prepared directory
   * (its own socket, no networking, the server's key settings) runs CHECK TABLE on every table and
   * counts the rows. `keep` leaves the prepared directory in place: a restore.
   */
  async verifyBackup(input: {
    path: string;
    kms: Pick<KeyManagementService, 'unwrap'>;
    targetDir: string;
    keep?: boolean;
    expectedSha256?: string;
    progress?: (done: number, total: number) => void;
  }): Promise<MariaDbCheck & { sha256: string }> {
    const token = await this.vaultToken();
    await mkdir(dirname(input.targetDir), { recursive: true, mode: 0o700 });
    await mkdir(input.targetDir, { recursive: false, mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      throw new EngineError('DATABASE_EXISTS', `restore target ${input.targetDir} ${err.code === 'EEXIST' ? 'already exists: a restore never writes over a directory' : `cannot be made (${err.code ?? String(err)})`}`);
    });
    let done = false;
    try {
      const extract = spawn(this.tools.mbstream, ['-x', '-C', input.targetDir], { env: childEnvironment(), stdio: ['pipe', 'ignore', 'pipe'] });
      let extractErr = '';
      extract.stderr.setEncoding('utf8').on('data', (d: string) => (extractErr = (extractErr + d).slice(-16_384)));
      // A tool that cannot be started (ENOENT) rejects this: handled here, reported below.
      const extracted = (once(extract, 'close') as Promise<[number | null]>).catch((err: unknown) => {
        throw new EngineError('INVALID_CONFIGURATION', `${this.tools.mbstream} could not be started: ${(err as Error).message}`);
      });
      extracted.catch(() => undefined);
      extract.stdin.on('error', () => undefined); // a dying mbstream is reported by its exit code
      let sha256: string;
      try {
        ({ sha256 } = await readBackupFile({
          path: input.path,
          expectedSha256: input.expectedSha256,
          keyFor: async (header) => (await input.kms.unwrap(header.backupKey?.keyId ?? header.keyId, Buffer.from(header.backupKey?.wdek ?? header.wdek, 'base64'))).dek,
          write: async (data) => {
            if (!extract.stdin.write(data)) await Promise.race([once(extract.stdin, 'drain'), extracted]);
          },
          ...(input.progress ? { progress: input.progress } : {}),
        }));
      } catch (err) {
        // Nothing of a backup that failed may stay: mbstream stops before its directory goes.
        extract.kill('SIGKILL');
        await extracted.catch(() => undefined);
        throw err;
      } finally {
        extract.stdin.end();
      }
      const [code] = await extracted;
      if (code !== 0) throw classifyMariaDbTool('mbstream -x', code, extractErr);
      await runTool(this.tools.mariadbBackup, ['--prepare', `--target-dir=${input.targetDir}`], { vaultToken: token });
      const check = await this.checkDataDir(input.targetDir, token);
      done = true;
      return { ...check, sha256 };
    } finally {
      if (!input.keep || !done) await rm(input.targetDir, { recursive: true, force: true, maxRetries: 3 });
    }
  }

  /** A scratch server on `dataDir`, with the server's key settings, checks every table and counts rows. */
  private async checkDataDir(dataDir: string, token: string): Promise<MariaDbCheck> {
    const socket = join(dataDir, 'check.sock');
    const options = join(dataDir, 'check.cnf');
    await writeCheckServerOptions({ serverConfig: this.options.serverConfig, dataDir, target: options, ...(this.options.tools?.myPrintDefaults ? { myPrintDefaults: this.options.tools.myPrintDefaults } : {}) });
    const args = [
      `--defaults-file=${options}`,
      `--datadir=${dataDir}`,
      `--socket=${socket}`,
      `--pid-file=${join(dataDir, 'check.pid')}`,
      `--log-error=${join(dataDir, 'check.err')}`,
      '--skip-networking',
      // Belt and braces: none of these comes from check.cnf, and none may run on a check server.
      '--skip-log-bin',
      '--skip-slave-start',
      '--event-scheduler=OFF',
      '--innodb-encryption-threads=0',
      ...(process.getuid?.() === 0 ? ['--user=root'] : []),
    ];
    const server = spawn(this.tools.mariadbd, args, { env: childEnvironment({ VAULT_TOKEN: token }), stdio: 'ignore' });
    const gone = once(server, 'close').catch(() => undefined);
    try {
      let connection;
      for (const deadline = Date.now() + 120_000; !connection; ) {
        if (server.exitCode !== null || Date.now() > deadline) {
          const log = await readFile(join(dataDir, 'check.err'), 'utf8').catch(() => '');
          throw classifyMariaDbTool('the scratch mariadbd on the restored backup', server.exitCode, log);
        }
        connection = await createConnection({ socketPath: socket, user: this.options.user ?? 'root' }).catch(() => undefined);
        if (!connection) await new Promise((r) => setTimeout(r, 100));
      }
      try {
        const tables = await connection.query<{ s: string; t: string }[]>(
          `SELECT TABLE_SCHEMA AS s, TABLE_NAME AS t FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN (${SYSTEM_SCHEMAS.map(() => '?').join(', ')}) ORDER BY 1, 2`,
          SYSTEM_SCHEMAS,
        );
        const counts: Record<string, number> = {};
        const quote = (name: string) => `\`${name.replace(/`/g, '``')}\``;
        for (const { s, t } of tables) {
          const table = `${quote(s)}.${quote(t)}`;
          const checked = await connection.query<{ Msg_type: string; Msg_text: string }[]>(`CHECK TABLE ${table}`);
          const status = checked.find((r) => r.Msg_type === 'status') ?? checked.at(-1);
          if (status?.Msg_text !== 'OK') throw new EngineError('BACKUP_INVALID', `table ${s}.${t} restored from the backup fails CHECK TABLE: ${checked.map((r) => r.Msg_text).join('; ')}`);
          const [row] = await connection.query<{ n: bigint | number }[]>(`SELECT COUNT(*) AS n FROM ${table}`);
          counts[`${s}.${t}`] = Number(row?.n ?? 0);
        }
        return { tables: tables.length, rows: Object.values(counts).reduce((a, b) => a + b, 0), counts };
      } finally {
        await connection.end().catch(() => undefined);
      }
    } finally {
      if (server.exitCode === null) {
        server.kill('SIGTERM');
        const timer = setTimeout(() => server.kill('SIGKILL'), 30_000);
        await gone;
        clearTimeout(timer);
      }
      await rm(options, { force: true });
    }
  }

  private async query<T>(what: string, sql: string, values?: unknown[]): Promise<T[]> {
    try {
      return await this.pool.query<T[]>(sql, values);
    } catch (err) {
      throw mariadbError(what, err);
    }
  }
}
