import assert from 'node:assert/strict';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure, ChildWorkflowFailure } from '@temporalio/common';

/** The first ApplicationFailure down a failure's cause chain: where its type and message are. */
export function applicationFailureOf(err: unknown): ApplicationFailure | undefined {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if (e instanceof ApplicationFailure) return e;
  }
  return undefined;
}

/** The error `promise` rejects with (an assertion failure when it resolves instead). */
export async function rejection(promise: Promise<unknown>, what: string): Promise<unknown> {
  let caught: unknown;
  await assert.rejects(promise, (err: unknown) => ((caught = err), true), what);
  return caught;
}

/**
 * Asserts that a workflow run failed (not timed out, not cancelled) with an ApplicationFailure of
 * `type`, reached through any child workflow or activity failures, and returns it.
 */
export async function failsWith(result: Promise<unknown>, type: string, what: string): Promise<ApplicationFailure> {
  const err = await rejection(result, what);
  assert.ok(err instanceof WorkflowFailedError, `${what}: expected the run to fail, got ${String(err)}`);
  const failure = applicationFailureOf(err);
  assert.ok(failure, `${what}: no ApplicationFailure in ${String(err)}`);
  assert.equal(failure.type, type, `${what}: ${failure.message}`);
  return failure;
}

/** The child workflow failure on the way to the root cause, when a child run failed. */
export function childFailureOf(err: unknown): ChildWorkflowFailure | undefined {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if (e instanceof ChildWorkflowFailure) return e;
  }
  return undefined;
}
