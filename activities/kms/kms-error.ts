import { ApplicationFailure } from '@temporalio/common';

/** Error codes follow Key Protect's where it has one (e.g. KEY_ROTATION_NOT_PERMITTED, HTTP 409). */
export type KmsErrorCode =
  | 'KEY_NOT_FOUND'
  | 'KEY_DISABLED'
  | 'KEY_ROTATION_NOT_PERMITTED'
  | 'CIPHERTEXT_INVALID'
  | 'INVALID_INPUT'
  | 'KMS_UNAVAILABLE'
  /** 429, AWS ThrottlingException/LimitExceededException, a Vault rate-limit quota: slow down (`retryAfter` when the KMS said). */
  | 'KMS_THROTTLED'
  /** 401/403 after a fresh credential: the credential or its policy is wrong; retrying does not help. */
  | 'KMS_AUTH_FAILED';

/** An unavailable or throttling KMS is worth retrying; the rest stay wrong however often they are tried. */
const RETRYABLE: ReadonlySet<KmsErrorCode> = new Set(['KMS_UNAVAILABLE', 'KMS_THROTTLED']);

export class KmsError extends Error {
  readonly retryable: boolean;

  constructor(
    readonly code: KmsErrorCode,
    message: string,
    readonly keyId?: string,
    /** For KEY_ROTATION_NOT_PERMITTED and KMS_THROTTLED: when to try again (ISO time). */
    readonly retryAfter?: string,
  ) {
    super(message);
    this.name = 'KmsError';
    this.retryable = RETRYABLE.has(code);
  }
}

/**
 * The form a KMS error takes when it leaves an activity: a typed ApplicationFailure whose
 * `type` is the code, retryable only where the code says so. Details carry no key material.
 */
export function kmsFailure(err: KmsError): ApplicationFailure {
  return ApplicationFailure.create({
    type: err.code,
    message: err.message,
    nonRetryable: !err.retryable,
    details: [{ keyId: err.keyId, retryAfter: err.retryAfter }],
  });
}
