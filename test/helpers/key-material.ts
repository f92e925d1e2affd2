/**
 * What the key-material scan (key-material-scan.ts, run by test/run-tests.ts after the suite)
 * needs from each test process: the real secrets it created or learned, the logs its workers
 * wrote (and the output of commands, the results of queries), and the histories of servers that
 * end with the process. All of it goes under the
 * directory `KEYOPS_TEST_SECRETS_DIR` names (0700; files 0600), one set of files per process;
 * without that variable every function here does nothing.
 *
 * Secrets are learned without touching the tests:
 * - in this process, `instrumentKeyMaterial()` spies on the real `LocalKms` (its master secret,
 *   every DEK that `wrap`/`unwrap`/`unwrapBatch` hands out, every root-key version, read back
 *   from the store with that master secret) and on the simulated crypto units (every master key
 *   loaded into a register);
 * - for worker processes and dev stacks, `harvestDataDir()` reads a data directory the way the
 *   worker would: the master secret from the environment or `kms/master.secret`, the root keys it
 *   opens, every WDEK of the registry opened with them, the master-key registers of every
 *   simulated unit set.
 */
import { createDecipheriv, hkdfSync } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, statSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { inspect } from 'node:util';
import { Client, Connection, type WorkflowClientInterceptor } from '@temporalio/client';
import { DefaultLogger, type LogEntry, type LogLevel } from '@temporalio/worker';
import Database from 'better-sqlite3-multiple-ciphers';
import { SimulatedCryptoUnits } from '../../activities/crypto-units/simulated-crypto-units';
import { KmsError } from '../../activities/kms/kms-error';
import { LocalKms } from '../../activities/kms/local-kms';
import { openWdek } from '../../activities/kms/wdek-format';
import { serverHistories } from './key-material-scan';
import { testEnvVars } from './test-env-vars';

const scanDir = (): string | undefined => process.env[testEnvVars.secretsDir] || undefined;

/** This process's name in file names and labels: its test file. */
const processName = basename(process.argv.find((a) => a.endsWith('.test.ts')) ?? process.argv[1] ?? 'process').replace(/\.ts$/, '');

const files = new Map<string, number>();
let fileSeq = 0;

/** A new file (0600) under `<dir>/<kind>/` for this process, or undefined without a scan dir. */
function newFile(kind: 'secrets' | 'logs' | 'histories' | 'notes' | 'raw', name: string): string | undefined {
  const root = scanDir();
  if (!root) return undefined;
  mkdirSync(join(root, kind), { recursive: true, mode: 0o700 });
  return join(root, kind, `${processName}-${process.pid}-${++fileSeq}-${name}`);
}

function append(path: string, text: string): void {
  let fd = files.get(path);
  if (fd === undefined) files.set(path, (fd = openSync(path, 'a', 0o600)));
  writeSync(fd, text);
}

let secretsFile: string | undefined;
let notesFile: string | undefined;
const remembered = new Set<string>();

/**
 * Records a real secret for the scan: bytes (a key), or a string (a passphrase: also looked for
 * as text). Copied at once, so the caller may zero its buffer afterwards.
 */
export function rememberSecret(label: string, value: Uint8Array | string): void {
  if (!scanDir()) return;
  const hex = (typeof value === 'string' ? Buffer.from(value, 'utf8') : Buffer.from(value.buffer, value.byteOffset, value.byteLength)).toString('hex');
  if (hex.length === 0 || remembered.has(hex)) return;
  remembered.add(hex);
  secretsFile ??= newFile('secrets', 'secrets.jsonl');
  append(secretsFile!, `${JSON.stringify({ label: `${label} [${processName}]`, hex, ...(typeof value === 'string' ? { text: true } : {}) })}\n`);
}

/** Something the scan could not look at (a store it could not open): printed with its report. */
export function noteScanGap(message: string): void {
  if (!scanDir()) return;
  notesFile ??= newFile('notes', 'notes.log');
  append(notesFile!, `${processName}: ${message.replace(/\n/g, ' ')}\n`);
}

