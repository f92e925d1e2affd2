/**
 * The KMS port on Vault's or OpenBao's Transit secrets engine, over its HTTP API (no client
 * library: Node's own http/https, so a CA file, SNI name and keep-alive pool apply per adapter,
 * as Vault clients' VAULT_CACERT / VAULT_TLS_SERVER_NAME / VAULT_SKIP_VERIFY do).
 *
 * How the port maps onto Transit (README, "Vault / OpenBao Transit"):
 * - Key id = the transit key NAME (`<mount>/keys/<name>`); the port's `name` is that name too.
 *   createKey makes an `aes256-gcm96` key (not exportable, no plaintext backup); a name that
 *   already holds such a key is adopted as it is, as `bao write transit/keys/NAME` would, so a
 *   retried create finds its own key. A name holding another type is refused.
 * - Versions: `keys` (version → creation time) are the versions, `latest_version` the current
 *   one, the latest version's creation time the last rotation (none while it is 1), the oldest
 *   kept version's creation time the key's. Versions below `min_decryption_version` are listed
 *   but their WDEKs no longer unwrap (CIPHERTEXT_INVALID): the port has no per-version state.
 * - Rotation: `POST keys/:name/rotate`. Transit records no request id, so `requestId` is
 *   checked and then dropped: versions never carry one, and the activity's idempotency rests on
 *   reading the version before it rotates. Transit has no limit on rotations; the port's one
 *   per hour per key (counting rotations made outside keyops) is kept here (minRotationIntervalMs).
 * - WDEK = the Transit ciphertext `vault:vN:<base64>` as UTF-8 bytes; its version is the `N`
 *   (authenticated: a changed N opens under another key version and fails).
 * - wrap: `datakey/plaintext` (Vault makes the DEK) or `encrypt` of the given DEK; unwrap:
 *   `decrypt`; rewrap: `rewrap` (the DEK never leaves Vault). Batches use `batch_input`, split
 *   into requests of at most `maxBatchItems` (OpenBao refuses JSON of more than 1,000 strings,
 *   i.e. 500 items, by default) sent together; an item's own error is its CIPHERTEXT_INVALID.
 * - Policy: `auto_rotate_period` = intervalMonths × 30 days; a period set outside keyops reads
 *   as the nearest whole number of 30-day months, at least 1 (e.g. 24 h reads as 1 month).
 * - Disable/enable: OpenBao's transit soft delete (`DELETE keys/:name/soft-delete`,
 *   `POST keys/:name/soft-delete-restore`): every wrap, unwrap, rewrap and rotation is refused
 *   (KEY_DISABLED) until restored; the key is not deleted. HashiCorp Vault has no soft delete:
 *   there disableKey is refused with INVALID_INPUT.
 *
 * Errors: 404 and "key not found" → KEY_NOT_FOUND; a soft-deleted key → KEY_DISABLED; 400 on a
 * ciphertext → CIPHERTEXT_INVALID; 429 → KMS_THROTTLED (retryAfter from Retry-After, which
 * OpenBao sends when `sys/quotas/config` enables rate-limit response headers); 401/403 →
 * KMS_AUTH_FAILED (after re-reading a token file that changed); a server certificate that does
 * not verify → KMS_AUTH_FAILED too (retrying cannot fix a wrong CA); 5xx, 412, redirects,
 * timeouts and connection errors → KMS_UNAVAILABLE. No message carries the token, a DEK or a
 * plaintext: Vault's own error texts are quoted, cut short, and never echo request bodies.
 */
