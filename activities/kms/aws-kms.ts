/**
 * AWS KMS behind the KMS port (issue 14), with `@aws-sdk/client-kms`. How AWS maps onto a port
 * modelled on Key Protect:
 *
 * - **Key ids.** The AWS KeyId (a UUID) is the port's key id. Aliases and ARNs are not accepted:
 *   another layer says which KMS instance holds a key.
 * - **Names.** `createKey` makes a SYMMETRIC_DEFAULT / ENCRYPT_DECRYPT key whose tag `keyops:name`
 *   carries the name (its Description repeats it for the console). No alias: aliases are unique
 *   per account and region and allow few characters, while key names are neither. A key made
 *   outside keyops is named by its Description, or else by its id.
 * - **Versions.** AWS hides which backing key (key material) wrapped what. keyops numbers them:
 *   version 1 is the material the key was created with, and each completed rotation listed by
 *   ListKeyRotations (automatic or on demand, ordered by RotationDate) adds one, so the current
 *   version is the number of rotations + 1. AWS keeps every older material for ever and decrypts
 *   with whichever one a ciphertext names, transparently: "retired" versions still unwrap, as the
 *   port wants, and nothing in AWS refuses them.
 * - **WDEKs** are an envelope (below) around AWS's CiphertextBlob that records the version
 *   keyops read just before the wrap or rewrap. That number is keyops' record, not AWS's: a
 *   rotation that completes between the reading and the call makes it one behind (never ahead),
 *   which only means the WDEK is rewrapped again after the next rotation. The version is bound
 *   to the ciphertext as encryption context, so an altered version fails to decrypt.
 * - **Rotation.** RotateKeyOnDemand, which AWS completes in the background: the call waits until
 *   ListKeyRotations shows it (bounded; past the bound it fails retryably and a retry waits
 *   again). AWS has no request ids, so the request id and the version it is to create are kept in
 *   the key's tag `keyops:rotation`, written before the rotation is asked for: a retry finds it
 *   and does not rotate again. The port's one-rotation-per-hour rule is kept here (AWS's own
 *   limit is a small number of on-demand rotations per key, ever).
 * - **Policy.** EnableKeyRotation with RotationPeriodInDays = intervalMonths × 30 (AWS accepts
 *   90 to 2560 days, so 3 to 12 months), DisableKeyRotation, GetKeyRotationStatus.
 * - **Disable.** DisableKey / EnableKey; any KeyState other than Enabled is `disabled` and refuses
 *   wrap, unwrap and rewrap with KEY_DISABLED. The state is read (DescribeKey) once per call or
 *   batch, so the port's rule holds whatever the server does with a disabled key's ciphertexts.
 * - **Batches.** AWS has no batch API: one Decrypt or ReEncrypt per WDEK, at most `concurrency`
 *   in flight, against one reading of the key.
 *
 * Credentials come only from the SDK's default provider chain (environment, shared profile, SSO,
 * web identity, container or instance role); options refuse inline secrets. No error message
 * built here carries key material or plaintext, and the SDK client is given no logger.
 */
import {
  CreateKeyCommand,
  DecryptCommand,
  DescribeKeyCommand,
  DisableKeyCommand,
  DisableKeyRotationCommand,
  EnableKeyCommand,
  EnableKeyRotationCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  GetKeyRotationStatusCommand,
  type GetKeyRotationStatusResponse,
  KMSClient,
  type KeyMetadata as AwsKeyMetadata,
  ListKeyRotationsCommand,
  ListResourceTagsCommand,
  ReEncryptCommand,
  RotateKeyOnDemandCommand,
  type RotationsListEntry,
  TagResourceCommand,
  type Tag,
} from '@aws-sdk/client-kms';
import { createHash } from 'node:crypto';
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
import { checkBatch, checkDek, checkName, checkPolicyMonths, checkRequestId, quote } from './port-input';

// ---------------------------------------------------------------------------------------------
// Options

const REGION = /^[a-z]{2}(-[a-z]+)+-\d{1,2}$/;
/** An AWS KeyId. Not an alias, ARN or `<instance>:<id>`: the router strips its prefix first. */
const AWS_KEY_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** Names that would put a secret into the options: credentials come from the provider chain. */
const SECRET_OPTIONS = ['credentials', 'accessKeyId', 'secretAccessKey', 'sessionToken', 'secretKey', 'password', 'token'];

