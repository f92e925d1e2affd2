import {
  allHandlersFinished,
  condition,
  continueAsNew,
  getExternalWorkflowHandle,
  log,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import { KeyIdAttribute, KeyVersionAttribute } from './search-attributes';
import {
  awaitRewrapSignal,
  keyStateQuery,
  rewrapCompleteSignal,
  type KeyEntityState,
  type RewrapWaiter,
} from './root-key-messages';

/**
 * One long-lived workflow per root key (`key/<keyId>`). It knows the highest version every
 * WDEK was rewrapped to and releases waiters by signal. Because both "rewrap complete" and
 * "wake me at version N" arrive as signals on this one history, their order is total: a waiter
 * registered before, during or after the rewrap is released exactly when its version is reached.
 * (A visibility query for waiting workflows would be eventually consistent and could miss one.)
 */
export async function keyEntity(state: KeyEntityState): Promise<never> {
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
    (done) => {
      if (done.version <= state.rewrappedVersion) return;
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
    (waiter) => {
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
  for (;;) {
    await condition(() => pending.length > 0 || workflowInfo().continueAsNewSuggested);
    while (pending.length) await release(pending.shift()!);
    if (workflowInfo().continueAsNewSuggested) {
      // Handlers may still be mid-flight; the carried state must include what they add.
      await condition(allHandlersFinished);
      while (pending.length) await release(pending.shift()!);
      return continueAsNew<typeof keyEntity>(state);
    }
  }
}
