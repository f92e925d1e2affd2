import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { LineCounter, parseDocument, isMap, isNode, type Node } from 'yaml';
import { z } from 'zod';
import { INSTANCE_NAME } from '../activities/kms/key-id';

/**
 * The one config file (`KEYOPS_CONFIG`, e.g. keyops.yaml): which KMS instances the worker talks
 * to. Credentials are named by file or environment variable, never written inline, so the file
 * itself can be reviewed and committed. Without a file: one instance, `local`, the embedded KMS.
 */

// Instance names are part of key ids (`<instance>:<id>`): short, lower case, no separator.
const instanceName = z.string().regex(INSTANCE_NAME, 'an instance name is 1 to 31 lower-case letters, digits or "-", starting with a letter');

const envName = z.string().regex(/^[A-Z_][A-Z0-9_]*$/, 'an environment variable name (e.g. VAULT_TOKEN)');
const httpUrl = z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }).refine((v) => {
  // Runs after a failed url check too: only a parsable URL can carry credentials.
  const url = URL.canParse(v) ? new URL(v) : undefined;
  return url === undefined || (url.username === '' && url.password === '');
}, 'must not carry credentials (user:pass@): name a tokenFile or tokenEnv instead');

/** Fields that would put a secret in the file: refused with where it should go instead. */
const INLINE_SECRETS: Record<string, string> = {
  token: 'tokenFile or tokenEnv',
  apiKey: 'apiKeyFile or apiKeyEnv',
  secretAccessKey: 'the AWS credential chain (profile, AWS_* variables, an instance role)',
  accessKeyId: 'the AWS credential chain (profile, AWS_* variables, an instance role)',
  password: 'a file or an environment variable',
  secret: 'a file or an environment variable',
};

const localSchema = z.object({ type: z.literal('local') }).strict();

const vaultSchema = z
  .object({
    type: z.literal('vault-transit'),
    address: httpUrl,
    tokenFile: z.string().min(1).optional(),
    tokenEnv: envName.optional(),
    namespace: z.string().min(1).optional(),
    mount: z.string().regex(/^[A-Za-z0-9_.\-/]+$/, 'a mount path such as transit').default('transit'),
    caFile: z.string().min(1).optional(),
    tlsSkipVerify: z.boolean().default(false),
  })
  .strict()
  .refine((v) => (v.tokenFile === undefined) !== (v.tokenEnv === undefined), { message: 'give exactly one of tokenFile or tokenEnv', path: ['tokenFile'] });

const awsSchema = z
  .object({
    type: z.literal('aws-kms'),
    region: z.string().regex(/^[a-z]{2}(-[a-z]+)+-\d+$/, 'an AWS region such as us-east-1'),
    endpoint: httpUrl.optional(),
    profile: z.string().min(1).optional(),
  })
  .strict();

const keyProtectSchema = z
  .object({
    type: z.literal('key-protect'),
    endpoint: httpUrl,
    instanceId: z.uuid('the Key Protect instance id (a UUID)'),
    apiKeyFile: z.string().min(1).optional(),
    apiKeyEnv: envName.optional(),
    iamEndpoint: httpUrl.default('https://iam.cloud.ibm.com'),
  })
  .strict()
  .refine((v) => (v.apiKeyFile === undefined) !== (v.apiKeyEnv === undefined), { message: 'give exactly one of apiKeyFile or apiKeyEnv', path: ['apiKeyFile'] });

const instanceSchema = z.discriminatedUnion(
  'type',
  [localSchema, vaultSchema, awsSchema, keyProtectSchema],
  { error: 'type must be one of local, vault-transit, aws-kms, key-protect' },
);

export type KmsInstanceConfig = z.infer<typeof instanceSchema>;

const fileSchema = z
  .object({
    kms: z
      .object({
        /** Where `keyops key create` puts a key when --kms is not given. */
        default: instanceName.optional(),
        instances: z.record(instanceName, z.unknown()),
      })
      .strict(),
  })
  .strict();

export interface KeyopsConfig {
  /** The file it came from; undefined for the embedded default. */
  file: string | undefined;
  defaultKms: string;
  kms: Map<string, KmsInstanceConfig>;
}

export const EMBEDDED_CONFIG: KeyopsConfig = { file: undefined, defaultKms: 'local', kms: new Map([['local', { type: 'local' }]]) };

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
    const fields = typeof value === 'object' && value !== null ? Object.keys(value) : [];
    for (const field of fields) {
      const instead = INLINE_SECRETS[field];
      if (instead) problems.push(locate(path, doc, lines, [...where, field], `credentials are never written in the config file; use ${instead}`));
    }
    if (fields.some((f) => f in INLINE_SECRETS)) continue;
    const parsed = instanceSchema.safeParse(value);
    if (!parsed.success) {
      problems.push(...parsed.error.issues.map((i) => locate(path, doc, lines, [...where, ...i.path], i.message)));
      continue;
    }
    if (parsed.data.type === 'local' && name !== 'local') {
      // One embedded store per data directory: a second name for it would be the same keys.
      problems.push(locate(path, doc, lines, [...where, 'type'], 'type local is the embedded KMS of the data directory: only the instance named "local" can have it'));
      continue;
    }
    kms.set(name, withAbsolutePaths(parsed.data, dirname(path)));
  }
  const defaultKms = top.data.kms.default ?? (kms.size === 1 ? [...kms.keys()][0]! : 'local');
  if (problems.length === 0 && !kms.has(defaultKms)) {
    problems.push(
      locate(path, doc, lines, top.data.kms.default ? ['kms', 'default'] : ['kms'], `the default KMS "${defaultKms}" is not among the instances (${[...kms.keys()].join(', ')})`),
    );
  }
  if (problems.length > 0) throw new KeyopsConfigError(problems);
  return { file: path, defaultKms, kms };
}

function withAbsolutePaths(instance: KmsInstanceConfig, base: string): KmsInstanceConfig {
  const abs = (p: string | undefined) => (p === undefined || isAbsolute(p) ? p : resolve(base, p));
  switch (instance.type) {
    case 'vault-transit':
      return { ...instance, tokenFile: abs(instance.tokenFile), caFile: abs(instance.caFile) };
    case 'key-protect':
      return { ...instance, apiKeyFile: abs(instance.apiKeyFile) };
    default:
      return instance;
  }
}
