/**
 * The embedded default KMS: a file-backed key store (plain SQLite, WAL) implementing every rule
 * of the KMS port with real AES-256-GCM. Root-key material is encrypted at rest under a KEK
 * derived (HKDF-SHA256, per-store random salt) from the master secret the operator supplies.
 *
 * Several processes may use one file at once: every mutation runs in an IMMEDIATE transaction
 * that re-reads what it depends on, and key state is read from the file on every call (only
 * the immutable, decrypted version material is cached). Rotation policies are applied lazily at
 * the start of each call that touches the key, at a random moment within a 24-hour window after
 * the interval, as Key Protect does (reference 001).
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { chmodSync, closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import Database from 'better-sqlite3-multiple-ciphers';
import type {
  KeyManagementService,
  KeyMetadata,
  KeyState,
  BatchResult,
  RewrapResult,
  RootKeyVersion,
  RotateResult,
  RotationPolicy,
  UnwrapResult,
  WrapResult,
} from './key-management-service';
import { KmsError } from './kms-error';
import { MAX_REQUEST_ID, checkBatch, checkName, checkPolicyMonths, quote } from './port-input';
import { DEK_LENGTH, ROOT_KEY_LENGTH, openWdek, sealWdek, wdekKeyVersion } from './wdek-format';
import { enableWal } from '../sqlite-wal';

export interface LocalKmsOptions {
  /** The SQLite file; its directory is created (mode 0700) if missing. */
  path: string;
  /** At least 32 bytes; the key-encryption key is derived from it. */
  masterSecret: Buffer;
  now?: () => Date;
  /** Probability (0..1) that a call fails with KMS_UNAVAILABLE before doing anything. */
  faultRate?: number;
  /** Uniform in [0, 1): policy offsets and injected faults. */
  random?: () => number;
}

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
const POLICY_MONTH_MS = 30 * DAY_MS;
const MIN_MASTER_SECRET = 32;
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const UUID_V4_ANY_CASE = new RegExp(UUID_V4.source, 'i');
 
const POLICY_REQUEST_PREFIX = 'policy/';