export const awsKmsOptionsSchema = z.strictObject({
  /** The key's region, e.g. eu-west-1. */
  region: z.string().regex(REGION, 'must be an AWS region such as eu-west-1'),
  /** A VPC endpoint, FIPS endpoint or an emulator; the SDK's regional endpoint otherwise. */
  endpoint: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }).optional(),
  /** A named profile of the shared config files (as AWS_PROFILE), read by the default chain. */
  profile: z.string().min(1).max(128).optional(),
  /** Requests in flight at once within a batch call (AWS has no batch API). */
  concurrency: z.number().int().min(1).max(256).default(16),
  /** Attempts per request, including the SDK's own retries of throttling and 5xx. */
  maxAttempts: z.number().int().min(1).max(10).default(3),
  /** Per request: connection and response timeouts. */
  requestTimeoutMs: z.number().int().min(100).max(300_000).default(15_000),
  /** How long rotateKey waits for AWS to complete the on-demand rotation it asked for. */
  rotationWaitMs: z.number().int().min(0).max(600_000).default(20_000),
  rotationPollMs: z.number().int().min(10).max(60_000).default(1_000),
  /** The port's limit on manual rotations (Key Protect's one per hour); 0 lifts it. */
  minRotationIntervalMs: z.number().int().min(0).default(3_600_000),
});

export type AwsKmsOptions = z.input<typeof awsKmsOptionsSchema>;
type Settings = z.output<typeof awsKmsOptionsSchema>;

/** Validated options, or INVALID_INPUT listing every problem as `field: problem`. */
export function parseAwsKmsOptions(options: unknown): Settings {
  if (typeof options === 'object' && options !== null) {
    const secret = SECRET_OPTIONS.find((name) => Object.hasOwn(options, name));
    if (secret) {
      throw new KmsError(
        'INVALID_INPUT',
        `AWS KMS options: ${secret}: secrets are never given inline; credentials come from the SDK's default provider chain (AWS_* environment, a profile, SSO, a role)`,
      );
    }
  }
  const parsed = awsKmsOptionsSchema.safeParse(options);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(options)'}: ${i.message}`);
    throw new KmsError('INVALID_INPUT', `AWS KMS options: ${problems.join('; ')}`);
  }
  return parsed.data;
}

// ---------------------------------------------------------------------------------------------
// The WDEK envelope

/**
 * keyops' AWS WDEK, format 1:
 *
 *   offset  size  field
 *   0       3     magic "KOA"
 *   3       1     format (1)
 *   4       4     keyops version of the root key at wrap time, unsigned 32-bit big-endian
 *   8       n     AWS KMS CiphertextBlob (n >= 1)
 *
 * The blob is made with the encryption context {"keyops:wdek": "1/v<version>"}, so AWS decrypts
 * it only with the version the header states.
 */
export const AWS_WDEK_FORMAT = 1;
const AWS_WDEK_MAGIC = Buffer.from('KOA', 'latin1');
const AWS_WDEK_HEADER = 8;
/** AWS's limit on a CiphertextBlob. */
const MAX_BLOB = 6144;
const MAX_VERSION = 0xffff_ffff;
export const DEK_LENGTH = 32;
const CONTEXT_KEY = 'keyops:wdek';

export function encodeAwsWdek(version: number, blob: Uint8Array): Buffer {
  if (!Number.isInteger(version) || version < 1 || version > MAX_VERSION) throw new Error(`bad WDEK version ${version}`);
  const out = Buffer.allocUnsafe(AWS_WDEK_HEADER + blob.length);
  AWS_WDEK_MAGIC.copy(out, 0);
  out[3] = AWS_WDEK_FORMAT;
  out.writeUInt32BE(version, 4);
  out.set(blob, AWS_WDEK_HEADER);
  return out;
}