/** Appends to a log file the scan reads (`<dir>/logs/...`); a no-op without a scan dir. */
export function logCapture(name: string): (text: string) => void {
  const path = newFile('logs', name);
  return path ? (text) => append(path, text) : () => {};
}

// ---------------------------------------------------------------------------------------------
// Reading secrets back from the files the keyops adapters write.

/** As activities/kms/local-kms.ts seals root keys (format 1); kept in step with it by the scan's own test. */
const KEK_INFO = 'keyops local-kms key-encryption key v1';
const VERIFIER_PLAINTEXT = 'keyops local-kms master-secret verifier v1';
const materialAad = (keyId: string, version: number) => `keyops local-kms root key\u0000${keyId}\u0000${version}`;

function unseal(kek: Buffer, aad: string, sealed: Buffer): Buffer | undefined {
  try {
    const decipher = createDecipheriv('aes-256-gcm', kek, sealed.subarray(0, 12), { authTagLength: 16 });
    decipher.setAAD(Buffer.from(aad, 'utf8'));
    decipher.setAuthTag(sealed.subarray(12, 28));
    return Buffer.concat([decipher.update(sealed.subarray(28)), decipher.final()]);
  } catch {
    return undefined;
  }
}

/** Master secrets this process has seen: a store is opened with whichever one fits. */
const masterSecrets = new Map<string, Buffer>();

function knowMasterSecret(secret: Buffer, label: string): void {
  if (secret.length === 0) return;
  masterSecrets.set(secret.toString('hex'), Buffer.from(secret));
  rememberSecret(label, secret);
}

function readOnly<T>(path: string, fn: (db: Database.Database) => T): T | undefined {
  if (!existsSync(path)) return undefined;
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    db.pragma('busy_timeout = 5000');
    return fn(db);
  } finally {
    db.close();
  }
}

type RootKeys = Map<string, Map<number, Buffer>>;

/** KEK per store (salt), found once: every later read of the store needs no key derivation. */
const keks = new Map<string, Buffer | null>();

/**
 * Every root-key version of a local KMS store (of one key, when given), opened with a known
 * master secret (remembered).
 */
export function harvestKmsStore(path: string, roots: RootKeys = new Map(), keyId?: string): RootKeys {
  try {
    readOnly(path, (db) => {
      const meta = (name: string) => db.prepare<[string], { value: Buffer }>('SELECT value FROM store_meta WHERE name = ?').get(name)?.value;
      const salt = meta('kdf_salt');
      const verifier = meta('verifier');
      if (!salt || !verifier) return;
      const cacheKey = `${path}\u0000${salt.toString('hex')}`;
      let kek = keks.get(cacheKey);
      if (!kek) {
        kek =
          [...masterSecrets.values()]
            .map((secret) => Buffer.from(hkdfSync('sha256', secret, salt, KEK_INFO, 32)))
            .find((k) => unseal(k, 'verifier', verifier)?.toString('utf8') === VERIFIER_PLAINTEXT) ?? null;
        if (kek) keks.set(cacheKey, kek);
      }
      if (!kek) {
        noteScanGap(`no known master secret opens the KMS store ${path}: its root keys and DEKs are not looked for`);
        return;
      }
      type Row = { key_id: string; version: number; material: Buffer };
      const rows = keyId
        ? db.prepare<[string], Row>('SELECT key_id, version, material FROM root_key_versions WHERE key_id = ?').all(keyId)
        : db.prepare<[], Row>('SELECT key_id, version, material FROM root_key_versions').all();
      for (const row of rows) {
        const material = unseal(kek, materialAad(row.key_id, row.version), row.material);
        if (!material) {
          noteScanGap(`root key ${row.key_id} v${row.version} of ${path} does not open`);
          continue;
        }
        rememberSecret(`root key ${row.key_id} v${row.version}`, material);
        let versions = roots.get(row.key_id);
        if (!versions) roots.set(row.key_id, (versions = new Map<number, Buffer>()));
        versions.set(row.version, material);
      }
    });
  } catch (err) {
    noteScanGap(`cannot read the KMS store ${path}: ${String(err)}`);
  }
  return roots;
}

