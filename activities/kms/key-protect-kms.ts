/**
 * IBM Key Protect behind the KMS port (issue 14 §1), over Key Protect's REST API v2 with Node's
 * fetch. No SDK: the calls are few and plain JSON, and the token exchange is one form POST.
 * The port is modelled on Key Protect, so most of it maps one to one (README, "IBM Key Protect"):
 *
 * - **Key ids** are Key Protect key UUIDs (aliases are refused: another layer says which KMS
 *   instance holds a key). createKey makes a root key (`extractable: false`) with Key Protect's
 *   own key material; a standard (extractable) key is refused wherever it is used.
 * - **Versions.** Key Protect names key versions by UUID. `GET /api/v2/keys/{id}/versions`
 *   (with `allKeyStates=true`, without which a non-active key answers 409) lists them newest
 *   first; sorted by `creationDate` (ties, which a one-second clock allows, by the list's own
 *   order) they are the port's versions 1, 2, … The table is cached per key and read again when
 *   an answer names a version it does not hold, and on every getKeyMetadata (which is how a
 *   rotation keyops did not make is found).
 * - **WDEK** = Key Protect's `ciphertext` string, as its ASCII bytes, unchanged: no envelope.
 *   Key Protect's ciphertext already names the version that made it, and unwrap and rewrap say
 *   which one (`keyVersion.id`), so keyops' version always comes from Key Protect itself, and a
 *   WDEK can be handed as it is to `ibmcloud kp key unwrap`.
 * - **Rotation**: `POST …/actions/rotate` → 204. Key Protect allows one per hour per key: its 409
 *   `KEY_ROTATION_NOT_PERMITTED` becomes the port's error with `retryAfter` = lastRotateDate + 1 h (+ 1 s: dates are to the second).
 *   Key Protect records no request id: this adapter remembers, in memory, which request made
 *   which version, so a retry of the same request (after a lost answer) returns that version
 *   instead of rotating again, and getKeyMetadata names the request where it knows it. After a
 *   worker restart that memory is gone; the rotation activity still never rotates twice, since it
 *   reads the version first.
 * - **Wrap** `actions/wrap` (a given DEK as base64 `plaintext`, or none: Key Protect makes a
 *   32-byte DEK), **unwrap** `actions/unwrap`, **rewrap** `actions/rewrap` (`keyVersion` and
 *   `rewrappedKeyVersion` mapped to ordinals). Key Protect takes one ciphertext per call: batches
 *   send one request per WDEK, `concurrency` at a time; a WDEK Key Protect refuses (400
 *   INVALID_FIELD_ERR, 422 UNPROCESSABLE_CIPHERTEXT_ERR) is that item's CIPHERTEXT_INVALID.
 * - **Policy**: `PUT /api/v2/keys/{id}/policies?policy=rotation` with `rotation.interval_month`
 *   (1–12) and `enabled`; removing a policy disables it (`enabled: false`).
 * - **Disable/enable**: `actions/disable` / `actions/enable` (204). A disabled key is state 2
 *   (Suspended); Key Protect refuses its wrap, unwrap, rewrap and rotate with 409
 *   `KEY_ACTION_INVALID_STATE_ERR` → KEY_DISABLED. Both are idempotent here (Key Protect answers
 *   409 to disabling a disabled key). Enabling within 30 s of disabling is Key Protect's 409
 *   `REQ_TOO_EARLY_ERR` → KMS_THROTTLED with retryAfter 30 s on.
 *
 * Authentication: an IBM Cloud API key, read from a file or an environment variable (never an
 * option), exchanged at `{iamEndpoint}/identity/token` (`grant_type=urn:ibm:params:oauth:
 * grant-type:apikey`) for a bearer token that is cached until shortly before `expires_in` runs
 * out. A 401 drops the token and the request is sent once more with a fresh one; a second 401,
 * or a 403, is KMS_AUTH_FAILED. Every request carries `bluemix-instance` (the instance id) and a
 * fresh `correlation-id`.
 *
 * Errors: 404/410 → KEY_NOT_FOUND; 409 by its reason code (above); 429 → KMS_THROTTLED with
 * retryAfter from Retry-After; 401/403 → KMS_AUTH_FAILED; 5xx, timeouts and connection errors →
 * KMS_UNAVAILABLE; other 4xx → INVALID_INPUT. No message carries the API key, a token, a DEK or
 * a plaintext: Key Protect's own texts are quoted cut short, with long base64 runs blanked out.
 * The adapter logs nothing.
 */
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
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
import { KmsError, type KmsErrorCode } from './kms-error';
import { eachBounded } from './per-wdek-batch';
import { checkDek, checkName, checkPolicyMonths, checkRequestId, quote } from './port-input';

// ---------------------------------------------------------------------------------------------
// Options

const httpUrl = z
  .url({ protocol: /^https?$/, error: 'must be an http(s) URL' })
  .refine((v) => !URL.canParse(v) || (new URL(v).username === '' && new URL(v).password === ''), 'must not carry credentials (user:pass@)');