/** The version and blob of an envelope (a view, not a copy); CIPHERTEXT_INVALID if malformed. */
export function decodeAwsWdek(wdek: unknown, keyId?: string): { version: number; blob: Buffer } {
  const invalid = (why: string) => new KmsError('CIPHERTEXT_INVALID', `the WDEK is not valid${keyId ? ` for key ${keyId}` : ''}: ${why}`, keyId);
  if (!(wdek instanceof Uint8Array)) throw invalid('it is not a byte buffer');
  const buf = Buffer.isBuffer(wdek) ? wdek : Buffer.from(wdek.buffer, wdek.byteOffset, wdek.byteLength);
  if (buf.length <= AWS_WDEK_HEADER || buf.length > AWS_WDEK_HEADER + MAX_BLOB) throw invalid(`it is ${buf.length} bytes long`);
  if (!buf.subarray(0, 3).equals(AWS_WDEK_MAGIC)) throw invalid('it does not start with the AWS KMS WDEK magic bytes');
  if (buf[3] !== AWS_WDEK_FORMAT) throw invalid(`unknown WDEK format ${buf[3]}`);
  const version = buf.readUInt32BE(4);
  if (version < 1) throw invalid('it names version 0');
  return { version, blob: buf.subarray(AWS_WDEK_HEADER) };
}

const encryptionContext = (version: number): Record<string, string> => ({ [CONTEXT_KEY]: `${AWS_WDEK_FORMAT}/v${version}` });

// ---------------------------------------------------------------------------------------------
// Errors

/** AWS error names (the `__type` of the response) and the port's code for each. */
const ERROR_CODES: Readonly<Record<string, KmsErrorCode>> = {
  NotFoundException: 'KEY_NOT_FOUND',
  DisabledException: 'KEY_DISABLED',
  KMSInvalidStateException: 'KEY_DISABLED',
  InvalidCiphertextException: 'CIPHERTEXT_INVALID',
  /** Decrypt with KeyId: the ciphertext belongs to another key. */
  IncorrectKeyException: 'CIPHERTEXT_INVALID',
  ThrottlingException: 'KMS_THROTTLED',
  LimitExceededException: 'KMS_THROTTLED',
  /** RotateKeyOnDemand while an automatic rotation runs or is due within 20 minutes. */
  ConflictException: 'KEY_ROTATION_NOT_PERMITTED',
  AccessDeniedException: 'KMS_AUTH_FAILED',
  UnrecognizedClientException: 'KMS_AUTH_FAILED',
  InvalidSignatureException: 'KMS_AUTH_FAILED',
  IncompleteSignature: 'KMS_AUTH_FAILED',
  IncompleteSignatureException: 'KMS_AUTH_FAILED',
  MissingAuthenticationToken: 'KMS_AUTH_FAILED',
  MissingAuthenticationTokenException: 'KMS_AUTH_FAILED',
  ExpiredTokenException: 'KMS_AUTH_FAILED',
  InvalidClientTokenId: 'KMS_AUTH_FAILED',
  /** The SDK's own: no credentials anywhere in the default chain. */
  CredentialsProviderError: 'KMS_AUTH_FAILED',
  ValidationException: 'INVALID_INPUT',
  InvalidKeyUsageException: 'INVALID_INPUT',
  UnsupportedOperationException: 'INVALID_INPUT',
  InvalidArnException: 'INVALID_INPUT',
  InvalidGrantTokenException: 'INVALID_INPUT',
  KMSInternalException: 'KMS_UNAVAILABLE',
  DependencyTimeoutException: 'KMS_UNAVAILABLE',
  KeyUnavailableException: 'KMS_UNAVAILABLE',
  CustomKeyStoreInvalidStateException: 'KMS_UNAVAILABLE',
  ServiceUnavailableException: 'KMS_UNAVAILABLE',
  InternalFailure: 'KMS_UNAVAILABLE',
  TimeoutError: 'KMS_UNAVAILABLE',
  RequestTimeout: 'KMS_UNAVAILABLE',
  RequestTimeoutException: 'KMS_UNAVAILABLE',
  AbortError: 'KMS_UNAVAILABLE',
};

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNABORTED', 'EPROTO']);

interface AwsErrorLike {
  name?: unknown;
  message?: unknown;
  code?: unknown;
  $fault?: unknown;
  $metadata?: { httpStatusCode?: number };
  $response?: { headers?: Record<string, string | undefined> };
}

/** When to try again, from a Retry-After header (seconds or an HTTP date), if AWS sent one. */
function retryAfterOf(err: AwsErrorLike, now: number): string | undefined {
  const headers = err.$response?.headers ?? {};
  const raw = Object.entries(headers).find(([k]) => k.toLowerCase() === 'retry-after')?.[1];
  if (!raw) return undefined;
  const seconds = Number(raw);
  if (Number.isFinite(seconds) && seconds >= 0) return new Date(now + seconds * 1000).toISOString();
  const at = Date.parse(raw);
  return Number.isNaN(at) ? undefined : new Date(at).toISOString();
}