const KEK_INFO = 'keyops local-kms key-encryption key v1';
const VERIFIER_PLAINTEXT = Buffer.from('keyops local-kms master-secret verifier v1', 'utf8');
const SEALED_IV = 12;
const SEALED_TAG = 16;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS store_meta (
  name  TEXT PRIMARY KEY,
  value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS root_keys (
  key_id           TEXT PRIMARY KEY,
  name             TEXT NOT NULL,
  state            TEXT NOT NULL CHECK (state IN ('active', 'disabled')),
  created_at       TEXT NOT NULL,
  last_rotate_date TEXT,
  current_version  INTEGER NOT NULL CHECK (current_version >= 1),
  policy_months    INTEGER CHECK (policy_months BETWEEN 1 AND 12),
  policy_due_ms    INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS root_key_versions (
  key_id     TEXT NOT NULL REFERENCES root_keys (key_id),
  version    INTEGER NOT NULL CHECK (version >= 1),
  created_at TEXT NOT NULL,
  material   BLOB NOT NULL, -- IV (12) || tag (16) || AES-256-GCM(KEK, 32-byte root key)
  PRIMARY KEY (key_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rotation_requests (
  key_id     TEXT NOT NULL REFERENCES root_keys (key_id),
  request_id TEXT NOT NULL,
  version    INTEGER NOT NULL,
  created_at TEXT NOT NULL,
  PRIMARY KEY (key_id, request_id),
  UNIQUE (key_id, version)
) WITHOUT ROWID;
`;

interface KeyRow {
  key_id: string;
  name: string;
  state: KeyState;
  created_at: string;
  last_rotate_date: string | null;
  current_version: number;
  policy_months: number | null;
  policy_due_ms: number | null;
}

interface KeyPeek {
  state: KeyState;
  version: number;
  due: number | null;
}

type Db = Database.Database;

function prepareStatements(db: Db) {
  return {
    getKey: db.prepare<[string], KeyRow>('SELECT * FROM root_keys WHERE key_id = ?'),
    /** The hot path (wrap, unwrap, rewrap): only what those need. */
    peekKey: db.prepare<[string], KeyPeek>(
      'SELECT state, current_version AS version, policy_due_ms AS due FROM root_keys WHERE key_id = ?',
    ),
    /** Changes whenever another connection commits (reference: SQLite "PRAGMA data_version"). */
    dataVersion: db.prepare<[], number>('PRAGMA data_version').pluck(),
    insertKey: db.prepare<[string, string, string]>(
      `INSERT INTO root_keys (key_id, name, state, created_at, current_version) VALUES (?, ?, 'active', ?, 1)`,
    ),
    advanceKey: db.prepare<[number, string, number | null, string, number]>(
      'UPDATE root_keys SET current_version = ?, last_rotate_date = ?, policy_due_ms = ? WHERE key_id = ? AND current_version = ?',
    ),
    setPolicy: db.prepare<[number | null, number | null, string]>(
      'UPDATE root_keys SET policy_months = ?, policy_due_ms = ? WHERE key_id = ?',
    ),
    setState: db.prepare<[KeyState, string]>('UPDATE root_keys SET state = ? WHERE key_id = ?'),
    getVersion: db.prepare<[string, number], { material: Buffer }>(
      'SELECT material FROM root_key_versions WHERE key_id = ? AND version = ?',
    ),
    listVersions: db.prepare<[string], { version: number; createdAt: string; requestId: string | null }>(
      `SELECT v.version, v.created_at AS createdAt, r.request_id AS requestId
         FROM root_key_versions v LEFT JOIN rotation_requests r ON r.key_id = v.key_id AND r.version = v.version
        WHERE v.key_id = ? ORDER BY v.version`,
    ),
    insertVersion: db.prepare<[string, number, string, Buffer]>(
      'INSERT INTO root_key_versions (key_id, version, created_at, material) VALUES (?, ?, ?, ?)',
    ),
    getRequest: db.prepare<[string, string], { version: number }>(
      'SELECT version FROM rotation_requests WHERE key_id = ? AND request_id = ?',
    ),
    insertRequest: db.prepare<[string, string, number, string]>(
      'INSERT INTO rotation_requests (key_id, request_id, version, created_at) VALUES (?, ?, ?, ?)',
    ),
  };
}

/** AES-256-GCM under the KEK: IV || tag || ciphertext. */
function seal(kek: Buffer, aad: string, plaintext: Buffer): Buffer {
  const iv = randomBytes(SEALED_IV);
  const cipher = createCipheriv('aes-256-gcm', kek, iv, { authTagLength: SEALED_TAG });
  cipher.setAAD(Buffer.from(aad, 'utf8'));
  const ct = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([iv, cipher.getAuthTag(), ct]);
}

/** The plaintext, or undefined when the sealed bytes do not authenticate under this KEK. */
function unseal(kek: Buffer, aad: string, sealed: Buffer): Buffer | undefined {
  if (sealed.length < SEALED_IV + SEALED_TAG) return undefined;
  const decipher = createDecipheriv('aes-256-gcm', kek, sealed.subarray(0, SEALED_IV), { authTagLength: SEALED_TAG });
  decipher.setAAD(Buffer.from(aad, 'utf8'));
  decipher.setAuthTag(sealed.subarray(SEALED_IV, SEALED_IV + SEALED_TAG));
  try {
    return Buffer.concat([decipher.update(sealed.subarray(SEALED_IV + SEALED_TAG)), decipher.final()]);
  } catch {
    return undefined;
  }
}

const materialAad = (keyId: string, version: number) => `keyops local-kms root key\u0000${keyId}\u0000${version}`;


/** A batch entry: the WDEK's own CIPHERTEXT_INVALID is its result; anything else fails the call. */
function invalidAsValue<T>(fn: () => T): T | KmsError {
  try {
    return fn();
  } catch (err) {
    if (err instanceof KmsError && err.code === 'CIPHERTEXT_INVALID') return err;
    throw err;
  }
}

function isBusy(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED'));
}


function checkKeyId(keyId: unknown): string {
  if (typeof keyId === 'string' && UUID_V4.test(keyId)) return keyId;
  if (typeof keyId === 'string' && UUID_V4_ANY_CASE.test(keyId)) return keyId.toLowerCase();
  throw new KmsError('INVALID_INPUT', `key id ${quote(keyId)} is not a UUID v4`);
}


function checkRequestId(requestId: unknown, keyId: string): string {
  if (typeof requestId !== 'string' || requestId.length === 0 || requestId.length > MAX_REQUEST_ID) {
    throw new KmsError('INVALID_INPUT', `rotation request id ${quote(requestId)} must be 1 to ${MAX_REQUEST_ID} characters`, keyId);
  }
  if (requestId.startsWith(POLICY_REQUEST_PREFIX)) {
    throw new KmsError('INVALID_INPUT', `rotation request ids starting with "${POLICY_REQUEST_PREFIX}" are reserved for policy rotations`, keyId);
  }
  return requestId;
}

function checkPolicy(policy: unknown, keyId: string): RotationPolicy | undefined {
  if (policy === undefined) return undefined;
  return { intervalMonths: checkPolicyMonths(policy, keyId) };
}

function createFile0600(path: string): void {
  try {
    closeSync(openSync(path, 'wx', 0o600));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
}

function chmodIfExists(path: string, mode: number): void {
  try {
    chmodSync(path, mode);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** Creates the schema and salt on first use; returns the KEK once the verifier accepts it. */
function initStore(db: Db, masterSecret: Buffer, path: string): Buffer {
  return db
    .transaction((): Buffer => {
      db.exec(SCHEMA);
      const getMeta = db.prepare<[string], { value: Buffer }>('SELECT value FROM store_meta WHERE name = ?');
      let salt = getMeta.get('kdf_salt')?.value;
      if (!salt) {
        salt = randomBytes(32);
        const kek = deriveKek(masterSecret, salt);
        const put = db.prepare<[string, Buffer]>('INSERT INTO store_meta (name, value) VALUES (?, ?)');
        put.run('format', Buffer.from('1'));
        put.run('kdf_salt', salt);
        put.run('verifier', seal(kek, 'verifier', VERIFIER_PLAINTEXT));
        return kek;
      }
      const format = getMeta.get('format')?.value.toString();
      if (format !== '1') throw new KmsError('INVALID_INPUT', `${path} is a key store of unknown format ${String(format)}`);
      const kek = deriveKek(masterSecret, salt);
      const verifier = getMeta.get('verifier')?.value;
      const opened = verifier && unseal(kek, 'verifier', verifier);
      if (!opened || opened.length !== VERIFIER_PLAINTEXT.length || !timingSafeEqual(opened, VERIFIER_PLAINTEXT)) {
        throw new KmsError('INVALID_INPUT', `the master secret does not match this key store (${path})`);
      }
      return kek;
    })
    .immediate();
}

function deriveKek(masterSecret: Buffer, salt: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', masterSecret, salt, KEK_INFO, 32));
}

export class LocalKms implements KeyManagementService {
  private readonly stmt: ReturnType<typeof prepareStatements>;
  /** Decrypted root-key material per key id, indexed by version: versions never change once written. */
  private readonly materials = new Map<string, (Buffer | undefined)[]>();
  /**
   * The hot path's view of each key, valid only while `PRAGMA data_version` (checked on every
   * call) has not changed, i.e. no other connection has committed, and cleared by this
   * connection's own writes: as fresh as re-reading the row, for half the cost.
   */
  private readonly peeks = new Map<string, KeyPeek>();
  private peeksDataVersion = -1;
  private readonly now: () => Date;
  private readonly random: () => number;
  private readonly faultRate: number;

  private constructor(
    private readonly db: Db,
    private readonly kek: Buffer,
    options: LocalKmsOptions,
  ) {
    this.stmt = prepareStatements(db);
    this.now = options.now ?? (() => new Date());
    this.random = options.random ?? Math.random;
    this.faultRate = options.faultRate ?? 0;
  }

  static open(options: LocalKmsOptions): LocalKms {
    const { masterSecret } = options;
    if (!Buffer.isBuffer(masterSecret) || masterSecret.length < MIN_MASTER_SECRET) {
      throw new KmsError('INVALID_INPUT', `the master secret must be at least ${MIN_MASTER_SECRET} bytes`);
    }
    const faultRate = options.faultRate ?? 0;
    if (typeof faultRate !== 'number' || !(faultRate >= 0 && faultRate <= 1)) {
      throw new KmsError('INVALID_INPUT', `faultRate must be between 0 and 1, got ${String(faultRate)}`);
    }
    const path = resolve(options.path);
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    createFile0600(path);
    const db = new Database(path, { timeout: 5000 });
    try {
      db.pragma('busy_timeout = 5000');
      enableWal(db);
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      const kek = initStore(db, masterSecret, path);
      for (const file of [path, `${path}-wal`, `${path}-shm`]) chmodIfExists(file, 0o600);
      return new LocalKms(db, kek, { ...options, faultRate });
    } catch (err) {
      db.close();
      throw isBusy(err) ? new KmsError('KMS_UNAVAILABLE', `the key store ${path} is locked by another process`) : err;
    }
  }

  close(): void {
    if (!this.db.open) return;
    this.db.close();
    for (const versions of this.materials.values()) for (const m of versions) m?.fill(0);
    this.materials.clear();
    this.kek.fill(0);
  }

  createKey(input: { name: string }): Promise<KeyMetadata> {
    return this.call(() => {
      const name = checkName(input?.name);
      const keyId = randomUUID();
      const createdAt = this.now().toISOString();
      const material = randomBytes(ROOT_KEY_LENGTH);
      this.write(() => {
        this.stmt.insertKey.run(keyId, name, createdAt);
        this.stmt.insertVersion.run(keyId, 1, createdAt, seal(this.kek, materialAad(keyId, 1), material));
      });
      material.fill(0);
      return this.metadata(this.requireKey(keyId));
    });
  }

  getKeyMetadata(keyId: string): Promise<KeyMetadata> {
    return this.call(() => this.metadata(this.loadKey(checkKeyId(keyId))));
  }

  /** Its crypto runs on this thread: concurrent batches only interleave, they never overlap. */
  batchConcurrency(): number {
    return 1;
  }

  rotateKey(keyId: string, requestId: string): Promise<RotateResult> {
    return this.call(() => {
      const id = checkKeyId(keyId);
      const request = checkRequestId(requestId, id);
      this.loadKey(id);
      return this.write((): RotateResult => {
        const row = this.requireKey(id);
        this.requireActive(row);
        const prior = this.stmt.getRequest.get(id, request);
        if (prior) return { version: prior.version, rotated: false };
        const nowMs = this.now().getTime();
        if (row.last_rotate_date !== null) {
          const allowedMs = Date.parse(row.last_rotate_date) + HOUR_MS;
          if (nowMs < allowedMs) {
            const allowed = new Date(allowedMs).toISOString();
            throw new KmsError(
              'KEY_ROTATION_NOT_PERMITTED',
              `key ${id} was last rotated at ${row.last_rotate_date}; it may be rotated again from ${allowed} (at most once per hour)`,
              id,
              allowed,
            );
          }
        }
        return { version: this.appendVersion(row, nowMs, request), rotated: true };
      });
    });
  }

  wrap(keyId: string, dek?: Buffer): Promise<WrapResult> {
    return this.call(() => {
      const id = checkKeyId(keyId);
      if (dek !== undefined && (!(dek instanceof Uint8Array) || dek.length !== DEK_LENGTH)) {
        throw new KmsError('INVALID_INPUT', `a DEK must be ${DEK_LENGTH} bytes`, id);
      }
      const version = this.activeVersion(id);
      const plain = dek ?? randomBytes(DEK_LENGTH);
      return { wdek: sealWdek(this.latestMaterial(id, version), id, version, plain), keyVersion: version, dek: plain };
    });
  }

  unwrap(keyId: string, wdek: Buffer): Promise<UnwrapResult> {
    return this.call(() => {
      const id = checkKeyId(keyId);
      return this.open(id, this.activeVersion(id), wdek);
    });
  }

  rewrap(keyId: string, wdek: Buffer): Promise<RewrapResult> {
    return this.call(() => {
      const id = checkKeyId(keyId);
      const version = this.activeVersion(id);
      return this.rewrapOne(id, version, this.latestMaterial(id, version), wdek);
    });
  }

  // The key's state is read once per batch, as for a single call: checking it per WDEK (a read
  // transaction on the shared file each time) cost more than the AES work itself.
  unwrapBatch(keyId: string, wdeks: readonly Buffer[]): Promise<BatchResult<UnwrapResult>> {
    return this.call(() => {
      const id = checkKeyId(keyId);
      checkBatch(wdeks, id);
      const version = this.activeVersion(id);
      return wdeks.map((wdek) => invalidAsValue(() => this.open(id, version, wdek)));
    });
  }

  rewrapBatch(keyId: string, wdeks: readonly Buffer[]): Promise<BatchResult<RewrapResult>> {
    return this.call(() => {
      const id = checkKeyId(keyId);
      checkBatch(wdeks, id);
      const version = this.activeVersion(id);
      const material = this.latestMaterial(id, version);
      return wdeks.map((wdek) => invalidAsValue(() => this.rewrapOne(id, version, material, wdek)));
    });
  }

  private rewrapOne(id: string, version: number, material: Buffer, wdek: Buffer): RewrapResult {
    const { dek, keyVersion: previousVersion } = this.open(id, version, wdek);
    const rewrapped = sealWdek(material, id, version, dek);
    dek.fill(0);
    return { wdek: rewrapped, keyVersion: version, previousVersion };
  }

  setRotationPolicy(keyId: string, policy: RotationPolicy | undefined): Promise<KeyMetadata> {
    return this.call(() => {
      const id = checkKeyId(keyId);
      const checked = checkPolicy(policy, id);
      this.loadKey(id);
      const row = this.write((): KeyRow => {
        const current = this.requireKey(id);
        if (checked) {
          const base = Date.parse(current.last_rotate_date ?? current.created_at);
          this.stmt.setPolicy.run(checked.intervalMonths, this.dueAt(base, checked.intervalMonths), id);
        } else {
          this.stmt.setPolicy.run(null, null, id);
        }
        return this.requireKey(id);
      });
      return this.metadata(row);
    });
  }

  disableKey(keyId: string): Promise<void> {
    return this.setState(keyId, 'disabled');
  }

  enableKey(keyId: string): Promise<void> {
    return this.setState(keyId, 'active');
  }

  private setState(keyId: string, state: KeyState): Promise<void> {
    return this.call(() => {
      const id = checkKeyId(keyId);
      this.loadKey(id);
      this.write(() => {
        this.requireKey(id);
        this.stmt.setState.run(state, id);
      });
    });
  }

  /** An IMMEDIATE transaction (the write lock first, so concurrent writers queue, never deadlock). */
  private write<T>(fn: () => T): T {
    try {
      return this.db.transaction(fn).immediate();
    } finally {
      this.peeks.clear();
    }
  }

  /** Every call starts here: a closed store is a bug; an injected fault happens before any effect. */
  private begin(): void {
    if (!this.db.open) throw new Error('this LocalKms has been closed');
    if (this.faultRate > 0 && this.random() < this.faultRate) {
      throw new KmsError('KMS_UNAVAILABLE', 'the local KMS is unavailable (injected fault); retry later');
    }
  }

  /**
   * Runs one call as a promise (the port is asynchronous; this store is not). A store locked
   * past busy_timeout by another process is a transient outage.
   */
  private call<T>(fn: () => T): Promise<T> {
    try {
      this.begin();
      return Promise.resolve(fn());
    } catch (err) {
      if (isBusy(err)) {
        return Promise.reject(new KmsError('KMS_UNAVAILABLE', 'the local key store is busy (locked by another process); retry later'));
      }
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private requireKey(keyId: string): KeyRow {
    const row = this.stmt.getKey.get(keyId);
    if (!row) throw new KmsError('KEY_NOT_FOUND', `no key ${keyId} in this key store`, keyId);
    return row;
  }

  private requireActive(row: KeyRow): KeyRow {
    if (row.state !== 'active') throw new KmsError('KEY_DISABLED', `key ${row.key_id} is disabled`, row.key_id);
    return row;
  }

  /** The latest version of an active key, as the file has it now (after a due policy rotation). */
  private activeVersion(keyId: string): number {
    const dataVersion = this.stmt.dataVersion.get();
    if (dataVersion !== this.peeksDataVersion) {
      this.peeks.clear();
      this.peeksDataVersion = dataVersion ?? -1;
    }
    let peek = this.peeks.get(keyId);
    if (!peek) {
      peek = this.stmt.peekKey.get(keyId);
      if (peek) this.peeks.set(keyId, peek);
    }
    if (!peek) throw new KmsError('KEY_NOT_FOUND', `no key ${keyId} in this key store`, keyId);
    if (peek.state !== 'active') throw new KmsError('KEY_DISABLED', `key ${keyId} is disabled`, keyId);
    if (peek.due === null || this.now().getTime() < peek.due) return peek.version;
    return this.requireActive(this.loadKey(keyId)).current_version;
  }

  /** The key as the file has it now, after applying its rotation policy if one is due. */
  private loadKey(keyId: string): KeyRow {
    const row = this.requireKey(keyId);
    if (row.policy_due_ms === null || row.state !== 'active' || this.now().getTime() < row.policy_due_ms) return row;
    return this.write((): KeyRow => {
      const current = this.requireKey(keyId);
      const nowMs = this.now().getTime();
      if (current.policy_due_ms === null || current.state !== 'active' || nowMs < current.policy_due_ms) return current;
      this.appendVersion(current, nowMs, `${POLICY_REQUEST_PREFIX}${current.current_version + 1}`);
      return this.requireKey(keyId);
    });
  }

  /** Inside a transaction: adds the next version, records why, and schedules the policy anew. */
  private appendVersion(row: KeyRow, nowMs: number, requestId: string): number {
    const version = row.current_version + 1;
    const at = new Date(nowMs).toISOString();
    const material = randomBytes(ROOT_KEY_LENGTH);
    this.stmt.insertVersion.run(row.key_id, version, at, seal(this.kek, materialAad(row.key_id, version), material));
    material.fill(0);
    this.stmt.insertRequest.run(row.key_id, requestId, version, at);
    const due = row.policy_months === null ? null : this.dueAt(nowMs, row.policy_months);
    const changed = this.stmt.advanceKey.run(version, at, due, row.key_id, row.current_version).changes;
    if (changed !== 1) throw new Error(`key ${row.key_id} changed during its rotation`);
    return version;
  }

  /** The policy's next rotation: the interval, then an unpredictable moment within 24 hours. */
  private dueAt(baseMs: number, months: number): number {
    const offset = Math.min(DAY_MS - 1, Math.max(0, Math.floor(this.random() * DAY_MS)));
    return baseMs + months * POLICY_MONTH_MS + offset;
  }

  private open(id: string, currentVersion: number, wdek: Buffer): UnwrapResult {
    const keyVersion = wdekKeyVersion(wdek, id);
    const material = keyVersion <= currentVersion ? this.material(id, keyVersion) : undefined;
    if (!material) {
      throw new KmsError('CIPHERTEXT_INVALID', `the WDEK is not valid for key ${id}: it names version ${keyVersion}, which the key does not have`, id);
    }
    return { dek: openWdek(material, id, wdek), keyVersion };
  }

  private latestMaterial(keyId: string, version: number): Buffer {
    const material = this.material(keyId, version);
    if (!material) throw new Error(`the key store lacks version ${version} of key ${keyId}`);
    return material;
  }

  private material(keyId: string, version: number): Buffer | undefined {
    let versions = this.materials.get(keyId);
    const cached = versions?.[version];
    if (cached) return cached;
    const row = this.stmt.getVersion.get(keyId, version);
    if (!row) return undefined;
    const material = unseal(this.kek, materialAad(keyId, version), row.material);
    if (!material || material.length !== ROOT_KEY_LENGTH) {
      throw new Error(`version ${version} of key ${keyId} does not decrypt: the key store is corrupted`);
    }
    if (!versions) this.materials.set(keyId, (versions = []));
    versions[version] = material;
    return material;
  }

  private metadata(row: KeyRow): KeyMetadata {
    return {
      keyId: row.key_id,
      name: row.name,
      state: row.state,
      currentVersion: row.current_version,
      versions: this.stmt.listVersions.all(row.key_id).map(
        (v): RootKeyVersion => ({ version: v.version, createdAt: v.createdAt, ...(v.requestId === null ? {} : { requestId: v.requestId }) }),
      ),
      createdAt: row.created_at,
      lastRotateDate: row.last_rotate_date ?? undefined,
      rotationPolicy: row.policy_months === null ? undefined : { intervalMonths: row.policy_months },
    };
  }
}