const envName = z.string().regex(/^[A-Z_][A-Z0-9_]*$/, 'an environment variable name (e.g. IBMCLOUD_API_KEY)');
/** Options that would put a secret inline: the API key comes from a file or a variable. */
const SECRET_OPTIONS = ['apiKey', 'apikey', 'token', 'accessToken', 'password', 'secret'];

export const keyProtectOptionsSchema = z
  .strictObject({
    /** The regional service endpoint, e.g. https://us-south.kms.cloud.ibm.com. */
    endpoint: httpUrl,
    /** The Key Protect instance id, sent as `bluemix-instance`. */
    instanceId: z.uuid('the Key Protect instance id (a UUID)'),
    /** A file holding the IBM Cloud API key (read again at every token exchange). */
    apiKeyFile: z.string().min(1).optional(),
    /** Or the name of the environment variable holding it. */
    apiKeyEnv: envName.optional(),
    iamEndpoint: httpUrl.default('https://iam.cloud.ibm.com'),
    /** Requests in flight at once within a batch call (Key Protect takes one WDEK per request). */
    concurrency: z.number().int().min(1).max(256).default(16),
    requestTimeoutMs: z.number().int().min(100).max(300_000).default(15_000),
  })
  .refine((v) => (v.apiKeyFile === undefined) !== (v.apiKeyEnv === undefined), { message: 'give exactly one of apiKeyFile or apiKeyEnv', path: ['apiKeyFile'] });

export type KeyProtectOptions = z.input<typeof keyProtectOptionsSchema>;
type Settings = z.output<typeof keyProtectOptionsSchema>;

/** Validated options, or INVALID_INPUT listing every problem as `field: problem`. */
export function parseKeyProtectOptions(options: unknown): Settings {
  if (typeof options === 'object' && options !== null) {
    const secret = SECRET_OPTIONS.find((name) => Object.hasOwn(options, name));
    if (secret) {
      throw new KmsError('INVALID_INPUT', `Key Protect options: ${secret}: secrets are never given inline; name an apiKeyFile or an apiKeyEnv instead`);
    }
  }
  const parsed = keyProtectOptionsSchema.safeParse(options);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(options)'}: ${i.message}`);
    throw new KmsError('INVALID_INPUT', `Key Protect options: ${problems.join('; ')}`);
  }
  return parsed.data;
}

// ---------------------------------------------------------------------------------------------
// Wire shapes (only the fields keyops reads; the rest is ignored)

/** Media types of the API reference's requests. */
const KEY_TYPE = 'application/vnd.ibm.kms.key+json';
const KEY_ACTION_TYPE = 'application/vnd.ibm.kms.key_action+json';
const VERSION_TYPE = 'application/vnd.ibm.kms.key.version+json';
const POLICY_TYPE = 'application/vnd.ibm.kms.policy+json';

const versionRef = z.object({ id: z.string().min(1) });
const keyResource = z.object({
  id: z.string().min(1),
  name: z.string().optional(),
  state: z.number().int(),
  extractable: z.boolean().optional(),
  creationDate: z.string().optional(),
  lastRotateDate: z.string().optional(),
});
type KeyResource = z.infer<typeof keyResource>;
const keyCollection = z.object({ resources: z.array(keyResource).min(1) });
const versionCollection = z.object({
  metadata: z.object({ totalCount: z.number().int().optional() }).optional(),
  resources: z.array(z.object({ id: z.string().min(1), creationDate: z.string() })).default([]),
});
const policyCollection = z.object({
  resources: z.array(z.object({ rotation: z.object({ enabled: z.boolean().optional(), interval_month: z.number().int().optional() }).optional() })).default([]),
});
const wrapAnswer = z.object({ ciphertext: z.string().min(1), plaintext: z.string().optional(), keyVersion: versionRef.optional() });
const unwrapAnswer = z.object({ plaintext: z.string(), keyVersion: versionRef });
const rewrapAnswer = z.object({ ciphertext: z.string().min(1), keyVersion: versionRef, rewrappedKeyVersion: versionRef });
const tokenAnswer = z.object({ access_token: z.string().min(1), expires_in: z.number().positive() });
const kpErrorBody = z.object({
  resources: z.array(z.object({ errorMsg: z.string().optional(), reasons: z.array(z.object({ code: z.string() })).optional() })).optional(),
});
const iamErrorBody = z.object({ errorCode: z.string().optional(), errorMessage: z.string().optional() });

// ---------------------------------------------------------------------------------------------
// Input checks

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
 
const DEK_LENGTH = 32;
const MAX_WDEK = 16 * 1024;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const HOUR_MS = 3_600_000;
/** Key Protect's wait between disabling a key and enabling it again (REQ_TOO_EARLY_ERR). */
const ENABLE_WAIT_MS = 30_000;
const VERSION_PAGE = 200;
/** Request ids remembered per key for idempotent rotation. */
const REMEMBERED_ROTATIONS = 64;


function checkKeyId(keyId: unknown): string {
  if (typeof keyId !== 'string' || !UUID.test(keyId)) throw new KmsError('INVALID_INPUT', `key id ${quote(keyId)} is not a Key Protect key id (a UUID)`);
  return keyId.toLowerCase();
}