/**
 * The port's error for what the SDK threw in the AWS operation `operation`. Only the AWS error's
 * name, status and message (which never holds plaintext) go into it; bugs that are neither AWS
 * nor network errors are returned unchanged.
 */
export function toKmsError(err: unknown, operation: string, keyId?: string, now = Date.now()): Error {
  if (err instanceof KmsError) return err;
  if (!(err instanceof Error)) return new Error(String(err));
  const e = err as AwsErrorLike & Error;
  const name = String(e.name);
  const status = e.$metadata?.httpStatusCode;
  const networkCode = typeof e.code === 'string' && NETWORK_CODES.has(e.code) ? e.code : undefined;
  let code: KmsErrorCode | undefined = ERROR_CODES[name];
  if (!code && networkCode) code = 'KMS_UNAVAILABLE';
  if (!code && status !== undefined) {
    if (status === 429) code = 'KMS_THROTTLED';
    else if (status === 401 || status === 403) code = 'KMS_AUTH_FAILED';
    else if (status >= 500) code = 'KMS_UNAVAILABLE';
    else if (status >= 400) code = 'INVALID_INPUT';
  }
  if (!code && e.$fault === 'server') code = 'KMS_UNAVAILABLE';
  if (!code) return err;
  // LimitExceededException from RotateKeyOnDemand is the per-key cap on on-demand rotations:
  // retrying never helps, so it is not a throttle there.
  if (name === 'LimitExceededException' && operation === 'RotateKeyOnDemand') code = 'KEY_ROTATION_NOT_PERMITTED';
  const said = typeof e.message === 'string' && e.message !== name && e.message !== 'UnknownError' ? e.message.slice(0, 300) : '';
  const label = networkCode ?? name;
  const message = `AWS KMS ${operation}${keyId ? ` for key ${keyId}` : ''} failed: ${label}${status ? ` (HTTP ${status})` : ''}${said ? `: ${said}` : ''}`;
  return new KmsError(code, message, keyId, code === 'KMS_THROTTLED' ? retryAfterOf(e, now) : undefined);
}

// ---------------------------------------------------------------------------------------------
// Input checks

 
const NAME_TAG = 'keyops:name';
const ROTATION_TAG = 'keyops:rotation';
/** AWS's default automatic rotation period, used when a status omits it. */
const DEFAULT_PERIOD_DAYS = 365;
const DAYS_PER_MONTH = 30;
const MIN_PERIOD_DAYS = 90;
const MAX_PERIOD_DAYS = 2560;


function checkKeyId(keyId: unknown): string {
  if (typeof keyId !== 'string' || !AWS_KEY_ID.test(keyId)) throw new KmsError('INVALID_INPUT', `key id ${quote(keyId)} is not an AWS KMS key id (a UUID)`);
  return keyId.toLowerCase();
}





/** The port's policy as AWS days; AWS allows 90 to 2560, so 3 to 12 months of 30 days. */
export function policyToDays(policy: RotationPolicy, keyId: string): number {
  const months = checkPolicyMonths(policy, keyId);
  const days = months * DAYS_PER_MONTH;
  if (days < MIN_PERIOD_DAYS) {
    throw new KmsError('INVALID_INPUT', `AWS KMS rotates automatically every ${MIN_PERIOD_DAYS} to ${MAX_PERIOD_DAYS} days: intervalMonths ${months} (${days} days) is too short; use 3 to 12`, keyId);
  }
  return days;
}

/** AWS's status as the port's policy: months of 30 days, rounded (AWS's default 365 days is 12). */
export function policyFromStatus(status: GetKeyRotationStatusResponse): RotationPolicy | undefined {
  if (!status.KeyRotationEnabled) return undefined;
  const days = status.RotationPeriodInDays ?? DEFAULT_PERIOD_DAYS;
  return { intervalMonths: Math.max(1, Math.round(days / DAYS_PER_MONTH)) };
}

/** The rotation tag's value: "v<version> <request id>", the id hashed when it would not fit. */
function rotationTagValue(version: number, requestId: string): string {
  const plain = `v${version} ${requestId}`;
  return plain.length <= 256 ? plain : `v${version} sha256:${createHash('sha256').update(requestId).digest('base64url')}`;
}

