import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { LineCounter, parseDocument, isMap, isNode, type Node } from 'yaml';
import { z } from 'zod';
import { awsKmsOptionsSchema } from '../activities/kms/aws-kms';
import { ENGINE_KEY_INSTANCE } from '../activities/kms/engine-key-kms';
import { INSTANCE_NAME, asKeyId, splitKeyId } from '../activities/kms/key-id';
import { keyProtectOptionsSchema } from '../activities/kms/key-protect-kms';
import { vaultTransitOptionsSchema } from '../activities/kms/vault-transit-kms';
import { mariadbKeyStoreOptionsSchema } from '../activities/engines/mariadb-key-store';

/**
 * The one config file (`KEYOPS_CONFIG`, e.g. keyops.yaml): which KMS instances the worker talks
 * to. Credentials are named by file or environment variable, never written inline, so the file
 * itself can be reviewed and committed. Without a file: one instance, `local`, the embedded KMS.
 */

// Instance names are part of key ids (`<instance>:<id>`): short, lower case, no separator.
const instanceName = z.string().regex(INSTANCE_NAME, 'an instance name is 1 to 31 lower-case letters, digits or "-", starting with a letter');

/** Fields that would put a secret in the file: refused with where it should go instead. */
const INLINE_SECRETS: Record<string, string> = {
  token: 'tokenFile or tokenEnv',
  apiKey: 'apiKeyFile or apiKeyEnv',
  secretAccessKey: 'the AWS credential chain (profile, AWS_* variables, an instance role)',
  accessKeyId: 'the AWS credential chain (profile, AWS_* variables, an instance role)',
  sessionToken: 'the AWS credential chain (profile, AWS_* variables, an instance role)',
  password: 'a file or an environment variable',
  secret: 'a file or an environment variable',
};

/**
 * Each type's settings are exactly its adapter's options (one schema, owned by the adapter), so
 * the file accepts what the adapter accepts and says so in the file's own terms.
 */
const TYPES = {
  local: z.strictObject({}),
  'vault-transit': vaultTransitOptionsSchema,
  'aws-kms': awsKmsOptionsSchema,
  'key-protect': keyProtectOptionsSchema,
} as const;
type KmsType = keyof typeof TYPES;

/** Fields naming files, resolved against the config file's directory. */
const FILE_FIELDS = ['tokenFile', 'caFile', 'apiKeyFile'] as const;

/**
 * A MariaDB server keyops backs up. Its key store is where the server's
 * key-management plugin reads its keys; `rootKey` is the keyops key (`<instance>:<id>`) that wraps
 * each backup's own key in the file's header.
 */
export const mariadbDatabaseSchema = z
  .object({
    type: z.literal('mariadb'),
    /** The server's unix socket; keyops connects through it as `user`, without a password. */
    socket: z.string().min(1),
    user: z.string().min(1).default('root'),
    /** The server's option file: mariadb-backup and test restores read the key plugin's settings there. */
    serverConfig: z.string().min(1),
    rootKey: z.string().min(1),
    /** The MariaDB key id keyops rotates (1: the default key). */
    keyId: z.number().int().min(1).max(0xffffffff).default(1),
    keyStore: mariadbKeyStoreOptionsSchema,
    tools: z.strictObject({ mariadbBackup: z.string().min(1), mbstream: z.string().min(1), mariadbd: z.string().min(1), myPrintDefaults: z.string().min(1) }).partial().optional(),
  })
  .strict();
export type MariaDbDatabaseConfig = z.output<typeof mariadbDatabaseSchema>;

/**
 * A Db2 database, driven through its command line processor on this host: the worker runs as
 * the Db2 instance owner with its db2profile sourced. Db2 encrypts with its own master key;
 * `rootKey` is the keyops key that stands for it (reprotect rotates that master key).
 */
