import assert from 'node:assert/strict';
import { EngineError, type EngineErrorCode } from '../../activities/engines/engine-error';

/** Asserts that `promise` rejects with an EngineError of `code` (and a message matching `message`). */
export async function rejectsWith(promise: Promise<unknown>, code: EngineErrorCode, message?: RegExp): Promise<EngineError> {
  let caught: unknown;
  await assert.rejects(promise, (err: unknown) => ((caught = err), true));
  assert.ok(caught instanceof EngineError, `expected an EngineError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  if (message) assert.match(caught.message, message);
  return caught;
}

/** The EngineError `promise` rejects with, whatever its code (the caller checks what matters). */
export async function engineError(promise: Promise<unknown>): Promise<EngineError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err instanceof EngineError, `expected an EngineError, got ${String(err)}`);
  return err;
}