function parseRotationTag(value: string | undefined): { version: number; request: string } | undefined {
  const m = value === undefined ? null : /^v(\d{1,10}) (.+)$/s.exec(value);
  return m ? { version: Number(m[1]), request: m[2]! } : undefined;
}

const sameRequest = (tagRequest: string, requestId: string, version: number) => rotationTagValue(version, requestId) === `v${version} ${tagRequest}`;

// ---------------------------------------------------------------------------------------------
// The adapter

/** One reading of a key: its AWS metadata and, when asked for, its completed rotations in order. */
interface Reading {
  keyId: string;
  meta: AwsKeyMetadata;
  rotations: RotationsListEntry[];
  /** Rotations + 1 (only meaningful when the rotations were read). */
  current: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Copies the SDK's plaintext into a Buffer of our own and zeroes the SDK's. */
function takePlaintext(plain: Uint8Array | undefined, keyId: string): Buffer {
  if (!plain || plain.length !== DEK_LENGTH) {
    plain?.fill(0);
    throw new KmsError('CIPHERTEXT_INVALID', `the WDEK of key ${keyId} did not decrypt to a ${DEK_LENGTH}-byte DEK`, keyId);
  }
  const dek = Buffer.from(plain);
  plain.fill(0);
  return dek;
}

export class AwsKms implements KeyManagementService {
  private readonly settings: Settings;
  private readonly now: () => number;

  /** Use `AwsKms.create`; this form takes a ready client (tests stub its HTTP handler). */
  constructor(
    private readonly client: KMSClient,
    options: Omit<AwsKmsOptions, 'region' | 'endpoint'> & { region?: string; now?: () => number } = {},
  ) {
    const { now, ...rest } = options;
    this.settings = parseAwsKmsOptions({ region: 'us-east-1', ...rest });
    this.now = now ?? Date.now;
  }

  /** A client for the region (and endpoint) with the SDK's default credential provider chain. */
  static create(options: AwsKmsOptions): AwsKms {
    const settings = parseAwsKmsOptions(options);
    const client = new KMSClient({
      region: settings.region,
      ...(settings.endpoint ? { endpoint: settings.endpoint } : {}),
      ...(settings.profile ? { profile: settings.profile } : {}),
      maxAttempts: settings.maxAttempts,
      requestHandler: { connectionTimeout: Math.min(settings.requestTimeoutMs, 5_000), requestTimeout: settings.requestTimeoutMs },
    });
    return new AwsKms(client, settings);
  }

  close(): void {
    this.client.destroy();
  }

  /** `input.kms` (which instance) is the router's concern: this adapter is one instance. */
  async createKey(input: { name: string; kms?: string }): Promise<KeyMetadata> {
    const name = checkName(input?.name);
    const created = await this.send('CreateKey', undefined, () =>
      this.client.send(
        new CreateKeyCommand({
          KeySpec: 'SYMMETRIC_DEFAULT',
          KeyUsage: 'ENCRYPT_DECRYPT',
          Description: `keyops root key ${JSON.stringify(name)}`,
          Tags: [{ TagKey: NAME_TAG, TagValue: name }],
        }),
      ),
    );
    const meta = created.KeyMetadata;
    if (!meta?.KeyId) throw new KmsError('KMS_UNAVAILABLE', 'AWS KMS CreateKey answered without a key id');
    // A new key has no rotations and automatic rotation off.
    return this.toMetadata({ keyId: meta.KeyId, meta, rotations: [], current: 1 }, name, undefined, undefined);
  }

  async getKeyMetadata(keyId: string): Promise<KeyMetadata> {
    const id = checkKeyId(keyId);
    const [reading, tags, status] = await Promise.all([this.read(id, true), this.tags(id), this.rotationStatus(id)]);
    return this.toMetadata(reading, tags.get(NAME_TAG), tags.get(ROTATION_TAG), status);
  }