/** A WDEK's ciphertext string; CIPHERTEXT_INVALID, without a request, if it cannot be one. */
function ciphertextOf(wdek: unknown, keyId: string): string {
  const invalid = (why: string) => new KmsError('CIPHERTEXT_INVALID', `the WDEK is not valid for key ${keyId}: ${why}`, keyId);
  if (!(wdek instanceof Uint8Array)) throw invalid('it is not a byte buffer');
  if (wdek.length === 0 || wdek.length > MAX_WDEK) throw invalid(`it is ${wdek.length} bytes long`);
  const text = Buffer.from(wdek.buffer, wdek.byteOffset, wdek.byteLength).toString('latin1');
  if (!BASE64.test(text)) throw invalid('it is not a Key Protect ciphertext (base64 text)');
  return text;
}

/** A DEK from Key Protect's base64 `plaintext`; `code` if it is not 32 bytes. */
function dekOf(plaintext: string, keyId: string, code: KmsErrorCode): Buffer {
  const dek = Buffer.from(plaintext, 'base64');
  if (dek.length !== DEK_LENGTH) {
    dek.fill(0);
    throw new KmsError(code, `Key Protect answered for key ${keyId} with a plaintext that is not a ${DEK_LENGTH}-byte DEK`, keyId);
  }
  return dek;
}

// ---------------------------------------------------------------------------------------------
// Errors

/** Key Protect's (or IAM's) own words, short, with anything that could be key material blanked. */
function sanitize(text: string | undefined): string {
  if (!text) return '';
  return text.replace(/[A-Za-z0-9+/_=-]{32,}/g, '[…]').slice(0, 240);
}

/** When to try again, from a Retry-After header (seconds or an HTTP date). */
export function retryAfterFrom(header: string | null, now: number): string | undefined {
  if (!header) return undefined;
  const seconds = Number(header);
  if (Number.isFinite(seconds) && seconds >= 0) return new Date(now + seconds * 1000).toISOString();
  const at = Date.parse(header);
  return Number.isNaN(at) ? undefined : new Date(at).toISOString();
}

type Operation = 'createKey' | 'getKey' | 'versions' | 'getPolicy' | 'setPolicy' | 'rotate' | 'wrap' | 'unwrap' | 'rewrap' | 'disable' | 'enable';

/**
 * The port's error for a Key Protect error answer. 409 is told apart by its reason code, as the
 * Key Protect error reference does: KEY_ROTATION_NOT_PERMITTED (one rotation per hour),
 * KEY_ACTION_INVALID_STATE_ERR (the key's state forbids the action: disabled), REQ_TOO_EARLY_ERR
 * (enable within 30 s of disable).
 */
export function kmsErrorFor(operation: Operation, keyId: string | undefined, status: number, body: unknown, retryAfterHeader: string | null, now: number): KmsError {
  const parsed = kpErrorBody.safeParse(body);
  const first = parsed.success ? parsed.data.resources?.[0] : undefined;
  const reasons = (first?.reasons ?? []).map((r) => r.code);
  const has = (code: string) => reasons.includes(code);
  const onCiphertext = operation === 'unwrap' || operation === 'rewrap';
  let code: KmsErrorCode;
  let retryAfter: string | undefined;
  if (status === 401 || status === 403) code = 'KMS_AUTH_FAILED';
  else if (status === 429) {
    code = 'KMS_THROTTLED';
    retryAfter = retryAfterFrom(retryAfterHeader, now);
  } else if (status === 404 || status === 410) code = 'KEY_NOT_FOUND';
  else if (status === 409) {
    if (has('KEY_ROTATION_NOT_PERMITTED')) code = 'KEY_ROTATION_NOT_PERMITTED';
    else if (has('REQ_TOO_EARLY_ERR')) {
      code = 'KMS_THROTTLED';
      retryAfter = new Date(now + ENABLE_WAIT_MS).toISOString();
    } else if (has('KEY_ACTION_INVALID_STATE_ERR')) code = 'KEY_DISABLED';
    else code = operation === 'rotate' ? 'KEY_ROTATION_NOT_PERMITTED' : operation === 'wrap' || onCiphertext ? 'KEY_DISABLED' : 'INVALID_INPUT';
  } else if (onCiphertext && (status === 422 || (status === 400 && (has('INVALID_FIELD_ERR') || has('UNPROCESSABLE_CIPHERTEXT_ERR'))))) {
    code = 'CIPHERTEXT_INVALID';
  } else if (status >= 500 || status === 408) code = 'KMS_UNAVAILABLE';
  else code = 'INVALID_INPUT';
  const said = sanitize(first?.errorMsg);
  const what = code === 'KEY_DISABLED' ? ` (the key is not active: disabled, or expired)` : code === 'KEY_NOT_FOUND' ? ' (no such key in this instance)' : '';
  const message = `Key Protect ${operation}${keyId ? ` of key ${keyId}` : ''} failed${what}: HTTP ${status}${reasons.length ? ` ${reasons.join(', ')}` : ''}${said ? `: ${said}` : ''}`;
  return new KmsError(code, message, keyId, retryAfter);
}