export const db2DatabaseSchema = z
  .object({
    type: z.literal('db2'),
    /** The Db2 database name or local alias the CLP connects to. */
    database: z.string().regex(/^[A-Za-z][A-Za-z0-9_@#$]{0,7}$/, 'a Db2 database name is 1 to 8 letters, digits or _@#$, starting with a letter'),
    rootKey: z.string().min(1),
    tools: z.strictObject({ db2: z.string().min(1), db2ckbkp: z.string().min(1) }).partial().optional(),
    /** The longest BACKUP or RESTORE before it is stopped (ms). */
    timeoutMs: z.number().int().min(1_000).max(7 * 24 * 3600_000).optional(),
  })
  .strict();
export type Db2DatabaseConfig = z.output<typeof db2DatabaseSchema>;
export type DatabaseServerConfig = MariaDbDatabaseConfig | Db2DatabaseConfig;

/** Database ids as the workflows take them (workflow-input.ts): letters, digits, -, _. */
const databaseName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/, 'a database id is 1 to 64 letters, digits, "-" or "_"');

export type KmsInstanceConfig =
  | { type: 'local' }
  | { type: 'vault-transit'; options: z.output<typeof vaultTransitOptionsSchema> }
  | { type: 'aws-kms'; options: z.output<typeof awsKmsOptionsSchema> }
  | { type: 'key-protect'; options: z.output<typeof keyProtectOptionsSchema> };

const fileSchema = z
  .object({
    kms: z
      .object({
        /** Where `keyops key create` puts a key when --kms is not given. */
        default: instanceName.optional(),
        instances: z.record(instanceName, z.unknown()),
      })
      .strict(),
    /** Database servers keyops backs up besides its embedded databases. */
    databases: z.record(databaseName, z.unknown()).optional(),
  })
  .strict();

export interface KeyopsConfig {
  /** The file it came from; undefined for the embedded default. */
  file: string | undefined;
  defaultKms: string;
  kms: Map<string, KmsInstanceConfig>;
  databases: Map<string, DatabaseServerConfig>;
}

export const EMBEDDED_CONFIG: KeyopsConfig = { file: undefined, defaultKms: 'local', kms: new Map([['local', { type: 'local' }]]), databases: new Map() };

export class KeyopsConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
    this.name = 'KeyopsConfigError';
  }
}

/** `file:line:col: field: problem`, the position of the field (or of the nearest parent present). */
function locate(file: string, doc: ReturnType<typeof parseDocument>, lines: LineCounter, path: PropertyKey[], message: string): string {
  let node: unknown;
  for (let depth = path.length; depth >= 0 && !isNode(node); depth--) {
    const at = path.slice(0, depth) as (string | number)[];
    // The key of a map entry points at the field's name; its value, at what is wrong with it.
    node = depth === 0 ? doc.contents : doc.getIn(at, true);
    if (depth > 0 && !isNode(node)) {
      const parent: unknown = depth === 1 ? doc.contents : doc.getIn(at.slice(0, -1), true);
      if (isMap(parent)) node = parent.items.find((p) => isNode(p.key) && (p.key as Node & { value?: unknown }).value === at.at(-1))?.key;
    }
  }
  const offset = isNode(node) && node.range ? node.range[0] : 0;
  const { line, col } = lines.linePos(offset);
  const field = path.map(String).join('.') || '(top level)';
  return `${file}:${line}:${col}: ${field}: ${message}`;
}

/**
 * Reads and checks the config file. Relative file paths inside it (tokenFile, caFile, apiKeyFile)
 * resolve against the file's own directory, not the worker's working directory.
 */