import { readFileSync, statSync } from 'node:fs';
import { Agent as HttpAgent, type IncomingHttpHeaders, request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { z } from 'zod';
import type {
  BatchResult,
  KeyManagementService,
  KeyMetadata,
  RewrapResult,
  RootKeyVersion,
  RotateResult,
  RotationPolicy,
  UnwrapResult,
  WrapResult,
} from './key-management-service';
import { ThrottledBatch } from './throttled-batch';
import { KmsError } from './kms-error';
import { checkPolicyMonths, quote } from './port-input';

const DEK_LENGTH = 32;
const POLICY_MONTH_SECONDS = 30 * 24 * 3600;
const KEY_TYPE = 'aes256-gcm96';
const MAX_RESPONSE_BYTES = 64 * 1024 * 1024;
const MAX_WDEK_BYTES = 16 * 1024;
const MAX_REQUEST_ID = 256;
/** Transit's own rule for key names (framework.GenericNameRegex): word characters, "-" and "." inside. */
const KEY_NAME = /^\w(?:[\w.-]*\w)?$/;
const MAX_KEY_NAME = 250;
/**
 * `vault:v<N>:<base64>`; OpenBao keeps Vault's prefix. An answer is checked whole: a rewrap
 * stores it over the only other copy of the DEK, before verification runs.
 */
const CIPHERTEXT = /^vault:v([1-9]\d{0,9}):[A-Za-z0-9+/]+={0,2}$/;
/** What is sent is checked by prefix only: a body that is not base64 comes back as that item's error. */
const CIPHERTEXT_PREFIX = /^vault:v([1-9]\d{0,9}):./;
const MOUNT = /^[A-Za-z0-9_.-]+(?:\/[A-Za-z0-9_.-]+)*$/;
const ENV_NAME = /^[A-Z_][A-Z0-9_]*$/;
/** Node's codes for a server certificate that does not verify. */
const TLS_TRUST_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'CERT_REVOKED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

export const vaultTransitOptionsSchema = z
  .object({
    /** The server, as VAULT_ADDR / BAO_ADDR: `https://vault.example:8200`. */
    address: z
      .url({ protocol: /^https?$/, error: 'must be an http(s) URL such as https://vault.example:8200' })
      .refine((v) => {
        const url = URL.canParse(v) ? new URL(v) : undefined;
        return url === undefined || (url.username === '' && url.password === '' && url.search === '' && url.hash === '');
      }, 'must carry no credentials, query or fragment'),
    /** A file holding the token (as written by `bao login` or a Vault Agent sink); re-read when it changes. */
    tokenFile: z.string().min(1).optional(),
    /** Or the NAME of an environment variable holding it (never the token itself). */
    tokenEnv: z.string().regex(ENV_NAME, 'an environment variable name such as VAULT_TOKEN').optional(),
    /** Sent as X-Vault-Namespace (Vault Enterprise, OpenBao namespaces). */
    namespace: z.string().min(1).max(512).optional(),
    /** Where the transit engine is mounted. */
    mount: z
      .string()
      .regex(MOUNT, 'a mount path such as transit')
      .refine((m) => !m.split('/').some((s) => s === '.' || s === '..'), 'a mount path such as transit, without "." or ".." segments')
      .default('transit'),
    /** PEM CA bundle the server's certificate must chain to (VAULT_CACERT); else Node's CAs. */
    caFile: z.string().min(1).optional(),
    /** Name the certificate must carry when it differs from the address's host (VAULT_TLS_SERVER_NAME). */
    tlsServerName: z.string().min(1).optional(),
    /** Accept any server certificate (VAULT_SKIP_VERIFY). Off by default; for tests only. */
    tlsSkipVerify: z.boolean().default(false),
    /** One request's time limit, connection included. */
    requestTimeoutMs: z.number().int().min(100).max(600_000).default(30_000),
    /** WDEKs per `batch_input` request; a larger port batch becomes several requests sent together. */
    maxBatchItems: z.number().int().min(1).max(10_000).default(250),
    /** Connections kept open to the server. */
    maxSockets: z.number().int().min(1).max(1024).default(16),
    /** The port's one manual rotation per hour per key (Transit has no limit of its own); 0 lifts it. */
    minRotationIntervalMs: z.number().int().min(0).default(3_600_000),
  })
  .strict()
  .refine((o) => (o.tokenFile === undefined) !== (o.tokenEnv === undefined), { message: 'give exactly one of tokenFile or tokenEnv', path: ['tokenFile'] })
  .refine((o) => o.address.startsWith('https:') || (o.caFile === undefined && o.tlsServerName === undefined && !o.tlsSkipVerify), {
    message: 'TLS options (caFile, tlsServerName, tlsSkipVerify) need an https:// address',
    path: ['address'],
  });

export type VaultTransitOptions = z.input<typeof vaultTransitOptionsSchema>;
type Options = z.output<typeof vaultTransitOptionsSchema>;

/** The part of `GET <mount>/keys/:name` the adapter reads. */
const keyDataSchema = z.looseObject({
  name: z.string().optional(),
  type: z.string(),
  latest_version: z.number().int().positive(),
  min_decryption_version: z.number().int().nonnegative().optional(),
  keys: z.record(z.string().regex(/^\d+$/), z.union([z.number(), z.looseObject({ creation_time: z.string() })])),
  auto_rotate_period: z.union([z.number(), z.string()]).optional(),
  soft_deleted: z.boolean().optional(),
  derived: z.boolean().optional(),
  supports_encryption: z.boolean().optional(),
});
type KeyData = z.infer<typeof keyDataSchema>;

const ciphertextResult = z.object({ ciphertext: z.string(), key_version: z.number().int().positive().optional() });
const plaintextResult = z.object({ plaintext: z.string() });

/** One item of a `batch_input` answer: the field asked for, or Vault's error for that item. */
type BatchItem = { error: string } | { value: string };

/**
 * The `batch_results` of an answer, checked by hand: this runs for every WDEK of a rewrap, and a
 * schema union per item (building an issue for every success that is not an error) cost more
 * than the rest of the client's work together. Anything else than what Transit returns is
 * refused as a whole.
 */
function batchItemsOf(res: Response, field: 'ciphertext' | 'plaintext', what: string, keyId: string): BatchItem[] {
  const results: unknown = Reflect.get(Object(dataField(res.body)), 'batch_results');
  const malformed = () => new KmsError('KMS_UNAVAILABLE', `Vault's answer to ${what} for key ${keyId} is not what Transit returns (HTTP ${res.status})`, keyId);
  if (!Array.isArray(results)) throw malformed();
  return results.map((item: unknown): BatchItem => {
    if (typeof item !== 'object' || item === null) throw malformed();
    const error: unknown = Reflect.get(item, 'error');
    if (typeof error === 'string' && error !== '') return { error };
    const value: unknown = Reflect.get(item, field);
    if (typeof value !== 'string') throw malformed();
    return { value };
  });
}

interface Response {
  status: number;
  headers: IncomingHttpHeaders;
  body: unknown;
}

type Operation = 'read key' | 'create key' | 'rotate' | 'configure' | 'wrap' | 'unwrap' | 'rewrap' | 'disable' | 'enable';


function checkName(name: unknown): string {
  if (typeof name !== 'string' || name.length > MAX_KEY_NAME || !KEY_NAME.test(name)) {
    throw new KmsError(
      'INVALID_INPUT',
      `Vault Transit key name ${quote(name)} must be 1 to ${MAX_KEY_NAME} letters, digits, "_", "-" or ".", starting and ending with a letter, digit or "_"`,
    );
  }
  return name;
}

function checkPolicy(policy: unknown, keyId: string): RotationPolicy | undefined {
  if (policy === undefined) return undefined;
  return { intervalMonths: checkPolicyMonths(policy, keyId) };
}

/** Vault durations as the API returns them: seconds as a number, or "720h", "2592000s", "30m". */
function durationSeconds(value: number | string | undefined): number {
  if (value === undefined) return 0;
  if (typeof value === 'number') return value;
  if (/^\d+$/.test(value)) return Number(value);
  let total = 0;
  const unit: Record<string, number> = { h: 3600, m: 60, s: 1, ms: 0.001 };
  const parts = value.match(/(\d+(?:\.\d+)?)(ms|h|m|s)/g);
  if (!parts || parts.join('') !== value) return Number.NaN;
  for (const part of parts) {
    const [, n, u] = /^(\d+(?:\.\d+)?)(ms|h|m|s)$/.exec(part)!;
    total += Number(n) * unit[u!]!;
  }
  return total;
}

function isoFromVault(created: number | { creation_time: string }): string {
  const ms = typeof created === 'number' ? created * 1000 : Date.parse(created.creation_time);
  return Number.isFinite(ms) ? new Date(ms).toISOString() : new Date(0).toISOString();
}

/** The WDEK as the Transit ciphertext it is, and the version it names; CIPHERTEXT_INVALID otherwise. */
function ciphertextOf(wdek: unknown, keyId: string): { ciphertext: string; version: number } {
  if (!(wdek instanceof Uint8Array)) throw new KmsError('CIPHERTEXT_INVALID', `the WDEK is not valid for key ${keyId}: it is not a byte buffer`, keyId);
  if (wdek.length > MAX_WDEK_BYTES) {
    throw new KmsError('CIPHERTEXT_INVALID', `the WDEK is not valid for key ${keyId}: ${wdek.length} bytes is too long for a Transit ciphertext of a DEK`, keyId);
  }
  const text = Buffer.from(wdek.buffer, wdek.byteOffset, wdek.byteLength).toString('latin1');
  const match = CIPHERTEXT_PREFIX.exec(text);
  if (!match) throw new KmsError('CIPHERTEXT_INVALID', `the WDEK is not valid for key ${keyId}: it is not a Vault Transit ciphertext (vault:vN:…)`, keyId);
  return { ciphertext: text, version: Number(match[1]) };
}

function wdekOf(ciphertext: string, keyId: string): { wdek: Buffer; keyVersion: number } {
  const match = CIPHERTEXT.exec(ciphertext);
  if (!match) throw new KmsError('KMS_UNAVAILABLE', `Vault answered for key ${keyId} with a ciphertext that is not vault:vN:…`, keyId);
  return { wdek: Buffer.from(ciphertext, 'latin1'), keyVersion: Number(match[1]) };
}

function dekOf(plaintext: string, keyId: string): Buffer {
  const dek = Buffer.from(plaintext, 'base64');
  if (dek.length !== DEK_LENGTH) {
    dek.fill(0);
    throw new KmsError('CIPHERTEXT_INVALID', `the WDEK is not valid for key ${keyId}: it decrypts, but not to a ${DEK_LENGTH}-byte DEK`, keyId);
  }
  return dek;
}

function vaultErrors(body: unknown): string {
  const errors: unknown = typeof body === 'object' && body !== null ? Reflect.get(body, 'errors') : undefined;
  const text = Array.isArray(errors) ? errors.filter((e) => typeof e === 'string').join('; ') : '';
  const oneLine = text.replace(/\s+/g, ' ').replace(/^1 error occurred: \* /, '').trim();
  return oneLine.length > 300 ? `${oneLine.slice(0, 300)}…` : oneLine;
}

function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** When a throttled client may try again: Retry-After (seconds or a date), else X-Ratelimit-Reset. */
function retryAfterOf(headers: IncomingHttpHeaders, now: number): string | undefined {
  const raw = header(headers, 'retry-after') ?? header(headers, 'x-ratelimit-reset');
  if (raw === undefined) return undefined;
  const trimmed = raw.trim();
  if (/^\d+$/.test(trimmed)) {
    // Whole seconds, rounded down by the server: "0" means within the second.
    return new Date(now + Math.max(1, Number(trimmed)) * 1000).toISOString();
  }
  const at = Date.parse(trimmed);
  return Number.isFinite(at) ? new Date(at).toISOString() : undefined;
}

function dataField(body: unknown): unknown {
  return typeof body === 'object' && body !== null ? Reflect.get(body, 'data') : undefined;
}

function dataOf<T extends z.ZodType>(schema: T, res: Response, what: string, keyId: string): z.infer<T> {
  const parsed = schema.safeParse(dataField(res.body));
  if (!parsed.success) throw new KmsError('KMS_UNAVAILABLE', `Vault's answer to ${what} for key ${keyId} is not what Transit returns (HTTP ${res.status})`, keyId);
  return parsed.data;
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

export class VaultTransitKms implements KeyManagementService {
  private readonly base: URL;
  private readonly agent: HttpAgent | HttpsAgent;
  private readonly mountPath: string;
  private token: { value: string; stamp: string } | undefined;
  /**
   * A rate-limit quota's window, as far as this client can tell: when the last 429 came, and
   * when the first request after it that the quota let through was sent (the new window had
   * begun by then). See `retryAfter`.
   */
  private throttledAt = 0;
  private windowOpenedBy: number | undefined;

  private constructor(
    private readonly options: Options,
    private readonly now: () => number,
  ) {
    this.base = new URL(options.address);
    // A missing or empty token is a configuration mistake: say so when the adapter opens.
    this.readToken();
    this.mountPath = options.mount
      .split('/')
      .map((s) => encodeURIComponent(s))
      .join('/');
    if (this.base.protocol === 'https:') {
      let ca: Buffer | undefined;
      if (options.caFile !== undefined) {
        try {
          ca = readFileSync(options.caFile);
        } catch (err) {
          throw new KmsError('INVALID_INPUT', `Vault caFile ${options.caFile} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
        }
      }
      this.agent = new HttpsAgent({
        keepAlive: true,
        maxSockets: options.maxSockets,
        ...(ca ? { ca } : {}),
        ...(options.tlsServerName ? { servername: options.tlsServerName } : {}),
        rejectUnauthorized: !options.tlsSkipVerify,
      });
    } else {
      this.agent = new HttpAgent({ keepAlive: true, maxSockets: options.maxSockets });
    }
  }

  /** Validates the options (INVALID_INPUT naming every problem, never a value) and opens the connection pool. */
  static open(options: VaultTransitOptions, deps: { now?: () => number } = {}): VaultTransitKms {
    const parsed = vaultTransitOptionsSchema.safeParse(options);
    if (!parsed.success) {
      const problems = parsed.error.issues.map((i) => `${i.path.join('.') || 'options'}: ${i.message}`);
      throw new KmsError('INVALID_INPUT', `Vault Transit options: ${problems.join('; ')}`);
    }
    return new VaultTransitKms(parsed.data, deps.now ?? Date.now);
  }

  /** Closes the kept-alive connections. */
  close(): void {
    this.agent.destroy();
  }

  async createKey(input: { name: string }): Promise<KeyMetadata> {
    const name = checkName(input?.name);
    const existing = await this.readKey(name).catch((err: unknown) => {
      if (err instanceof KmsError && err.code === 'KEY_NOT_FOUND') return undefined;
      throw err;
    });
    if (existing) {
      const data = existing;
      if (data.type !== KEY_TYPE || data.derived === true) {
        throw new KmsError('INVALID_INPUT', `Vault Transit key ${name} already exists as a ${data.derived ? 'derived ' : ''}${data.type} key; keyops wraps DEKs only with non-derived ${KEY_TYPE} keys`, name);
      }
      return this.toMetadata(name, data);
    }
    await this.send('POST', `keys/${name}`, { type: KEY_TYPE, exportable: false, allow_plaintext_backup: false }, name, 'create key');
    return this.getKeyMetadata(name);
  }

  async getKeyMetadata(keyId: string): Promise<KeyMetadata> {
    const name = checkName(keyId);
    return this.toMetadata(name, await this.readKey(name));
  }

  async rotateKey(keyId: string, requestId: string): Promise<RotateResult> {
    const name = checkName(keyId);
    if (typeof requestId !== 'string' || requestId.length === 0 || requestId.length > MAX_REQUEST_ID) {
      throw new KmsError('INVALID_INPUT', `rotation request id ${quote(requestId)} must be 1 to ${MAX_REQUEST_ID} characters`, name);
    }
    // Transit keeps no request id: nothing here can tell a retry from a second rotation. The
    // activity reads the version first (rotateToVersion) and rotates only from target - 1.
    if (this.options.minRotationIntervalMs > 0) {
      const { lastRotateDate } = this.toMetadata(name, await this.readKey(name));
      const allowedMs = lastRotateDate === undefined ? 0 : Date.parse(lastRotateDate) + this.options.minRotationIntervalMs;
      if (this.now() < allowedMs) {
        const allowed = new Date(allowedMs).toISOString();
        throw new KmsError('KEY_ROTATION_NOT_PERMITTED', `key ${name} was last rotated at ${lastRotateDate}; it may be rotated again from ${allowed}`, name, allowed);
      }
    }
    const res = await this.send('POST', `keys/${name}/rotate`, {}, name, 'rotate');
    // OpenBao answers with the key; older Vaults with 204.
    const answered = keyDataSchema.safeParse(dataField(res.body));
    return { version: answered.success ? answered.data.latest_version : (await this.readKey(name)).latest_version, rotated: true };
  }

  async wrap(keyId: string, dek?: Buffer): Promise<WrapResult> {
    const name = checkName(keyId);
    if (dek !== undefined && (!(dek instanceof Uint8Array) || dek.length !== DEK_LENGTH)) {
      throw new KmsError('INVALID_INPUT', `a DEK must be ${DEK_LENGTH} bytes`, name);
    }
    if (dek === undefined) {
      const res = await this.send('POST', `datakey/plaintext/${name}`, { bits: DEK_LENGTH * 8 }, name, 'wrap');
      const data = dataOf(ciphertextResult.extend(plaintextResult.shape), res, 'datakey/plaintext', name);
      const generated = Buffer.from(data.plaintext, 'base64');
      if (generated.length !== DEK_LENGTH) throw new KmsError('KMS_UNAVAILABLE', `Vault generated a data key of ${generated.length} bytes for key ${name}`, name);
      return { ...wdekOf(data.ciphertext, name), dek: generated };
    }
    // `encrypt` creates a key it does not find (when the token may): make sure it exists first.
    await this.readKey(name);
    const res = await this.send('POST', `encrypt/${name}`, { plaintext: Buffer.from(dek).toString('base64') }, name, 'wrap');
    const data = dataOf(ciphertextResult, res, 'encrypt', name);
    return { ...wdekOf(data.ciphertext, name), dek };
  }

  async unwrap(keyId: string, wdek: Buffer): Promise<UnwrapResult> {
    const name = checkName(keyId);
    const { ciphertext, version } = ciphertextOf(wdek, name);
    const res = await this.send('POST', `decrypt/${name}`, { ciphertext }, name, 'unwrap');
    return { dek: dekOf(dataOf(plaintextResult, res, 'decrypt', name).plaintext, name), keyVersion: version };
  }

  async rewrap(keyId: string, wdek: Buffer): Promise<RewrapResult> {
    const name = checkName(keyId);
    const { ciphertext, version } = ciphertextOf(wdek, name);
    const res = await this.send('POST', `rewrap/${name}`, { ciphertext }, name, 'rewrap');
    return { ...wdekOf(dataOf(ciphertextResult, res, 'rewrap', name).ciphertext, name), previousVersion: version };
  }

  unwrapBatch(keyId: string, wdeks: readonly Buffer[]): Promise<BatchResult<UnwrapResult>> {
    return this.batch(keyId, wdeks, 'decrypt', 'unwrap', 'plaintext', (plaintext, name, version) => ({ dek: dekOf(plaintext, name), keyVersion: version }), (r) => r.dek.fill(0));
  }

  rewrapBatch(keyId: string, wdeks: readonly Buffer[]): Promise<BatchResult<RewrapResult>> {
    return this.batch(keyId, wdeks, 'rewrap', 'rewrap', 'ciphertext', (ciphertext, name, version) => ({ ...wdekOf(ciphertext, name), previousVersion: version }));
  }

  async setRotationPolicy(keyId: string, policy: RotationPolicy | undefined): Promise<KeyMetadata> {
    const name = checkName(keyId);
    const checked = checkPolicy(policy, name);
    const period = checked ? `${checked.intervalMonths * (POLICY_MONTH_SECONDS / 3600)}h` : 0;
    await this.send('POST', `keys/${name}/config`, { auto_rotate_period: period }, name, 'configure');
    return this.getKeyMetadata(name);
  }

  async disableKey(keyId: string): Promise<void> {
    const name = checkName(keyId);
    // Soft delete answers 204 for a name that holds no key: look first.
    await this.readKey(name);
    await this.send('DELETE', `keys/${name}/soft-delete`, undefined, name, 'disable');
  }

  async enableKey(keyId: string): Promise<void> {
    const name = checkName(keyId);
    await this.readKey(name);
    await this.send('POST', `keys/${name}/soft-delete-restore`, {}, name, 'enable');
  }

  private async readKey(name: string): Promise<KeyData> {
    return dataOf(keyDataSchema, await this.send('GET', `keys/${name}`, undefined, name, 'read key'), 'a key read', name);
  }

  private toMetadata(name: string, data: KeyData): KeyMetadata {
    const versions: RootKeyVersion[] = Object.entries(data.keys)
      .map(([v, created]) => ({ version: Number(v), createdAt: isoFromVault(created) }))
      .sort((a, b) => a.version - b.version);
    const latest = versions.find((v) => v.version === data.latest_version);
    const period = durationSeconds(data.auto_rotate_period);
    return {
      keyId: name,
      name: data.name ?? name,
      state: data.soft_deleted === true ? 'disabled' : 'active',
      currentVersion: data.latest_version,
      versions,
      createdAt: versions[0]?.createdAt ?? new Date(0).toISOString(),
      lastRotateDate: data.latest_version > 1 ? latest?.createdAt : undefined,
      rotationPolicy: period > 0 ? { intervalMonths: Math.max(1, Math.round(period / POLICY_MONTH_SECONDS)) } : undefined,
    };
  }

  /**
   * One `batch_input` request per `maxBatchItems` WDEKs, all sent at once. A WDEK that is not a
   * Transit ciphertext is not sent; an item Vault reports an error for is CIPHERTEXT_INVALID.
   * When a rate-limit quota refuses some of the requests, the answers of the others are kept (a
   * ThrottledBatch): resending them would spend the quota twice. Any other failure zeroes what
   * was answered (`discard`) and fails the call.
   */
  private async batch<T>(
    keyId: string,
    wdeks: readonly Buffer[],
    path: 'decrypt' | 'rewrap',
    op: Operation,
    field: 'ciphertext' | 'plaintext',
    toResult: (value: string, name: string, version: number) => T,
    discard?: (result: T) => void,
  ): Promise<BatchResult<T>> {
    const name = checkName(keyId);
    if (!Array.isArray(wdeks)) throw new KmsError('INVALID_INPUT', 'a batch of WDEKs must be an array', name);
    const results: (T | KmsError)[] = new Array<T | KmsError>(wdeks.length);
    const sendable: { index: number; ciphertext: string; version: number }[] = [];
    wdeks.forEach((wdek, index) => {
      try {
        sendable.push({ index, ...ciphertextOf(wdek, name) });
      } catch (err) {
        results[index] = err as KmsError;
      }
    });
    const settled = await Promise.allSettled(
      chunks(sendable, this.options.maxBatchItems).map(async (part) => {
        const body = { batch_input: part.map((p) => ({ ciphertext: p.ciphertext })) };
        // Vault answers 400 when any item failed (decrypt) or 200 (rewrap), with per-item results either way.
        const res = await this.send('POST', `${path}/${name}`, body, name, op, { batch: true });
        const parsed = batchItemsOf(res, field, `${path} batch_input`, name);
        if (parsed.length !== part.length) {
          throw new KmsError('KMS_UNAVAILABLE', `Vault answered ${parsed.length} results to a batch of ${part.length} for key ${name}`, name);
        }
        parsed.forEach((item, j) => {
          const { index, version } = part[j]!;
          if ('error' in item) {
            const { error } = item;
            // About the key, not this WDEK: the whole call fails, as it does for a single one.
            if (/soft-deleted/i.test(error)) throw new KmsError('KEY_DISABLED', `key ${name} is disabled (soft-deleted in Vault Transit)`, name);
            if (/encryption key not found|no existing key named/i.test(error)) throw new KmsError('KEY_NOT_FOUND', `no key ${name} in Vault Transit (mount ${this.options.mount})`, name);
            results[index] = new KmsError('CIPHERTEXT_INVALID', `the WDEK is not valid for key ${name}: ${error.slice(0, 200)}`, name);
            return;
          }
          try {
            results[index] = toResult(item.value, name, version);
          } catch (err) {
            if (!(err instanceof KmsError) || err.code !== 'CIPHERTEXT_INVALID') throw err;
            results[index] = err;
          }
        });
      }),
    );
    const failures = settled.flatMap((s) => (s.status === 'rejected' ? [s.reason as unknown] : []));
    if (failures.length === 0) return results;
    const throttled = failures.every((err) => err instanceof KmsError && err.code === 'KMS_THROTTLED');
    if (throttled) throw new ThrottledBatch(failures[0] as KmsError, results);
    if (discard) for (const r of results) if (r !== undefined && !(r instanceof KmsError)) discard(r);
    throw failures.find((err) => !(err instanceof KmsError && err.code === 'KMS_THROTTLED'));
  }

  /**
   * Sends one request under the mount and returns a 2xx answer (or, for a batch, any answer
   * that carries per-item results); everything else becomes a KmsError. A 401/403 is tried
   * once more when the token file changed meanwhile (a renewed token from an agent).
   */
  private async send(method: string, path: string, body: unknown, keyId: string, op: Operation, options: { batch?: boolean } = {}): Promise<Response> {
    const url = new URL(`/v1/${this.mountPath}/${path.split('/').map(encodeURIComponent).join('/')}`, this.base);
    const payload = body === undefined ? undefined : JSON.stringify(body);
    let token = this.readToken();
    for (let attempt = 1; ; attempt++) {
      const sentAt = this.now();
      const res = await this.exchange(method, url, payload, token, keyId);
      // Sent after the last 429 and let through: a new window had opened. One sent before it may
      // have been let through by the old window, whatever order the answers came in.
      if (res.status !== 429 && sentAt >= this.throttledAt && this.throttledAt > (this.windowOpenedBy ?? -1)) this.windowOpenedBy = sentAt;
      if (res.status >= 200 && res.status < 300) return res;
      if (options.batch && res.status === 400 && this.hasBatchResults(res)) return res;
      if ((res.status === 401 || res.status === 403) && attempt === 1) {
        const fresh = this.readToken(true);
        if (fresh !== token) {
          token = fresh;
          continue;
        }
      }
      throw this.failure(res, keyId, op, url.pathname, options.batch === true);
    }
  }

  /**
   * When a throttled call may go again. Vault's quotas refill a fixed window at once, and their
   * Retry-After is whole seconds rounded down: "0" says only "within the second". Waiting a
   * second from the 429 then started every refill late by the time the last one took to drain
   * (about a tenth of a 1 s window, and growing each window). A window opens one interval after
   * the previous one did, so the wait ends a second after the first request this client got
   * through since its last 429 was sent, when that is still ahead. That assumes the 1 s interval
   * of a per-second quota; with a longer one an early retry costs one more 429, and the state is
   * the adapter's, not per path: a quota covers a whole mount (`transit/`) or more.
   */
  private retryAfter(headers: IncomingHttpHeaders): string | undefined {
    const now = this.now();
    const said = retryAfterOf(headers, now);
    const opened = this.windowOpenedBy;
    this.throttledAt = now;
    if (opened === undefined || (header(headers, 'retry-after') ?? header(headers, 'x-ratelimit-reset'))?.trim() !== '0') return said;
    const next = opened + 1000;
    return next > now ? new Date(next).toISOString() : said;
  }

  private hasBatchResults(res: Response): boolean {
    const data = dataField(res.body);
    return typeof data === 'object' && data !== null && Array.isArray(Reflect.get(data, 'batch_results'));
  }

  private failure(res: Response, keyId: string, op: Operation, path: string, batch: boolean): KmsError {
    const said = vaultErrors(res.body);
    const because = said ? `: ${said}` : '';
    const where = `Vault Transit at ${this.base.origin}${this.options.namespace ? ` (namespace ${this.options.namespace})` : ''}`;
    const { status } = res;
    if (status === 429) {
      const retryAfter = this.retryAfter(res.headers);
      return new KmsError(
        'KMS_THROTTLED',
        `${where} throttled the ${op} of key ${keyId} (HTTP 429, a rate-limit quota)${retryAfter ? `; retry after ${retryAfter}` : ''}${because}`,
        keyId,
        retryAfter,
      );
    }
    if (status === 401 || status === 403) {
      return new KmsError(
        'KMS_AUTH_FAILED',
        `${where} refused the ${op} of key ${keyId} (HTTP ${status}${because}): the token is invalid or expired, or its policy does not allow ${path}`,
        keyId,
      );
    }
    if (/soft-deleted/i.test(said)) return new KmsError('KEY_DISABLED', `key ${keyId} is disabled (soft-deleted in ${where})`, keyId);
    if (status === 404 && /no handler for route|unsupported path|route entry not found/i.test(said)) {
      if (op === 'disable' || op === 'enable') {
        return new KmsError('INVALID_INPUT', `${where} cannot ${op} key ${keyId}: this server has no transit soft delete (HashiCorp Vault lacks it; OpenBao has it)${because}`, keyId);
      }
      return new KmsError('INVALID_INPUT', `${where} has no transit engine at ${this.options.mount}/ (HTTP 404${because}): check the mount and namespace`, keyId);
    }
    if (status === 404 || (status === 400 && /encryption key not found|no existing key named|key not found/i.test(said))) {
      return new KmsError('KEY_NOT_FOUND', `no key ${keyId} in ${where} (mount ${this.options.mount})`, keyId);
    }
    if (status === 400 || status === 413) {
      if (/refused JSON input|exceeded maximum|request body too large|too large/i.test(said) || status === 413) {
        return new KmsError('INVALID_INPUT', `${where} refused a request of the ${op} of key ${keyId} as too large (lower maxBatchItems)${because}`, keyId);
      }
      if ((op === 'unwrap' || op === 'rewrap') && !batch) {
        return new KmsError('CIPHERTEXT_INVALID', `the WDEK is not valid for key ${keyId}${because}`, keyId);
      }
      return new KmsError('INVALID_INPUT', `${where} refused the ${op} of key ${keyId} (HTTP 400${because})`, keyId);
    }
    if (status === 405) return new KmsError('INVALID_INPUT', `${where} does not support the ${op} of key ${keyId} (HTTP 405${because})`, keyId);
    if (status >= 300 && status < 400) {
      const location = header(res.headers, 'location');
      return new KmsError(
        'KMS_UNAVAILABLE',
        `${where} redirected the ${op} of key ${keyId} (HTTP ${status}${location ? ` to ${new URL(location, this.base).origin}` : ''}): address a node that serves requests, or a load balancer`,
        keyId,
      );
    }
    return new KmsError('KMS_UNAVAILABLE', `${where} failed the ${op} of key ${keyId} (HTTP ${status}${because}); retry later`, keyId);
  }

  /** The token, re-read from its file when the file changed (or `force`), never logged or quoted. */
  private readToken(force = false): string {
    const { tokenFile, tokenEnv } = this.options;
    if (tokenEnv !== undefined) {
      const value = process.env[tokenEnv]?.trim();
      if (!value) throw new KmsError('KMS_AUTH_FAILED', `no Vault token: environment variable ${tokenEnv} is empty or unset`);
      return value;
    }
    const file = tokenFile!;
    let stamp: string;
    try {
      const st = statSync(file);
      stamp = `${st.ino}:${st.size}:${st.mtimeMs}`;
      if (!force && this.token?.stamp === stamp) return this.token.value;
      const value = readFileSync(file, 'utf8').trim();
      if (!value) throw new KmsError('KMS_AUTH_FAILED', `no Vault token: ${file} is empty`);
      if (/\s/.test(value)) throw new KmsError('KMS_AUTH_FAILED', `${file} does not hold a single Vault token (it has whitespace inside)`);
      this.token = { value, stamp };
      return value;
    } catch (err) {
      if (err instanceof KmsError) throw err;
      throw new KmsError('KMS_AUTH_FAILED', `the Vault token file ${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
  }

  /** One HTTP exchange; network and TLS failures become KmsErrors here. */
  private exchange(method: string, url: URL, payload: string | undefined, token: string, keyId: string): Promise<Response> {
    const headers: Record<string, string | number> = { 'X-Vault-Token': token, 'X-Vault-Request': 'true', Accept: 'application/json' };
    if (this.options.namespace) headers['X-Vault-Namespace'] = this.options.namespace;
    if (payload !== undefined) {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = Buffer.byteLength(payload);
    }
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise<Response>((resolve, reject) => {
      const req = send(url, { method, headers, agent: this.agent, timeout: this.options.requestTimeoutMs }, (res) => {
        const parts: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_RESPONSE_BYTES) {
            req.destroy(Object.assign(new Error('response too large'), { code: 'ERESPONSETOOLARGE' }));
            return;
          }
          parts.push(chunk);
        });
        res.on('error', (err) => reject(this.networkFailure(err, keyId)));
        res.on('end', () => {
          const text = Buffer.concat(parts).toString('utf8');
          let body: unknown;
          if (text.trim() !== '') {
            try {
              body = JSON.parse(text);
            } catch {
              const status = res.statusCode ?? 0;
              // A proxy's error page, not Vault: unavailable unless the status says otherwise.
              body = { errors: [`a non-JSON answer (HTTP ${status})`] };
            }
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
        });
      });
      req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
      req.on('error', (err) => reject(this.networkFailure(err, keyId)));
      req.end(payload);
    });
  }

  private networkFailure(err: unknown, keyId: string): KmsError {
    const code = (err as NodeJS.ErrnoException | null)?.code ?? 'error';
    const where = `Vault Transit at ${this.base.origin}`;
    if (TLS_TRUST_CODES.has(code)) {
      return new KmsError(
        'KMS_AUTH_FAILED',
        `${where} presented a TLS certificate that does not verify (${code}): give caFile the CA that signed it${code === 'ERR_TLS_CERT_ALTNAME_INVALID' ? ', or tlsServerName the name it carries' : ''}`,
        keyId,
      );
    }
    if (code === 'ETIMEDOUT') return new KmsError('KMS_UNAVAILABLE', `${where} did not answer within ${this.options.requestTimeoutMs} ms; retry later`, keyId);
    return new KmsError('KMS_UNAVAILABLE', `${where} is unreachable (${code}); retry later`, keyId);
  }
}