// ---------------------------------------------------------------------------------------------
// The adapter

interface Call {
  operation: Operation;
  keyId?: string;
  method: 'GET' | 'POST' | 'PUT';
  path: string;
  query?: Record<string, string>;
  body?: unknown;
  contentType?: string;
  accept: string;
  prefer?: string;
}

interface Answer {
  status: number;
  body: unknown;
  retryAfter: string | null;
}

/** A key's versions, oldest first: index i is the port's version i + 1. */
interface VersionTable {
  ids: string[];
  createdAt: string[];
  byId: Map<string, number>;
}

interface RotationRecord {
  /** The version the key was at when this request asked Key Protect to rotate. */
  base: number;
  /** The version it made, once known. */
  version?: number;
}

interface CachedToken {
  value: string;
  refreshAt: number;
}

const isoSeconds = (ms: number) => new Date(ms).toISOString();

export class KeyProtectKms implements KeyManagementService {
  private readonly settings: Settings;
  private readonly now: () => number;
  private readonly base: string;
  private readonly iam: string;
  private token: CachedToken | undefined;
  private tokenExchange: Promise<string> | undefined;
  private readonly versionTables = new Map<string, VersionTable>();
  private readonly versionLoads = new Map<string, Promise<VersionTable>>();
  private readonly rotations = new Map<string, Map<string, RotationRecord>>();

  constructor(options: KeyProtectOptions & { now?: () => number }) {
    const { now, ...rest } = options;
    this.settings = parseKeyProtectOptions(rest);
    this.now = now ?? Date.now;
    this.base = this.settings.endpoint.replace(/\/+$/, '');
    this.iam = this.settings.iamEndpoint.replace(/\/+$/, '');
  }

  async createKey(input: { name: string }): Promise<KeyMetadata> {
    const name = checkName(input?.name);
    // Create a key: the collection envelope of the API reference, one root key resource.
    const answer = await this.request({
      operation: 'createKey',
      method: 'POST',
      path: '/api/v2/keys',
      contentType: KEY_TYPE,
      accept: KEY_TYPE,
      prefer: 'return=representation',
      body: {
        metadata: { collectionType: KEY_TYPE, collectionTotal: 1 },
        resources: [{ type: KEY_TYPE, name, description: 'keyops root key', extractable: false }],
      },
    });
    const key = this.parse(keyCollection, answer.body, 'createKey').resources[0]!;
    // Read back in full: an instance-wide rotation policy may have been applied to the new key.
    return this.getKeyMetadata(key.id);
  }

  async getKeyMetadata(keyId: string): Promise<KeyMetadata> {
    const id = checkKeyId(keyId);
    const [key, table, policy] = await Promise.all([this.readKey(id), this.loadVersions(id, true), this.readPolicy(id)]);
    const requests = new Map<number, string>();
    for (const [request, record] of this.rotations.get(id) ?? []) if (record.version !== undefined) requests.set(record.version, request);
    const versions = table.ids.map((_, i): RootKeyVersion => {
      const requestId = requests.get(i + 1);
      return { version: i + 1, createdAt: table.createdAt[i]!, ...(requestId ? { requestId } : {}) };
    });
    const enabled = policy?.enabled !== false && policy?.interval_month !== undefined && policy.interval_month >= 1 && policy.interval_month <= 12;
    return {
      keyId: id,
      name: key.name ?? id,
      state: key.state === 1 ? 'active' : 'disabled',
      currentVersion: versions.length,
      versions,
      createdAt: this.date(key.creationDate) ?? table.createdAt[0] ?? isoSeconds(0),
      lastRotateDate: this.date(key.lastRotateDate),
      rotationPolicy: enabled ? { intervalMonths: policy.interval_month! } : undefined,
    };
  }

  async rotateKey(keyId: string, requestId: string): Promise<RotateResult> {
    const id = checkKeyId(keyId);
    const request = checkRequestId(requestId, id);
    const before = await this.loadVersions(id, true);
    const record = this.rotations.get(id)?.get(request);
    if (record) {
      // This request rotated already (its answer may have been lost): report, do not rotate again.
      if (record.version !== undefined && before.ids.length >= record.version) return { version: record.version, rotated: false };
      if (record.version === undefined && before.ids.length > record.base) {
        record.version = record.base + 1;
        return { version: record.version, rotated: false };
      }
    }
    const mine: RotationRecord = { base: before.ids.length };
    this.remember(id, request, mine);
    try {
      // Rotate: a root key Key Protect generated needs no payload; 204 No Content.
      await this.request({ operation: 'rotate', keyId: id, method: 'POST', path: `/api/v2/keys/${id}/actions/rotate`, contentType: KEY_ACTION_TYPE, accept: KEY_ACTION_TYPE });
    } catch (err) {
      // A refusal means this request rotated nothing: forget it, so that a later version (a
      // policy's, say) is never taken for its work. After a retryable failure (a lost answer?)
      // the record stays, and the retry looks for the version it may have made.
      if (err instanceof KmsError && !err.retryable) this.rotations.get(id)?.delete(request);
      if (err instanceof KmsError && err.code === 'KEY_ROTATION_NOT_PERMITTED') {
        const allowed = await this.rotationAllowedAt(id, before);
        throw new KmsError(
          'KEY_ROTATION_NOT_PERMITTED',
          `key ${id} was rotated within the last hour (Key Protect allows one rotation per hour)${allowed ? `; it may be rotated again from ${allowed}` : ''}`,
          id,
          allowed,
        );
      }
      throw err;
    }
    const after = await this.loadVersions(id, true);
    if (after.ids.length <= mine.base) {
      throw new KmsError('KMS_UNAVAILABLE', `Key Protect accepted the rotation of key ${id} but does not list a new version yet; a retry of this request finds it`, id);
    }
    mine.version = mine.base + 1;
    return { version: mine.version, rotated: true };
  }

