/**
 * The KMS port, modelled on IBM Key Protect (reference 001): a root key has versions; rotation
 * adds one and retires the others, which still unwrap but never wrap. Adapters map other KMSs
 * (AWS KMS, Vault Transit) onto it. Every method may throw a `KmsError` (kms-error.ts).
 */
import type { KmsError } from './kms-error';

export type KeyState = 'active' | 'disabled';

export interface RootKeyVersion {
  version: number;
  createdAt: string;
  /**
   * The rotation request that created this version, where the KMS records one: a retried
   * rotation learns from it that its own earlier attempt rotated the key.
   */
  requestId?: string;
}

/** Key Protect allows policies of 1 to 12 months, each month counted as 30 days. */
export interface RotationPolicy {
  intervalMonths: number;
}

export interface KeyMetadata {
  keyId: string;
  name: string;
  state: KeyState;
  /** The latest version: the only one that wraps and rewraps. */
  currentVersion: number;
  versions: RootKeyVersion[];
  createdAt: string;
  /** Set by every rotation, manual or by policy; undefined before the first rotation. */
  lastRotateDate: string | undefined;
  rotationPolicy: RotationPolicy | undefined;
}

export interface WrapResult {
  /** The wrapped DEK: opaque bytes that record the root-key version that wrapped them. */
  wdek: Buffer;
  keyVersion: number;
  /** The DEK itself (generated when none was given). Never log it or put it in a payload. */
  dek: Buffer;
}

export interface UnwrapResult {
  dek: Buffer;
  /** The version that had wrapped the WDEK (possibly retired). */
  keyVersion: number;
}

export interface RewrapResult {
  wdek: Buffer;
  keyVersion: number;
  previousVersion: number;
}

export interface RotateResult {
  version: number;
  /** false when this request id had already rotated the key: the retry changed nothing. */
  rotated: boolean;
}

/**
 * One entry per WDEK of a batch call, in order: its result, or the `KmsError` of that WDEK alone
 * (CIPHERTEXT_INVALID). Failures of the whole call (key not found or disabled, KMS unavailable)
 * reject the call instead.
 */
export type BatchResult<T> = (T | KmsError)[];

export interface KeyManagementService {
  /** `kms`: which configured instance holds the new key (the router's concern; one KMS ignores it). */
  createKey(input: { name: string; kms?: string }): Promise<KeyMetadata>;
  getKeyMetadata(keyId: string): Promise<KeyMetadata>;
  /** Manual rotation, idempotent per request id; at most one per hour per key. */
  rotateKey(keyId: string, requestId: string): Promise<RotateResult>;
  /** Wraps `dek` (or a fresh 32-byte DEK) with the latest version. */
  wrap(keyId: string, dek?: Buffer): Promise<WrapResult>;
  unwrap(keyId: string, wdek: Buffer): Promise<UnwrapResult>;
  /** Same DEK, wrapped again under the latest version. */
  rewrap(keyId: string, wdek: Buffer): Promise<RewrapResult>;
  /**
   * Bulk forms for rewrapping a key's WDEKs: one request per batch, served against one reading
   * of the key's state. A remote adapter may pipeline the requests of a batch. A batch throttled
   * part of the way rejects as a `ThrottledBatch` carrying the answers it got (a caller that
   * drops them zeroes their DEKs).
   */
  unwrapBatch(keyId: string, wdeks: readonly Buffer[]): Promise<BatchResult<UnwrapResult>>;
  rewrapBatch(keyId: string, wdeks: readonly Buffer[]): Promise<BatchResult<RewrapResult>>;
  setRotationPolicy(keyId: string, policy: RotationPolicy | undefined): Promise<KeyMetadata>;
  /**
   * How many batch calls for `keyId` are worth keeping in flight at once (rewraps adapt below it
   * when throttled). A KMS that works in this process gains nothing from more than 1; a remote
   * one leaves it unset (16).
   */
  batchConcurrency?(keyId: string): number | undefined;
  disableKey(keyId: string): Promise<void>;
  enableKey(keyId: string): Promise<void>;
}