  async rotateKey(keyId: string, requestId: string): Promise<RotateResult> {
    const id = checkKeyId(keyId);
    const request = checkRequestId(requestId, id);
    const [reading, tags, status] = await Promise.all([this.read(id, true), this.tags(id), this.rotationStatus(id)]);
    this.requireEnabled(reading);
    const claim = parseRotationTag(tags.get(ROTATION_TAG));
    const ours = claim !== undefined && sameRequest(claim.request, request, claim.version);
    if (ours && claim.version <= reading.current) return { version: claim.version, rotated: false };
    if (ours && claim.version === reading.current + 1 && status.OnDemandRotationStartDate) {
      // An earlier attempt asked for this rotation and AWS is still carrying it out.
      await this.awaitRotation(id, claim.version);
      return { version: claim.version, rotated: false };
    }
    if (status.OnDemandRotationStartDate) {
      throw new KmsError(
        'KEY_ROTATION_NOT_PERMITTED',
        `key ${id} has an on-demand rotation in progress since ${status.OnDemandRotationStartDate.toISOString()} that keyops did not ask for in this request`,
        id,
      );
    }
    const last = reading.rotations.at(-1)?.RotationDate;
    if (last && this.settings.minRotationIntervalMs > 0) {
      const allowedMs = last.getTime() + this.settings.minRotationIntervalMs;
      if (this.now() < allowedMs) {
        const allowed = new Date(allowedMs).toISOString();
        throw new KmsError('KEY_ROTATION_NOT_PERMITTED', `key ${id} was last rotated at ${last.toISOString()}; it may be rotated again from ${allowed}`, id, allowed);
      }
    }
    const version = reading.current + 1;
    // The claim first: a retry after a lost answer finds it and does not rotate twice.
    await this.send('TagResource', id, () =>
      this.client.send(new TagResourceCommand({ KeyId: id, Tags: [{ TagKey: ROTATION_TAG, TagValue: rotationTagValue(version, request) }] })),
    );
    await this.send('RotateKeyOnDemand', id, () => this.client.send(new RotateKeyOnDemandCommand({ KeyId: id })));
    await this.awaitRotation(id, version);
    return { version, rotated: true };
  }

  async wrap(keyId: string, dek?: Buffer): Promise<WrapResult> {
    const id = checkKeyId(keyId);
    if (dek !== undefined) checkDek(dek, id);
    const reading = this.requireEnabled(await this.read(id, true));
    const version = reading.current;
    const EncryptionContext = encryptionContext(version);
    if (dek) {
      const out = await this.send('Encrypt', id, () => this.client.send(new EncryptCommand({ KeyId: id, Plaintext: dek, EncryptionContext })));
      return { wdek: encodeAwsWdek(version, this.blob(out.CiphertextBlob, id)), keyVersion: version, dek };
    }
    const out = await this.send('GenerateDataKey', id, () =>
      this.client.send(new GenerateDataKeyCommand({ KeyId: id, KeySpec: 'AES_256', EncryptionContext })),
    );
    const plain = takePlaintext(out.Plaintext, id);
    return { wdek: encodeAwsWdek(version, this.blob(out.CiphertextBlob, id)), keyVersion: version, dek: plain };
  }

  async unwrap(keyId: string, wdek: Buffer): Promise<UnwrapResult> {
    const id = checkKeyId(keyId);
    const envelope = decodeAwsWdek(wdek, id);
    // The state and the decryption at once: one round trip; the DEK is dropped if disabled.
    // What the key's state says comes first: a disabled key is KEY_DISABLED whatever Decrypt did.
    const [reading, result] = await Promise.allSettled([this.read(id, false), this.decrypt(id, envelope)]);
    try {
      if (reading.status === 'rejected') throw reading.reason;
      this.requireEnabled(reading.value);
      if (result.status === 'rejected') throw result.reason;
      return result.value;
    } catch (err) {
      if (result.status === 'fulfilled') result.value.dek.fill(0);
      throw err;
    }
  }

  async rewrap(keyId: string, wdek: Buffer): Promise<RewrapResult> {
    const id = checkKeyId(keyId);
    const envelope = decodeAwsWdek(wdek, id);
    const reading = this.requireEnabled(await this.read(id, true));
    return this.reEncrypt(id, envelope, reading.current);
  }

  async unwrapBatch(keyId: string, wdeks: readonly Buffer[]): Promise<BatchResult<UnwrapResult>> {
    const id = checkKeyId(keyId);
    checkBatch(wdeks, id);
    this.requireEnabled(await this.read(id, false));
    const results = await this.eachBounded(id, wdeks, (envelope) => this.decrypt(id, envelope), (r) => r.dek.fill(0));
    return results;
  }