  async wrap(keyId: string, dek?: Buffer): Promise<WrapResult> {
    const id = checkKeyId(keyId);
    if (dek !== undefined) checkDek(dek, id);
    // Wrap: `plaintext` (base64) to wrap a given DEK; without it Key Protect generates one.
    const answer = await this.request({
      operation: 'wrap',
      keyId: id,
      method: 'POST',
      path: `/api/v2/keys/${id}/actions/wrap`,
      contentType: KEY_ACTION_TYPE,
      accept: KEY_ACTION_TYPE,
      body: dek ? { plaintext: Buffer.from(dek).toString('base64') } : {},
    });
    const out = this.parse(wrapAnswer, answer.body, 'wrap', id);
    const theDek = dek ?? dekOf(out.plaintext ?? '', id, 'KMS_UNAVAILABLE');
    try {
      const wdek = Buffer.from(ciphertextOf(Buffer.from(out.ciphertext, 'latin1'), id), 'latin1');
      const keyVersion = out.keyVersion ? await this.ordinalOf(id, out.keyVersion.id) : (await this.loadVersions(id, true)).ids.length;
      return { wdek, keyVersion, dek: theDek };
    } catch (err) {
      if (!dek) theDek.fill(0);
      throw err instanceof KmsError && err.code === 'CIPHERTEXT_INVALID' ? new KmsError('KMS_UNAVAILABLE', `Key Protect answered the wrap for key ${id} with an unusable ciphertext`, id) : err;
    }
  }

  async unwrap(keyId: string, wdek: Buffer): Promise<UnwrapResult> {
    const id = checkKeyId(keyId);
    return this.unwrapOne(id, ciphertextOf(wdek, id));
  }

  async rewrap(keyId: string, wdek: Buffer): Promise<RewrapResult> {
    const id = checkKeyId(keyId);
    return this.rewrapOne(id, ciphertextOf(wdek, id));
  }

  async unwrapBatch(keyId: string, wdeks: readonly Buffer[]): Promise<BatchResult<UnwrapResult>> {
    const id = checkKeyId(keyId);
    if (!Array.isArray(wdeks)) throw new KmsError('INVALID_INPUT', 'a batch of WDEKs must be an array', id);
    return this.eachBounded(id, wdeks, (ciphertext) => this.unwrapOne(id, ciphertext), (r) => r.dek.fill(0));
  }

  async rewrapBatch(keyId: string, wdeks: readonly Buffer[]): Promise<BatchResult<RewrapResult>> {
    const id = checkKeyId(keyId);
    if (!Array.isArray(wdeks)) throw new KmsError('INVALID_INPUT', 'a batch of WDEKs must be an array', id);
    return this.eachBounded(id, wdeks, (ciphertext) => this.rewrapOne(id, ciphertext));
  }

  async setRotationPolicy(keyId: string, policy: RotationPolicy | undefined): Promise<KeyMetadata> {
    const id = checkKeyId(keyId);
    let rotation: { enabled: boolean; interval_month: number } | undefined;
    if (policy === undefined) {
      const current = await this.readPolicy(id);
      // Nothing to remove; otherwise the policy is kept but switched off, as the console does.
      if (current && current.enabled !== false && current.interval_month !== undefined) rotation = { enabled: false, interval_month: current.interval_month };
    } else {
      rotation = { enabled: true, interval_month: checkPolicyMonths(policy, id) };
    }
    if (rotation) {
      // Set key policies: the policy collection envelope with one rotation policy.
      await this.request({
        operation: 'setPolicy',
        keyId: id,
        method: 'PUT',
        path: `/api/v2/keys/${id}/policies`,
        query: { policy: 'rotation' },
        contentType: POLICY_TYPE,
        accept: POLICY_TYPE,
        body: { metadata: { collectionType: POLICY_TYPE, collectionTotal: 1 }, resources: [{ type: POLICY_TYPE, rotation }] },
      });
    }
    return this.getKeyMetadata(id);
  }

  async disableKey(keyId: string): Promise<void> {
    await this.setState(checkKeyId(keyId), 'disable');
  }

  async enableKey(keyId: string): Promise<void> {
    await this.setState(checkKeyId(keyId), 'enable');
  }