/** Every DEK in a WDEK registry that the given root keys open (remembered). */
export function harvestRegistry(path: string, roots: RootKeys): void {
  try {
    readOnly(path, (db) => {
      const rows = db.prepare<[], { id: string; key_id: string; key_version: number; wdek: Buffer }>('SELECT id, key_id, key_version, wdek FROM wdeks').all();
      let unopened = 0;
      for (const row of rows) {
        const root = roots.get(row.key_id)?.get(row.key_version);
        if (!root) {
          unopened++;
          continue;
        }
        try {
          rememberSecret(`DEK of ${row.id} (key ${row.key_id} v${row.key_version})`, openWdek(root, row.key_id, row.wdek));
        } catch {
          unopened++;
        }
      }
      if (unopened > 0) noteScanGap(`${unopened} of ${rows.length} WDEKs in ${path} were not opened (root key unknown)`);
    });
  } catch (err) {
    noteScanGap(`cannot read the WDEK registry ${path}: ${String(err)}`);
  }
}

/** The master keys in every register of a simulated crypto-unit set (remembered). */
export function harvestUnitSet(path: string): void {
  try {
    readOnly(path, (db) => {
      const rows = db.prepare<[], { unit_id: string; current_mk: Buffer | null; next_mk: Buffer | null }>('SELECT unit_id, current_mk, next_mk FROM units').all();
      for (const row of rows) {
        if (row.current_mk) rememberSecret(`simulated MK of ${basename(path)} (unit ${row.unit_id}, current)`, row.current_mk);
        if (row.next_mk) rememberSecret(`simulated MK of ${basename(path)} (unit ${row.unit_id}, new)`, row.next_mk);
      }
    });
  } catch (err) {
    noteScanGap(`cannot read the crypto-unit set ${path}: ${String(err)}`);
  }
}

function readMasterSecretFile(path: string, label: string): void {
  try {
    const text = readFileSync(path, 'utf8').trim();
    if (text) knowMasterSecret(Buffer.from(text, 'base64'), label);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') noteScanGap(`cannot read ${path}: ${String(err)}`);
  }
}

function subdirs(dir: string, depth: number): string[] {
  if (depth < 0) return [];
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  return entries.filter((e) => e.isDirectory() && e.name !== 'node_modules').flatMap((e) => [join(dir, e.name), ...subdirs(join(dir, e.name), depth - 1)]);
}

/**
 * Every secret a keyops data directory holds (or any directory with data directories below it):
 * the KMS master secret (given, or `kms/master.secret`), the root keys, the registry's DEKs and
 * the simulated master keys. Call it before the directory is removed.
 */
export function harvestDataDir(dir: string, options: { masterSecret?: Buffer } = {}): void {
  if (!scanDir() || !existsSync(dir)) return;
  if (options.masterSecret) knowMasterSecret(options.masterSecret, `local KMS master secret (worker environment, ${basename(dir)})`);
  const dirs = [dir, ...subdirs(dir, 6)];
  const kmsDirs = dirs.filter((d) => basename(d) === 'kms' && existsSync(join(d, 'keys.sqlite')));
  for (const d of kmsDirs) readMasterSecretFile(join(d, 'master.secret'), `local KMS master secret (${join(basename(dirname(d)), 'kms', 'master.secret')})`);
  const roots: RootKeys = new Map();
  for (const d of kmsDirs) harvestKmsStore(join(d, 'keys.sqlite'), roots);
  for (const d of dirs.filter((x) => basename(x) === 'registry')) {
    for (const f of readdirSync(d).filter((n) => n.endsWith('.sqlite'))) harvestRegistry(join(d, f), roots);
  }
  for (const d of dirs.filter((x) => basename(x) === 'crypto-units')) {
    for (const f of readdirSync(d).filter((n) => n.endsWith('.sqlite'))) harvestUnitSet(join(d, f));
  }
}

