import type { BatchResult } from './key-management-service';
import { KmsError } from './kms-error';

/**
 * A batch the KMS throttled part of the way through: KMS_THROTTLED, with the items it had
 * already answered (by position; undefined where it had not). Unwrapped DEKs among them are
 * the caller's to zero, as they would be in an answer.
 */
export class ThrottledBatch<T> extends KmsError {
  constructor(
    cause: KmsError,
    readonly answered: readonly (T | KmsError | undefined)[],
  ) {
    super('KMS_THROTTLED', cause.message, cause.keyId, cause.retryAfter);
  }
}

/**
 * The batch call a throttle retry should repeat: each call sends only the WDEKs not answered
 * yet and keeps every answer it got, also from a call that was throttled half way. Against a KMS
 * that rewraps one WDEK per request (Key Protect, AWS), one 429 then costs one request again, not
 * the whole batch of 500, and no quota is spent twice on the same WDEK.
 */
export function resumableBatch<T>(wdeks: readonly Buffer[], call: (part: readonly Buffer[]) => Promise<BatchResult<T>>): () => Promise<BatchResult<T>> {
  const answers = new Array<T | KmsError | undefined>(wdeks.length);
  return async () => {
    const todo: number[] = [];
    for (let i = 0; i < wdeks.length; i++) if (answers[i] === undefined) todo.push(i);
    let got: BatchResult<T>;
    try {
      got = await call(todo.length === wdeks.length ? wdeks : todo.map((i) => wdeks[i]!));
    } catch (err) {
      if (err instanceof ThrottledBatch) {
        (err as ThrottledBatch<T>).answered.forEach((a, j) => {
          if (a !== undefined && todo[j] !== undefined) answers[todo[j]] = a;
        });
      }
      throw err;
    }
    if (got.length !== todo.length) {
      throw new KmsError('KMS_UNAVAILABLE', `the KMS answered ${got.length} of ${todo.length} WDEKs in a batch`);
    }
    got.forEach((a, j) => (answers[todo[j]!] = a));
    return answers as BatchResult<T>;
  };
}
