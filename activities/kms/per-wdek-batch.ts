import type { BatchResult } from './key-management-service';
import { KmsError } from './kms-error';
import { ThrottledBatch } from './throttled-batch';

/**
 * The port's batch call for a KMS that takes one WDEK per request (AWS KMS, Key Protect): `fn`
 * on every WDEK, at most `concurrency` at once, results in order. A WDEK's own
 * CIPHERTEXT_INVALID is its result; any other failure stops new requests, waits for those in
 * flight, hands what they returned to `discard` (to zero DEKs) and rejects the call. A throttled
 * batch rejects as a ThrottledBatch carrying what was answered, DEKs included (its caller keeps or
 * zeroes them), so that its retry sends only the rest: a discarded answer cost quota once already,
 * and a batch larger than the quota's window would otherwise never get through.
 */
export async function eachBounded<T>(wdeks: readonly Buffer[], concurrency: number, fn: (wdek: Buffer) => Promise<T>, discard?: (result: T) => void): Promise<BatchResult<T>> {
  const results = new Array<T | KmsError>(wdeks.length);
  let next = 0;
  let failure: { err: unknown } | undefined;
  const lane = async () => {
    while (!failure && next < wdeks.length) {
      const i = next++;
      try {
        results[i] = await fn(wdeks[i]!);
      } catch (err) {
        if (err instanceof KmsError && err.code === 'CIPHERTEXT_INVALID') results[i] = err;
        else failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, wdeks.length) }, lane));
  if (failure) {
    if (failure.err instanceof KmsError && failure.err.code === 'KMS_THROTTLED') throw new ThrottledBatch(failure.err, results);
    if (discard) for (const r of results) if (r !== undefined && !(r instanceof KmsError)) discard(r);
    throw failure.err;
  }
  return results;
}