  // -------------------------------------------------------------------------------------------

  private async setState(id: string, action: 'disable' | 'enable'): Promise<void> {
    try {
      await this.request({ operation: action, keyId: id, method: 'POST', path: `/api/v2/keys/${id}/actions/${action}`, contentType: KEY_ACTION_TYPE, accept: KEY_ACTION_TYPE });
    } catch (err) {
      // Key Protect refuses to disable a disabled key (or enable an active one) with 409
      // KEY_ACTION_INVALID_STATE_ERR; the port's disable and enable are idempotent.
      if (!(err instanceof KmsError && err.code === 'KEY_DISABLED')) throw err;
      const key = await this.readKey(id);
      if (key.state === (action === 'disable' ? 2 : 1)) return;
      throw new KmsError('INVALID_INPUT', `key ${id} cannot be ${action}d: Key Protect state ${key.state} (${action === 'enable' ? 'only a suspended key, state 2, can be enabled' : 'only an active key, state 1, can be disabled'})`, id);
    }
  }

  private async unwrapOne(id: string, ciphertext: string): Promise<UnwrapResult> {
    // Unwrap: `ciphertext` in; `plaintext` and the `keyVersion` that had wrapped it out (for a
    // retired version Key Protect adds a rewrapped ciphertext, which keyops leaves to rewrap).
    const answer = await this.request({ operation: 'unwrap', keyId: id, method: 'POST', path: `/api/v2/keys/${id}/actions/unwrap`, contentType: KEY_ACTION_TYPE, accept: KEY_ACTION_TYPE, body: { ciphertext } });
    const out = this.parse(unwrapAnswer, answer.body, 'unwrap', id);
    const dek = dekOf(out.plaintext, id, 'CIPHERTEXT_INVALID');
    try {
      return { dek, keyVersion: await this.ordinalOf(id, out.keyVersion.id) };
    } catch (err) {
      dek.fill(0);
      throw err;
    }
  }

  private async rewrapOne(id: string, ciphertext: string): Promise<RewrapResult> {
    // Rewrap: `ciphertext` in; the new `ciphertext`, its `rewrappedKeyVersion` and the original
    // `keyVersion` out. The DEK never leaves Key Protect.
    const answer = await this.request({ operation: 'rewrap', keyId: id, method: 'POST', path: `/api/v2/keys/${id}/actions/rewrap`, contentType: KEY_ACTION_TYPE, accept: KEY_ACTION_TYPE, body: { ciphertext } });
    const out = this.parse(rewrapAnswer, answer.body, 'rewrap', id);
    if (!BASE64.test(out.ciphertext) || out.ciphertext.length > MAX_WDEK) throw new KmsError('KMS_UNAVAILABLE', `Key Protect answered the rewrap for key ${id} with an unusable ciphertext`, id);
    const [previousVersion, keyVersion] = await Promise.all([this.ordinalOf(id, out.keyVersion.id), this.ordinalOf(id, out.rewrappedKeyVersion.id)]);
    return { wdek: Buffer.from(out.ciphertext, 'latin1'), keyVersion, previousVersion };
  }

  /** The port's batch form, one request per WDEK (Key Protect rewraps one at a time). */
  private eachBounded<T>(id: string, wdeks: readonly Buffer[], fn: (ciphertext: string) => Promise<T>, discard?: (r: T) => void): Promise<BatchResult<T>> {
    return eachBounded(wdeks, this.settings.concurrency, (wdek) => fn(ciphertextOf(wdek, id)), discard);
  }


  private remember(id: string, request: string, record: RotationRecord): void {
    let records = this.rotations.get(id);
    if (!records) this.rotations.set(id, (records = new Map<string, RotationRecord>()));
    records.delete(request);
    records.set(request, record);
    while (records.size > REMEMBERED_ROTATIONS) records.delete(records.keys().next().value!);
  }

  /** When Key Protect will take the next manual rotation: the last rotation + 1 h. */
  private async rotationAllowedAt(id: string, table: VersionTable): Promise<string | undefined> {
    let last = Date.parse(table.createdAt.at(-1) ?? '');
    try {
      const key = await this.readKey(id);
      const rotated = Date.parse(key.lastRotateDate ?? '');
      if (!Number.isNaN(rotated) && (Number.isNaN(last) || rotated > last)) last = rotated;
    } catch {
      // The version list's newest creation date stands in.
    }
    // Key Protect writes its dates to the second: one more second, so the time is never early.
    return Number.isNaN(last) ? undefined : isoSeconds(last + HOUR_MS + 1_000);
  }

  private date(value: string | undefined): string | undefined {
    if (!value) return undefined;
    const ms = Date.parse(value);
    return Number.isNaN(ms) ? undefined : isoSeconds(ms);
  }

  /** Key metadata: the key collection envelope with one key; a standard key is refused. */
  private async readKey(id: string): Promise<KeyResource> {
    const answer = await this.request({ operation: 'getKey', keyId: id, method: 'GET', path: `/api/v2/keys/${id}/metadata`, accept: KEY_TYPE });
    const key = this.parse(keyCollection, answer.body, 'getKey', id).resources[0]!;
    if (key.extractable === true) throw new KmsError('INVALID_INPUT', `key ${id} is a standard (extractable) key; keyops wraps DEKs only with root keys`, id);
    return key;
  }