export function loadKeyopsConfig(file: string | undefined): KeyopsConfig {
  if (file === undefined || file === '') return EMBEDDED_CONFIG;
  const path = resolve(file);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new KeyopsConfigError([`${path}: cannot read KEYOPS_CONFIG: ${(err as NodeJS.ErrnoException).code ?? String(err)}`]);
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new KeyopsConfigError(
      doc.errors.map((e) => {
        const { line, col } = lines.linePos(e.pos[0]);
        return `${path}:${line}:${col}: ${e.message.split('\n')[0]}`;
      }),
    );
  }
  const raw: unknown = doc.toJS();
  const top = fileSchema.safeParse(raw);
  if (!top.success) throw new KeyopsConfigError(top.error.issues.map((i) => locate(path, doc, lines, i.path, i.message)));
  const problems: string[] = [];
  const kms = new Map<string, KmsInstanceConfig>();
  for (const [name, value] of Object.entries(top.data.kms.instances)) {
    const where = ['kms', 'instances', name];
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      problems.push(locate(path, doc, lines, where, 'expected a map with a type and its settings'));
      continue;
    }
    const { type, ...settings } = value as Record<string, unknown>;
    const secrets = Object.keys(settings).filter((f) => f in INLINE_SECRETS);
    for (const field of secrets) problems.push(locate(path, doc, lines, [...where, field], `credentials are never written in the config file; use ${INLINE_SECRETS[field]}`));
    if (secrets.length > 0) continue;
    if (typeof type !== 'string' || !Object.hasOwn(TYPES, type)) {
      problems.push(locate(path, doc, lines, [...where, 'type'], `type must be one of ${Object.keys(TYPES).join(', ')}`));
      continue;
    }
    if (name === ENGINE_KEY_INSTANCE) {
      // engine:<databaseId> names a database server's own key (engine-key-kms.ts).
      problems.push(locate(path, doc, lines, where, `the instance name "${ENGINE_KEY_INSTANCE}" is reserved for the database servers' own keys (engine:<database>): give this KMS another name`));
      continue;
    }
    if (type !== 'local' && name === 'local') {
      // Bare key ids (the embedded KMS's, from before instances) route to "local": it must stay it.
      problems.push(locate(path, doc, lines, [...where, 'type'], 'the instance named "local" is the embedded KMS (bare key ids route to it): give this KMS another name'));
      continue;
    }
    if (type === 'local' && name !== 'local') {
      // One embedded store per data directory: a second name for it would be the same keys.
      problems.push(locate(path, doc, lines, [...where, 'type'], 'type local is the embedded KMS of the data directory: only the instance named "local" can have it'));
      continue;
    }
    for (const field of FILE_FIELDS) {
      const file = settings[field];
      if (typeof file === 'string' && file !== '' && !isAbsolute(file)) settings[field] = resolve(dirname(path), file);
    }
    const parsed = TYPES[type as KmsType].safeParse(settings);
    if (!parsed.success) {
      problems.push(...parsed.error.issues.map((i) => locate(path, doc, lines, [...where, ...i.path], i.message)));
      continue;
    }
    kms.set(name, (type === 'local' ? { type } : { type, options: parsed.data }) as KmsInstanceConfig);
  }
  const databases = new Map<string, DatabaseServerConfig>();
  for (const [name, value] of Object.entries(top.data.databases ?? {})) {
    const where = ['databases', name];
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      problems.push(locate(path, doc, lines, where, 'expected a map with a type and its settings'));
      continue;
    }
    const settings = { ...(value as Record<string, unknown>) };
    const store = settings.keyStore;
    const secrets = [
      ...Object.keys(settings).filter((f) => f in INLINE_SECRETS).map((f) => [f]),
      ...(typeof store === 'object' && store !== null ? Object.keys(store).filter((f) => f in INLINE_SECRETS).map((f) => ['keyStore', f]) : []),
    ];
    for (const field of secrets) problems.push(locate(path, doc, lines, [...where, ...field], `credentials are never written in the config file; use ${INLINE_SECRETS[field.at(-1)!]}`));
    if (secrets.length > 0) continue;
    const local = (file: unknown) => (typeof file === 'string' && file !== '' && !isAbsolute(file) ? resolve(dirname(path), file) : file);
    if (settings.type !== 'mariadb' && settings.type !== 'db2') {
      problems.push(locate(path, doc, lines, [...where, 'type'], 'type must be one of mariadb, db2'));
      continue;
    }
    if (settings.type === 'mariadb') {
      settings.socket = local(settings.socket);
      settings.serverConfig = local(settings.serverConfig);
      if (typeof store === 'object' && store !== null) settings.keyStore = { ...store, tokenFile: local((store as Record<string, unknown>).tokenFile) };
    }
    const parsed = (settings.type === 'db2' ? db2DatabaseSchema : mariadbDatabaseSchema).safeParse(settings);
    if (!parsed.success) {
      problems.push(...parsed.error.issues.map((i) => locate(path, doc, lines, [...where, ...i.path], i.message)));
      continue;
    }
    // The root key wraps every backup key of the database: a key of an instance this file does
    // not configure would fail the first night, not here.
    const rootKey = asKeyId(parsed.data.rootKey);
    const instance = rootKey === undefined ? undefined : (splitKeyId(rootKey).instance ?? 'local');
    if (rootKey === undefined || instance === ENGINE_KEY_INSTANCE || (instance !== undefined && !Object.hasOwn(top.data.kms.instances, instance))) {
      const why =
        rootKey === undefined
          ? 'is not a key id (<instance>:<id>, or a bare UUID of the local KMS)'
          : instance === ENGINE_KEY_INSTANCE
            ? 'is a database engine\'s own key, which wraps nothing: name a KMS key'
            : `names KMS instance "${instance}", which kms.instances does not configure`;
      problems.push(locate(path, doc, lines, [...where, 'rootKey'], `rootKey "${parsed.data.rootKey}" ${why}`));
      continue;
    }
    databases.set(name, parsed.data);
  }
  const defaultKms = top.data.kms.default ?? (kms.size === 1 ? [...kms.keys()][0]! : 'local');
  if (problems.length === 0 && !kms.has(defaultKms)) {
    problems.push(
      locate(path, doc, lines, top.data.kms.default ? ['kms', 'default'] : ['kms'], `the default KMS "${defaultKms}" is not among the instances (${[...kms.keys()].join(', ')})`),
    );
  }
  if (problems.length > 0) throw new KeyopsConfigError(problems);
  return { file: path, defaultKms, kms, databases };
}