/**
 * The secrets a worker's (or a command's) environment gives it: KMS master secret, passphrase,
 * payload keys, Temporal API key. Returns the master secret.
 */
export function rememberWorkerEnvironment(env: NodeJS.ProcessEnv): Buffer | undefined {
  if (!scanDir()) return undefined;
  let masterSecret: Buffer | undefined;
  if (env.KEYOPS_KMS_MASTER_SECRET) masterSecret = Buffer.from(env.KEYOPS_KMS_MASTER_SECRET, 'base64');
  else if (env.KEYOPS_KMS_MASTER_SECRET_FILE) {
    try {
      masterSecret = Buffer.from(readFileSync(env.KEYOPS_KMS_MASTER_SECRET_FILE, 'utf8').trim(), 'base64');
    } catch {
      // A test of the missing file: nothing to remember.
    }
  }
  if (masterSecret) knowMasterSecret(masterSecret, 'local KMS master secret (KEYOPS_KMS_MASTER_SECRET)');
  const readText = (file: string) => {
    try {
      return readFileSync(file, 'utf8').replace(/\r?\n$/, '');
    } catch {
      return undefined;
    }
  };
  const passphrase = env.KEYOPS_BACKUP_KEY_PASSPHRASE || (env.KEYOPS_BACKUP_KEY_PASSPHRASE_FILE ? readText(env.KEYOPS_BACKUP_KEY_PASSPHRASE_FILE) : undefined);
  if (passphrase) rememberSecret('backup-key passphrase (KEYOPS_BACKUP_KEY_PASSPHRASE)', passphrase);
  if (env.TEMPORAL_API_KEY) rememberSecret('Temporal API key (TEMPORAL_API_KEY)', env.TEMPORAL_API_KEY);
  for (const file of (env.KEYOPS_PAYLOAD_KEY_FILE ?? '').split(':').filter(Boolean)) {
    try {
      const content = readFileSync(file);
      rememberSecret(`payload codec key ${basename(file)}`, content.length === 32 ? content : Buffer.from(content.toString('latin1').trim(), 'base64'));
    } catch {
      // A test of a missing or unreadable key file.
    }
  }
  return masterSecret;
}

// ---------------------------------------------------------------------------------------------
// Spies on the real adapters in this process.

let instrumented = false;

/**
 * Spies on every LocalKms and simulated crypto-unit set this process opens, remembering the
 * real key material they hold or hand out. The adapters behave exactly as before.
 */