  /** The key's rotation policy (`?policy=rotation`), or undefined when it has none. */
  private async readPolicy(id: string): Promise<{ enabled?: boolean; interval_month?: number } | undefined> {
    const answer = await this.request({ operation: 'getPolicy', keyId: id, method: 'GET', path: `/api/v2/keys/${id}/policies`, query: { policy: 'rotation' }, accept: POLICY_TYPE });
    return this.parse(policyCollection, answer.body, 'getPolicy', id).resources.find((r) => r.rotation)?.rotation;
  }

  /** The port's version of a Key Protect version id; reads the list again for an unknown one. */
  private async ordinalOf(id: string, versionId: string): Promise<number> {
    const known = this.versionTables.get(id)?.byId.get(versionId);
    if (known !== undefined) return known;
    // A load already under way may have started before this version existed: then one more.
    const shared = (await this.loadVersions(id, false)).byId.get(versionId);
    if (shared !== undefined) return shared;
    const fresh = (await this.loadVersions(id, true)).byId.get(versionId);
    if (fresh !== undefined) return fresh;
    throw new KmsError('KMS_UNAVAILABLE', `Key Protect named key version ${versionId} of key ${id}, which its version list does not hold`, id);
  }

  /** The version table, read again (`fresh`) or joined to a read under way. One read per key at a time otherwise. */
  private loadVersions(id: string, fresh: boolean): Promise<VersionTable> {
    const pending = this.versionLoads.get(id);
    if (pending && !fresh) return pending;
    const load = this.readVersions(id).finally(() => {
      if (this.versionLoads.get(id) === load) this.versionLoads.delete(id);
    });
    this.versionLoads.set(id, load);
    return load;
  }

  private async readVersions(id: string): Promise<VersionTable> {
    const listed: { id: string; creationDate: string }[] = [];
    for (let offset = 0; ; offset += VERSION_PAGE) {
      // List key versions: newest first, paged with limit/offset; allKeyStates so that a
      // disabled key answers too.
      const answer = await this.request({
        operation: 'versions',
        keyId: id,
        method: 'GET',
        path: `/api/v2/keys/${id}/versions`,
        query: { limit: String(VERSION_PAGE), offset: String(offset), totalCount: 'true', allKeyStates: 'true' },
        accept: VERSION_TYPE,
      });
      const page = this.parse(versionCollection, answer.body, 'versions', id);
      listed.push(...page.resources);
      const total = page.metadata?.totalCount;
      if (page.resources.length < VERSION_PAGE || (total !== undefined && listed.length >= total)) break;
    }
    const entries = listed.map((v, i) => ({ ...v, at: Date.parse(v.creationDate), i }));
    if (entries.length === 0 || entries.some((e) => Number.isNaN(e.at)) || new Set(entries.map((e) => e.id)).size !== entries.length) {
      throw new KmsError('KMS_UNAVAILABLE', `Key Protect listed no usable versions for key ${id}`, id);
    }
    // Oldest first; equal creation dates keep the list's order (newest first), reversed.
    entries.sort((a, b) => a.at - b.at || b.i - a.i);
    const table: VersionTable = { ids: entries.map((e) => e.id), createdAt: entries.map((e) => isoSeconds(e.at)), byId: new Map(entries.map((e, i) => [e.id, i + 1])) };
    const cached = this.versionTables.get(id);
    // Versions are only ever added: never replace a table with an older reading.
    if (!cached || cached.ids.length <= table.ids.length) this.versionTables.set(id, table);
    return table;
  }

  private parse<T>(schema: z.ZodType<T>, body: unknown, operation: Operation, keyId?: string): T {
    const parsed = schema.safeParse(body);
    if (!parsed.success) {
      const where = parsed.error.issues[0]?.path.join('.') || '(body)';
      throw new KmsError('KMS_UNAVAILABLE', `Key Protect answered ${operation}${keyId ? ` of key ${keyId}` : ''} in an unexpected shape (${where})`, keyId);
    }
    return parsed.data;
  }

  // ------------------------------------------------------------------------------------------
  // HTTP and IAM

  /** One API call: a cached token; on 401 one more try with a fresh token, then KMS_AUTH_FAILED. */
  private async request(call: Call): Promise<Answer> {
    let token = await this.bearer();
    let answer = await this.send(call, token);
    if (answer.status === 401) {
      if (this.token?.value === token) this.token = undefined;
      token = await this.bearer();
      answer = await this.send(call, token);
    }
    if (answer.status >= 200 && answer.status < 300) return answer;
    throw kmsErrorFor(call.operation, call.keyId, answer.status, answer.body, answer.retryAfter, this.now());
  }

