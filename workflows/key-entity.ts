import {
  allHandlersFinished,
  condition,
  continueAsNew,
  getExternalWorkflowHandle,
  log,
  patched,
  proxyLocalActivities,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import { z } from 'zod';
import type { Activities } from '../activities';
import { KeyIdAttribute, KeyVersionAttribute } from './search-attributes';
import { keyIdSchema, parseInput, parseSignal, versionSchema } from './workflow-input';
import {
  awaitRewrapSignal,
  keyStateQuery,
  rewrapCompleteSignal,
  type KeyEntityState,
  type RewrapWaiter,
} from './root-key-messages';

/** Waiters signalled in one workflow task (the server refuses more than 2,000 pending) or one local activity. */
const RELEASE_BATCH = 500;

// Bounded: after 5 failed attempts the batch goes out as the workflow's own signals,
// which the server delivers and retries itself. An endless local retry would hold every later
// release of the key, and an error escaping here would fail the entity and lose its waiters.
const { releaseRewrapWaiters } = proxyLocalActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1 second', maximumInterval: '10 seconds', maximumAttempts: 5 },
});

const waiterSchema = z.object({ workflowId: z.string().min(1).max(1000), minVersion: versionSchema });

/**
 * One long-lived workflow per root key (`key/<keyId>`). It knows the highest version every
 * WDEK was rewrapped to and releases waiters by signal. Because both "rewrap complete" and
 * "wake me at version N" arrive as signals on this one history, their order is total: a waiter
 * registered before, during or after the rewrap is released exactly when its version is reached.
 * (A visibility query for waiting workflows would be eventually consistent and could miss one.)
 */
export async function keyEntity(state: KeyEntityState): Promise<never> {
  parseInput('keyEntity', z.object({ keyId: keyIdSchema, rewrappedVersion: z.number().int().nonnegative(), waiters: z.array(waiterSchema) }), state);
  const { keyId } = state;
  const pending: RewrapWaiter[] = [];

  const release = (waiter: RewrapWaiter) =>
    getExternalWorkflowHandle(waiter.workflowId)
      .signal(rewrapCompleteSignal, { keyId, version: state.rewrappedVersion })
      // A waiter that ended meanwhile needs nothing more.
      .catch((err: unknown) => log.warn('waiter gone before release', { waiter: waiter.workflowId, error: String(err) }));

  const describe = () =>
    setCurrentDetails(
      `**Key ${keyId}**: every WDEK rewrapped to version **${state.rewrappedVersion}**; ` +
        (state.waiters.length ? `${state.waiters.length} workflow(s) waiting for a later version` : 'no workflow waiting'),
    );

  setHandler(keyStateQuery, () => state);
  setHandler(
    rewrapCompleteSignal,
    (payload) => {
      // A malformed announcement (a version 2.5 sent by hand) would wedge every waiter: dropped.
      const done = parseSignal('rewrapComplete', z.object({ keyId: z.string(), version: versionSchema }), payload);
      if (!done || done.version <= state.rewrappedVersion) return;
      state.rewrappedVersion = done.version;
      const ready = state.waiters.filter((w) => w.minVersion <= done.version);
      state.waiters = state.waiters.filter((w) => w.minVersion > done.version);
      pending.push(...ready);
      upsertSearchAttributes([{ key: KeyVersionAttribute, value: done.version }]);
      describe();
    },
    { description: 'Rewrap of every WDEK of this key reached the given version' },
  );
  setHandler(
    awaitRewrapSignal,
    (payload) => {
      const waiter = parseSignal('awaitRewrap', waiterSchema, payload);
      if (!waiter) return;
      if (waiter.minVersion <= state.rewrappedVersion) pending.push(waiter);
      else if (!state.waiters.some((w) => w.workflowId === waiter.workflowId && w.minVersion === waiter.minVersion)) state.waiters.push(waiter);
      describe();
    },
    { description: 'Signal rewrapComplete to the given workflow once the key reaches minVersion' },
  );

  upsertSearchAttributes([
    { key: KeyIdAttribute, value: keyId },
    { key: KeyVersionAttribute, value: state.rewrappedVersion },
  ]);
  describe();
  const releasePending = async () => {
    if (!pending.length) return;
    // One signal per workflow task made the 20th waiter of a key wait for 20 round trips of this
    // history behind a night's backlog. Signals sent by this workflow together still reached
    // their waiters one after another, about 100 ms apart in a busy night (each is a server task
    // that also writes back here): a local activity sends them straight to the waiters, without
    // a trip through the activity task queue's backlog. Runs started before these patches keep
    // the way they began with.
    if (patched('key-entity-release-by-local-activity')) {
      while (pending.length) {
        const batch = pending.splice(0, RELEASE_BATCH);
        try {
          await releaseRewrapWaiters.executeWithOptions({ summary: `signal ${batch.length} waiting workflow(s) that key ${keyId} reached version ${state.rewrappedVersion}` }, [
            { keyId, version: state.rewrappedVersion, workflowIds: batch.map((w) => w.workflowId) },
          ]);
        } catch (err) {
          log.warn('releasing waiters by local activity failed; signalling them from the workflow', { keyId, waiters: batch.length, error: String(err) });
          await Promise.all(batch.map(release));
        }
      }
    } else if (patched('key-entity-release-together')) {
      while (pending.length) await Promise.all(pending.splice(0, RELEASE_BATCH).map(release));
    } else {
      while (pending.length) await release(pending.shift()!);
    }
  };
  for (;;) {
    await condition(() => pending.length > 0 || workflowInfo().continueAsNewSuggested);
    await releasePending();
    if (workflowInfo().continueAsNewSuggested) {
      // Handlers may still be mid-flight; the carried state must include what they add.
      await condition(allHandlersFinished);
      await releasePending();
      return continueAsNew<typeof keyEntity>(state);
    }
  }
}