  async rewrapBatch(keyId: string, wdeks: readonly Buffer[]): Promise<BatchResult<RewrapResult>> {
    const id = checkKeyId(keyId);
    checkBatch(wdeks, id);
    const reading = this.requireEnabled(await this.read(id, true));
    return this.eachBounded(id, wdeks, (envelope) => this.reEncrypt(id, envelope, reading.current));
  }

  async setRotationPolicy(keyId: string, policy: RotationPolicy | undefined): Promise<KeyMetadata> {
    const id = checkKeyId(keyId);
    if (policy === undefined) {
      await this.send('DisableKeyRotation', id, () => this.client.send(new DisableKeyRotationCommand({ KeyId: id })));
    } else {
      const days = policyToDays(policy, id);
      await this.send('EnableKeyRotation', id, () => this.client.send(new EnableKeyRotationCommand({ KeyId: id, RotationPeriodInDays: days })));
    }
    return this.getKeyMetadata(id);
  }

  async disableKey(keyId: string): Promise<void> {
    const id = checkKeyId(keyId);
    await this.send('DisableKey', id, () => this.client.send(new DisableKeyCommand({ KeyId: id })));
  }

  async enableKey(keyId: string): Promise<void> {
    const id = checkKeyId(keyId);
    await this.send('EnableKey', id, () => this.client.send(new EnableKeyCommand({ KeyId: id })));
  }

  // -------------------------------------------------------------------------------------------

  /** One SDK call, its failure turned into the port's error. */
  private async send<T>(operation: string, keyId: string | undefined, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (err) {
      throw toKmsError(err, operation, keyId, this.now());
    }
  }

  private blob(blob: Uint8Array | undefined, keyId: string): Uint8Array {
    if (!blob || blob.length === 0 || blob.length > MAX_BLOB) throw new KmsError('KMS_UNAVAILABLE', `AWS KMS answered for key ${keyId} without a usable CiphertextBlob`, keyId);
    return blob;
  }

  /** DescribeKey and, with `versions`, every completed rotation (ListKeyRotations, all pages). */
  private async read(keyId: string, versions: boolean): Promise<Reading> {
    const [described, rotations] = await Promise.all([
      this.send('DescribeKey', keyId, () => this.client.send(new DescribeKeyCommand({ KeyId: keyId }))),
      versions ? this.listRotations(keyId) : Promise.resolve([]),
    ]);
    const meta = described.KeyMetadata;
    if (!meta) throw new KmsError('KMS_UNAVAILABLE', `AWS KMS DescribeKey answered without metadata for key ${keyId}`, keyId);
    if (meta.KeySpec !== undefined && meta.KeySpec !== 'SYMMETRIC_DEFAULT') {
      throw new KmsError('INVALID_INPUT', `key ${keyId} is a ${meta.KeySpec} key; keyops wraps DEKs only with SYMMETRIC_DEFAULT keys`, keyId);
    }
    return { keyId, meta, rotations, current: rotations.length + 1 };
  }

  private async listRotations(keyId: string): Promise<RotationsListEntry[]> {
    const all: RotationsListEntry[] = [];
    let marker: string | undefined;
    do {
      const page = await this.send('ListKeyRotations', keyId, () =>
        this.client.send(new ListKeyRotationsCommand({ KeyId: keyId, Limit: 1000, ...(marker ? { Marker: marker } : {}) })),
      );
      all.push(...(page.Rotations ?? []));
      marker = page.Truncated ? page.NextMarker : undefined;
    } while (marker);
    // Completed rotations only (an imported material pending rotation has no date), oldest first.
    return all
      .filter((r) => r.RotationDate instanceof Date)
      .map((r, i) => ({ r, i }))
      .sort((a, b) => a.r.RotationDate!.getTime() - b.r.RotationDate!.getTime() || a.i - b.i)
      .map(({ r }) => r);
  }

  private async tags(keyId: string): Promise<Map<string, string>> {
    const tags = new Map<string, string>();
    let marker: string | undefined;
    do {
      const page = await this.send('ListResourceTags', keyId, () => this.client.send(new ListResourceTagsCommand({ KeyId: keyId, ...(marker ? { Marker: marker } : {}) })));
      for (const t of page.Tags ?? ([] as Tag[])) if (t.TagKey) tags.set(t.TagKey, t.TagValue ?? '');
      marker = page.Truncated ? page.NextMarker : undefined;
    } while (marker);
    return tags;
  }