  private async send(call: Call, token: string): Promise<Answer> {
    const url = new URL(`${this.base}${call.path}`);
    for (const [k, v] of Object.entries(call.query ?? {})) url.searchParams.set(k, v);
    const headers: Record<string, string> = {
      accept: call.accept,
      authorization: `Bearer ${token}`,
      'bluemix-instance': this.settings.instanceId,
      'correlation-id': randomUUID(),
    };
    if (call.contentType) headers['content-type'] = call.contentType;
    if (call.prefer) headers.prefer = call.prefer;
    const where = `Key Protect ${call.operation}${call.keyId ? ` of key ${call.keyId}` : ''}`;
    return this.fetchJson(url, { method: call.method, headers, ...(call.body !== undefined ? { body: JSON.stringify(call.body) } : {}) }, where, call.keyId);
  }

  /** fetch with a timeout; network failures are KMS_UNAVAILABLE, named by their code only. */
  private async fetchJson(url: URL, init: RequestInit, where: string, keyId?: string): Promise<Answer> {
    let res: Response;
    let text: string;
    try {
      res = await fetch(url, { ...init, signal: AbortSignal.timeout(this.settings.requestTimeoutMs) });
      text = await res.text();
    } catch (err) {
      const e = err as { name?: string; cause?: { code?: unknown; message?: unknown } };
      const cause = typeof e.cause?.code === 'string' ? e.cause.code : typeof e.cause?.message === 'string' ? sanitize(e.cause.message) : undefined;
      const why = e.name === 'TimeoutError' ? `no answer within ${this.settings.requestTimeoutMs} ms` : (cause ?? e.name ?? 'network error');
      throw new KmsError('KMS_UNAVAILABLE', `${where} failed: ${why} (${url.host})`, keyId);
    }
    let body: unknown;
    if (text.length > 0) {
      try {
        body = JSON.parse(text);
      } catch {
        if (res.ok) throw new KmsError('KMS_UNAVAILABLE', `${where}: the answer (HTTP ${res.status}) is not JSON`, keyId);
      }
    }
    return { status: res.status, body, retryAfter: res.headers.get('retry-after') };
  }

  /** A token valid for a while yet; one exchange at a time, shared by every caller. */
  private bearer(): Promise<string> {
    if (this.token && this.now() < this.token.refreshAt) return Promise.resolve(this.token.value);
    this.tokenExchange ??= this.exchange().finally(() => {
      this.tokenExchange = undefined;
    });
    return this.tokenExchange;
  }

  /** IAM: POST {iam}/identity/token, grant_type=urn:ibm:params:oauth:grant-type:apikey. */
  private async exchange(): Promise<string> {
    const apiKey = await this.apiKey();
    const started = this.now();
    const form = new URLSearchParams({ grant_type: 'urn:ibm:params:oauth:grant-type:apikey', apikey: apiKey });
    const answer = await this.fetchJson(
      new URL(`${this.iam}/identity/token`),
      { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' }, body: form.toString() },
      'IBM Cloud IAM token exchange',
    );
    if (answer.status !== 200) {
      const said = iamErrorBody.safeParse(answer.body);
      const detail = said.success ? [said.data.errorCode, sanitize(said.data.errorMessage)].filter(Boolean).join(' ') : '';
      const code: KmsErrorCode = answer.status === 429 ? 'KMS_THROTTLED' : answer.status >= 500 || answer.status === 408 ? 'KMS_UNAVAILABLE' : 'KMS_AUTH_FAILED';
      throw new KmsError(
        code,
        `IBM Cloud IAM refused the API key from ${this.keySource()}: HTTP ${answer.status}${detail ? ` ${detail}` : ''}`,
        undefined,
        code === 'KMS_THROTTLED' ? retryAfterFrom(answer.retryAfter, this.now()) : undefined,
      );
    }
    const parsed = tokenAnswer.safeParse(answer.body);
    if (!parsed.success) throw new KmsError('KMS_UNAVAILABLE', 'IBM Cloud IAM answered the token exchange without access_token and expires_in');
    // Expiry by our own clock (from before the request), refreshed a minute (at most a fifth of
    // the lifetime) early so that no request leaves with a token about to expire.
    const lifetime = parsed.data.expires_in * 1000;
    this.token = { value: parsed.data.access_token, refreshAt: started + lifetime - Math.min(60_000, lifetime / 5) };
    return parsed.data.access_token;
  }

  private keySource(): string {
    return this.settings.apiKeyFile !== undefined ? `the file ${this.settings.apiKeyFile}` : `the variable ${this.settings.apiKeyEnv}`;
  }

  /** The API key, read afresh (a file may be replaced); KMS_AUTH_FAILED naming where, never what. */
  private async apiKey(): Promise<string> {
    let value: string | undefined;
    if (this.settings.apiKeyFile !== undefined) {
      try {
        value = (await readFile(this.settings.apiKeyFile, 'utf8')).trim();
      } catch (err) {
        throw new KmsError('KMS_AUTH_FAILED', `cannot read the Key Protect API key file ${this.settings.apiKeyFile}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
      }
    } else {
      value = process.env[this.settings.apiKeyEnv!]?.trim();
    }
    if (!value) throw new KmsError('KMS_AUTH_FAILED', `no Key Protect API key in ${this.keySource()}`);
    return value;
  }
}
