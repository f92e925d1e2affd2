import { EngineError, engineFailure } from './engines/engine-error';
import { KmsError, kmsFailure } from './kms/kms-error';
import { systemFailure } from './system-failure';

/**
 * Runs an activity's work so that its errors leave typed: engine and KMS errors by their codes,
 * file-system and SQLite errors an operator must fix as non-retryable, anything else as is
 * (retryable: an unknown error may be transient).
 */
export async function typed<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof EngineError) throw engineFailure(err);
    if (err instanceof KmsError) throw kmsFailure(err);
    throw systemFailure(err);
  }
}