  private rotationStatus(keyId: string): Promise<GetKeyRotationStatusResponse> {
    return this.send('GetKeyRotationStatus', keyId, () => this.client.send(new GetKeyRotationStatusCommand({ KeyId: keyId })));
  }

  private requireEnabled(reading: Reading): Reading {
    const state = reading.meta.KeyState ?? (reading.meta.Enabled === false ? 'Disabled' : 'Enabled');
    if (state !== 'Enabled') throw new KmsError('KEY_DISABLED', `key ${reading.keyId} is ${state === 'Disabled' ? 'disabled' : `not usable (AWS KeyState ${state})`}`, reading.keyId);
    return reading;
  }

  /** Polls ListKeyRotations until `version` exists; KMS_UNAVAILABLE (retryable) past the wait. */
  private async awaitRotation(keyId: string, version: number): Promise<void> {
    const deadline = this.now() + this.settings.rotationWaitMs;
    for (;;) {
      const rotations = await this.listRotations(keyId);
      if (rotations.length + 1 >= version) return;
      if (this.now() >= deadline) {
        throw new KmsError(
          'KMS_UNAVAILABLE',
          `AWS KMS has not completed the on-demand rotation of key ${keyId} to keyops version ${version} within ${this.settings.rotationWaitMs} ms; a retry waits for it again`,
          keyId,
        );
      }
      await sleep(this.settings.rotationPollMs);
    }
  }

  private async decrypt(keyId: string, envelope: { version: number; blob: Buffer }): Promise<UnwrapResult> {
    const out = await this.send('Decrypt', keyId, () =>
      this.client.send(
        new DecryptCommand({ KeyId: keyId, CiphertextBlob: envelope.blob, EncryptionContext: encryptionContext(envelope.version), EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' }),
      ),
    );
    return { dek: takePlaintext(out.Plaintext, keyId), keyVersion: envelope.version };
  }

  private async reEncrypt(keyId: string, envelope: { version: number; blob: Buffer }, version: number): Promise<RewrapResult> {
    const out = await this.send('ReEncrypt', keyId, () =>
      this.client.send(
        new ReEncryptCommand({
          CiphertextBlob: envelope.blob,
          SourceKeyId: keyId,
          SourceEncryptionContext: encryptionContext(envelope.version),
          DestinationKeyId: keyId,
          DestinationEncryptionContext: encryptionContext(version),
        }),
      ),
    );
    return { wdek: encodeAwsWdek(version, this.blob(out.CiphertextBlob, keyId)), keyVersion: version, previousVersion: envelope.version };
  }

  /** The port's batch form, one request per WDEK (AWS has no batch API). */
  private eachBounded<T>(keyId: string, wdeks: readonly Buffer[], fn: (envelope: { version: number; blob: Buffer }) => Promise<T>, discard?: (result: T) => void): Promise<BatchResult<T>> {
    return eachBounded(wdeks, this.settings.concurrency, (wdek) => fn(decodeAwsWdek(wdek, keyId)), discard);
  }


  private toMetadata(reading: Reading, nameTag: string | undefined, rotationTag: string | undefined, status: GetKeyRotationStatusResponse | undefined): KeyMetadata {
    const { meta, rotations } = reading;
    const createdAt = (meta.CreationDate ?? new Date(0)).toISOString();
    const claim = parseRotationTag(rotationTag);
    const versions: RootKeyVersion[] = [
      { version: 1, createdAt },
      ...rotations.map((r, i): RootKeyVersion => {
        const version = i + 2;
        // The tag names the request that asked for this version; only an on-demand one can be it.
        const requestId = claim?.version === version && r.RotationType !== 'AUTOMATIC' ? claim.request : undefined;
        return { version, createdAt: r.RotationDate!.toISOString(), ...(requestId ? { requestId } : {}) };
      }),
    ];
    const description = meta.Description?.trim();
    return {
      keyId: reading.keyId,
      name: nameTag ?? (description || reading.keyId),
      state: (meta.KeyState ?? 'Enabled') === 'Enabled' && meta.Enabled !== false ? 'active' : 'disabled',
      currentVersion: versions.length,
      versions,
      createdAt,
      lastRotateDate: rotations.at(-1)?.RotationDate?.toISOString(),
      rotationPolicy: status ? policyFromStatus(status) : undefined,
    };
  }
}