export function instrumentKeyMaterial(): void {
  if (instrumented || !scanDir()) return;
  instrumented = true;
  const stores = new WeakMap<LocalKms, string>();
  const storePaths = new Set<string>();
  const harvest = (kms: LocalKms, keyId?: string) => {
    const path = stores.get(kms);
    if (path) harvestKmsStore(path, new Map(), keyId);
  };

  const open = LocalKms.open.bind(LocalKms);
  LocalKms.open = (options) => {
    const kms = open(options);
    knowMasterSecret(options.masterSecret, `local KMS master secret (LocalKms.open ${basename(dirname(dirname(options.path)))})`);
    stores.set(kms, options.path);
    storePaths.add(options.path);
    harvestKmsStore(options.path);
    return kms;
  };
  const proto = LocalKms.prototype;
  // eslint-disable-next-line @typescript-eslint/unbound-method -- each is called with .call(this) below
  const { wrap, unwrap, unwrapBatch, createKey, rotateKey, close } = proto;
  proto.wrap = async function (this: LocalKms, keyId, dek) {
    const result = await wrap.call(this, keyId, dek);
    rememberSecret(`DEK (kms.wrap, key ${keyId} v${result.keyVersion})`, result.dek);
    return result;
  };
  proto.unwrap = async function (this: LocalKms, keyId, wdek) {
    const result = await unwrap.call(this, keyId, wdek);
    rememberSecret(`DEK (kms.unwrap, key ${keyId} v${result.keyVersion})`, result.dek);
    return result;
  };
  proto.unwrapBatch = async function (this: LocalKms, keyId, wdeks) {
    const results = await unwrapBatch.call(this, keyId, wdeks);
    for (const r of results) if (!(r instanceof KmsError)) rememberSecret(`DEK (kms.unwrapBatch, key ${keyId} v${r.keyVersion})`, r.dek);
    return results;
  };
  proto.createKey = async function (this: LocalKms, input) {
    const result = await createKey.call(this, input);
    harvest(this, result.keyId);
    return result;
  };
  proto.rotateKey = async function (this: LocalKms, keyId, requestId) {
    const result = await rotateKey.call(this, keyId, requestId);
    harvest(this, keyId);
    return result;
  };
  proto.close = function (this: LocalKms) {
    harvest(this); // policy rotations happen inside other calls
    close.call(this);
  };
  // Stores still on disk when the process ends (most are removed by then, with their test's directory).
  process.once('exit', () => {
    for (const path of storePaths) harvestKmsStore(path);
  });

  // Simulated crypto units: the MK is generated inside the set, and zeroed there once written.
  const unitPaths = new WeakMap<SimulatedCryptoUnits, string>();
  const track = (set: SimulatedCryptoUnits, path: string) => {
    unitPaths.set(set, path);
    harvestUnitSet(path);
    return set;
  };
  const openSet = SimulatedCryptoUnits.open.bind(SimulatedCryptoUnits);
  const createSet = SimulatedCryptoUnits.create.bind(SimulatedCryptoUnits);
  SimulatedCryptoUnits.open = (path) => track(openSet(path), path);
  SimulatedCryptoUnits.create = (path, options) => track(createSet(path, options), path);
  // eslint-disable-next-line @typescript-eslint/unbound-method -- called with .call(this) below
  const { loadNewMasterKey } = SimulatedCryptoUnits.prototype;
  SimulatedCryptoUnits.prototype.loadNewMasterKey = async function (this: SimulatedCryptoUnits) {
    try {
      return await loadNewMasterKey.call(this);
    } finally {
      const path = unitPaths.get(this);
      if (path) harvestUnitSet(path);
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Logs and histories.

const SEVERITY: LogLevel[] = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR'];

function metaText(meta: unknown): string {
  if (meta === undefined) return '';
  try {
    // JSON as a log shipper would write it: a Buffer shows as Buffer-JSON, an Error as its message.
    return ` ${JSON.stringify(meta, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v instanceof Error ? { name: v.name, message: v.message, stack: v.stack } : v))}`;
  } catch {
    return ` ${inspect(meta, { depth: 8, breakLength: Infinity })}`;
  }
}

/**
 * The SDK logger of a test process: every entry from DEBUG up into the scan's log file (the
 * in-process workers' activity, workflow and SDK logs), and those from `printLevel` up on stderr
 * as the SDK's DefaultLogger prints them.
 */
export function sdkTestLogger(printLevel: LogLevel): DefaultLogger {
  const capture = logCapture('sdk.log');
  const printFrom = SEVERITY.indexOf(printLevel);
  return new DefaultLogger('DEBUG', (entry: LogEntry) => {
    const date = new Date(Number(entry.timestampNanos / 1_000_000n)).toISOString();
    capture(`${date} [${entry.level}] ${entry.message}${metaText(entry.meta)}\n`);
    if (SEVERITY.indexOf(entry.level) >= printFrom) {
      process.stderr.write(`${date} [${entry.level}] ${entry.message}${entry.meta === undefined ? '' : ` ${inspect(entry.meta, { breakLength: Infinity })}`}\n`);
    }
  });
}

/**
 * Writes every history of a server that ends with this test (a time-skipping server, a dev
 * stack) for the scan. Best effort: false when the server could not be read, which is noted
 * unless `noteFailure` is false (the caller has another way).
 */
export async function dumpHistories(client: Client, server: string, options: { knownWorkflowIds?: Iterable<string>; noteFailure?: boolean } = {}): Promise<boolean> {
  const path = newFile('histories', `${server.replace(/[^a-z0-9]+/gi, '-')}.jsonl`);
  if (!path) return true;
  try {
    const { knownWorkflowIds } = options;
    for await (const h of serverHistories(client, `${server} [${processName}]`, knownWorkflowIds ? { knownWorkflowIds } : {})) {
      append(path, `${JSON.stringify(h)}\n`);
    }
    return true;
  } catch (err) {
    if (options.noteFailure !== false) noteScanGap(`histories of ${server} not dumped: ${err instanceof Error ? err.message : String(err)}`);
    return false;
  }
}

/**
 * A client interceptor that notes every workflow id the client starts or touches: where a server
 * cannot list its workflows (the time-skipping test server), the dump walks from these.
 */
export function workflowIdRecorder(): { ids: Set<string>; interceptor: WorkflowClientInterceptor } {
  const ids = new Set<string>();
  const byExecution = <I extends { workflowExecution: { workflowId: string } }, O>(input: I, next: (input: I) => Promise<O>) => {
    ids.add(input.workflowExecution.workflowId);
    return next(input);
  };
  return {
    ids,
    interceptor: {
      startWithDetails: (input, next) => {
        ids.add(input.options.workflowId);
        return next(input);
      },
      signalWithStart: (input, next) => {
        ids.add(input.options.workflowId);
        return next(input);
      },
      signal: byExecution,
      query: byExecution,
      terminate: byExecution,
      cancel: byExecution,
      describe: byExecution,
    },
  };
}

let queryLog: ((text: string) => void) | undefined;

/**
 * A client interceptor that writes every query result a test receives where the scan reads it
 * (query results, unlike update results, are in no history).
 */
export const queryResultInterceptor: WorkflowClientInterceptor = {
  async query(input, next) {
    const result = await next(input);
    queryLog ??= logCapture('query-results.log');
    queryLog(`query ${input.queryType} of ${input.workflowExecution.workflowId}:${metaText(result)}\n`);
    return result;
  },
};

/** As `dumpHistories`, for a server known only by its address. */
export async function dumpHistoriesAt(address: string, server: string, options: { noteFailure?: boolean } = {}): Promise<boolean> {
  if (!scanDir()) return true;
  let connection: Connection | undefined;
  try {
    connection = await Connection.connect({ address, connectTimeout: 5_000 });
    return await dumpHistories(new Client({ connection, namespace: 'default' }), server, options);
  } catch (err) {
    if (options.noteFailure !== false) noteScanGap(`histories of ${server} at ${address} not dumped: ${err instanceof Error ? err.message : String(err)}`);
    return false;
  } finally {
    await connection?.close();
  }
}

/**
 * Copies the Temporal database of a dev stack whose server is already gone (its test stopped
 * it): the dev server stores history payloads uncompressed, so the scan reads the file's bytes.
 */
export function captureServerDatabase(dir: string, server: string): void {
  if (!scanDir()) return;
  const files = existsSync(dir) ? readdirSync(dir).filter((f) => /\.sqlite(-wal)?$/.test(f)) : [];
  if (files.length === 0) {
    noteScanGap(`histories of ${server} not scanned: no server answered and ${dir} holds no database (never started?)`);
    return;
  }
  for (const file of files) {
    const dest = newFile('raw', `${server.replace(/[^a-z0-9]+/gi, '-')}-${file}`)!;
    copyFileSync(join(dir, file), dest);
    chmodSync(dest, 0o600);
  }
}

/** Copies the log files of a directory (a dev stack's `logs/`) into the scan's logs. */
export function captureLogFiles(dir: string, name: string): void {
  if (!scanDir() || !existsSync(dir)) return;
  for (const file of readdirSync(dir)) {
    const path = join(dir, file);
    if (!statSync(path).isFile()) continue;
    const capture = logCapture(`${name}-${file}`);
    capture(readFileSync(path, 'utf8'));
  }
}
