import {
  ApplicationFailure,
  CancellationScope,
  condition,
  getExternalWorkflowHandle,
  isCancellation,
  log,
  patched,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { CryptoUnit } from '../activities/crypto-units/crypto-unit-set';
import {
  type MasterKeyPhase,
  type MasterKeyRotationState,
  type OperatorDecision,
  awaitMasterKeyRotationSignal,
  decideRecoveryUpdate,
  masterKeyRotationEndedSignal,
  masterKeyRotationQuery,
} from './master-key-messages';
import { type RecoveryActionName, type RecoveryDecision, decideRecovery, forbiddenReason } from './master-key-recovery';
import { OutcomeAttribute, PhaseAttribute } from './search-attributes';
import { z } from 'zod';
import { checkUpdate, labelSchema, parseInput, parseSignal } from './workflow-input';

export interface RotateMasterKeyInput {
  unitSetId: string;
  /** Part of the workflow id (`mk-rotation/<set>/<request>`); defaults to the run's start time. */
  requestId?: string;
  /** How soon a step whose worker died is retried elsewhere (default 30 s). */
  heartbeatTimeout?: string;
}

const ACTIONS: readonly RecoveryActionName[] = ['restart', 'reencrypt', 'promote', 'finish', 'abort'];

/** Automatic recoveries before the rotation stops for an operator instead of trying again. */
const MAX_AUTOMATIC_RECOVERIES = 3;

type Step = Exclude<RecoveryDecision, { action: 'needs-operator' }>;

const errorText = (err: unknown) => {
  const root = err instanceof Error && err.cause instanceof Error ? err.cause : err;
  return root instanceof Error ? root.message : String(root);
};

const rotateMasterKeyInputSchema = z.object({
  unitSetId: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, '1 to 63 letters, digits, "_", "." or "-"'),
  requestId: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/, '1 to 128 letters, digits, "_", ".", ":" or "-"').optional(),
  heartbeatTimeout: z.string().regex(/^\d{1,6} ?(ms|milliseconds?|s|seconds?|m|minutes?)$/, 'a duration such as "30 seconds"').optional(),
});

/**
 * Staged HSM master-key rotation (DESIGN.md, reference 002): pre-check → load a new MK →
 * re-encrypt key storage → promote on every unit → prove key storage opens under the new MK.
 * Each stage is a durable checkpoint. After any failure, the recovery is decided from the
 * checkpoint and the registers as observed then; where no rule of reference 002 applies the run
 * stops in `needs-operator` and waits for a `decideRecovery` update, whose validator refuses
 * forbidden actions. It never generates a new MK once one is loaded, and never re-encrypts once
 * re-encryption completed.
 */
export async function rotateMasterKey(input: RotateMasterKeyInput): Promise<MasterKeyRotationState> {
  // Backups and rewraps held by this rotation, to be told when it ends, however it ends.
  const waiters: string[] = [];
  let ending = false;
  setHandler(
    awaitMasterKeyRotationSignal,
    (payload) => {
      const waiter = parseSignal('awaitMasterKeyRotation', z.object({ workflowId: z.string().min(1).max(1000) }), payload);
      // Once the rotation is ending, a late request is not kept: the requester read the
      // registers after asking, and falls back to its re-check (no signal ping-pong with runs
      // that are still held because the rotation ended with the registers mid-way).
      if (waiter && !ending && !waiters.includes(waiter.workflowId)) waiters.push(waiter.workflowId);
    },
    { description: 'A run held by this rotation asks to be signalled masterKeyRotationEnded when it ends' },
  );
  try {
    return await rotate(input);
  } finally {
    // Runs started before this release existed end without it; their waiters poll.
    if (waiters.length > 0 && patched('master-key-rotation-ended-signal')) {
      ending = true;
      await CancellationScope.nonCancellable(() =>
        Promise.all(
          waiters.splice(0).map((id) =>
            getExternalWorkflowHandle(id)
              .signal(masterKeyRotationEndedSignal, { unitSetId: input.unitSetId })
              // A waiter that ended meanwhile (cancelled, timed out) needs no release.
              .catch((err: unknown) => log.info('a held run could not be told that the master-key rotation ended', { workflowId: id, error: errorText(err) })),
          ),
        ),
      );
    }
  }
}

async function rotate(input: RotateMasterKeyInput): Promise<MasterKeyRotationState> {
  parseInput('rotateMasterKey', rotateMasterKeyInputSchema, input);
  if (typeof input.unitSetId !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(input.unitSetId)) {
    throw ApplicationFailure.nonRetryable(`unit set id ${JSON.stringify(input.unitSetId)} must be 1 to 63 letters, digits, "_", "." or "-"`, 'INVALID_INPUT');
  }
  const unitSetId = input.unitSetId;
  const state: MasterKeyRotationState = {
    unitSetId,
    requestId: input.requestId ?? new Date(workflowInfo().startTime).toISOString(),
    phase: 'pre-check',
    checkpoint: 'none',
    currentVp: undefined,
    newVp: undefined,
    deselected: [],
    recoveries: 0,
    evidence: undefined,
    decisions: [],
    keyStorage: undefined,
  };
  let decision: OperatorDecision | undefined;
  setHandler(masterKeyRotationQuery, () => state, { description: 'Phase, checkpoint, verification patterns and the evidence of the last recovery' });
  setHandler(
    decideRecoveryUpdate,
    (d) => {
      decision = d;
      // Leaves needs-operator at once: a second decision sent before this one is applied is
      // refused, never kept for a later stop where it could be forbidden.
      state.phase = 'recovering';
      return { accepted: d.action };
    },
    {
      description: 'An operator decision for a rotation in needs-operator: restart, reencrypt, promote, finish or abort',
      validator: (d: OperatorDecision) => {
        checkUpdate('decideRecovery', z.object({ action: z.string(), operator: labelSchema.pipe(z.string().max(200)).optional(), note: labelSchema.optional() }), d);
        if (!ACTIONS.includes(d.action)) throw new Error(`unknown action ${JSON.stringify(d.action)}: use one of ${ACTIONS.join(', ')}`);
        if (state.phase !== 'needs-operator' || decision !== undefined) throw new Error(`the rotation is not waiting for a decision (phase ${state.phase})`);
        const why = forbiddenReason(state.checkpoint, d.action);
        if (why) throw new Error(`${d.action} is refused at checkpoint ${state.checkpoint}: ${why}`);
        if (d.action === 'finish' && !(state.evidence?.units.length && state.evidence.units.every((u) => promoted(u)))) {
          throw new Error('finish is refused: not every unit holds the new master key as current (promote first)');
        }
      },
    },
  );

  const acts = proxyActivities<Activities>({
    startToCloseTimeout: '2 hours',
    heartbeatTimeout: input.heartbeatTimeout ?? '30 seconds',
    retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '30 seconds', maximumAttempts: 5 },
  });
  const promoted = (u: CryptoUnit) => u.current.state === 'valid' && u.current.verificationPattern === state.newVp && u.next.state === 'empty';
  const pending = (u: CryptoUnit) => u.current.state === 'valid' && u.current.verificationPattern === state.currentVp && u.next.state === 'valid' && u.next.verificationPattern === state.newVp;

  // The Web UI lists each activity by its summary: name the unit set, units and master keys
  // (by verification pattern, abbreviated) each call works on.
  const set = `crypto-unit set ${unitSetId}`;
  const vp = (pattern: string | undefined) => (pattern ? `${pattern.slice(0, 12)}…` : '?');
  const unitList = (ids: string[]) => `unit${ids.length === 1 ? '' : 's'} ${ids.join(', ')} of ${set}`;

  const observe = async (why: string): Promise<{ units: CryptoUnit[]; error?: string }> => {
    try {
      return { units: await acts.observeCryptoUnits.executeWithOptions({ summary: `read the registers of ${set} ${why}` }, [{ unitSetId }]) };
    } catch (err) {
      if (isCancellation(err)) throw err;
      return { units: [], error: errorText(err) };
    }
  };

  const enter = (phase: MasterKeyPhase, details: string) => {
    state.phase = phase;
    upsertSearchAttributes([{ key: PhaseAttribute, value: phase }]);
    setCurrentDetails(`**${phase}** crypto-unit set \`${unitSetId}\` (checkpoint ${state.checkpoint}): ${details}`);
  };

  /** Runs the rotation from `step` to its end, advancing the checkpoint as each stage completes. */
  const run = async (step: Step) => {
    let next: Step['action'] = step.action;
    if (next === 'restart') {
      if (state.checkpoint === 'none') {
        enter('pre-check', 'login, imprint mode, signature thresholds, administrators, current registers');
        const checked = await acts.precheckMasterKeyRotation.executeWithOptions(
          { summary: `pre-check ${set}: login, imprint mode, signature thresholds, administrators, current registers` },
          [{ unitSetId }],
        );
        state.currentVp = checked.currentVp;
        state.checkpoint = 'prechecked';
      }
      enter('loading-new-mk', 'a fresh random value into every new master-key register');
      const loaded = await acts.loadNewMasterKey.executeWithOptions({ summary: `load a fresh random new master key into every new-MK register of ${set}` }, [{ unitSetId }]);
      state.newVp = loaded.newVp;
      state.checkpoint = 'new-mk-loaded';
      next = 'reencrypt';
    }
    if (next === 'reencrypt') {
      enter('reencrypting', `key storage from ${state.currentVp} to ${state.newVp}; operational work on it waits`);
      await acts.reencryptKeyStorage.executeWithOptions(
        { summary: `re-encrypt the key storage of ${set} from master key ${vp(state.currentVp)} to ${vp(state.newVp)}` },
        [{ unitSetId, currentVp: state.currentVp!, newVp: state.newVp! }],
      );
      state.checkpoint = 'reencrypted';
      next = 'promote';
    }
    if (next === 'promote') {
      state.checkpoint = 'promoting';
      enter('promoting', `set-immediate: ${state.newVp} becomes the current master key`);
      if (step.action === 'promote') {
        if (step.deselect.length > 0) {
          await acts.removeUnitsFromSelection.executeWithOptions({ summary: `take ${unitList(step.deselect)} (already promoted) out of the selection` }, [
            { unitSetId, unitIds: step.deselect },
          ]);
          state.deselected.push(...step.deselect.filter((id) => !state.deselected.includes(id)));
        }
        if (step.select.length > 0) {
          await acts.addUnitsToSelection.executeWithOptions({ summary: `add ${unitList(step.select)} (waiting for promotion) to the selection` }, [
            { unitSetId, unitIds: step.select },
          ]);
        }
      }
      await acts.promoteNewMasterKey.executeWithOptions(
        { summary: `promote master key ${vp(state.newVp)} from new to current on the selected units of ${set}` },
        [{ unitSetId, currentVp: state.currentVp!, newVp: state.newVp! }],
      );
      next = 'finish';
    }
    if (state.recoveries > 0 || state.decisions.length > 0) {
      // After a recovery, units may be out of the selection, whether the step that took them out
      // completed or not: every unit took part in the pre-check, so every unit goes back.
      const observed = await acts.observeCryptoUnits.executeWithOptions({ summary: `read the registers of ${set}: which units the recovery left out of the selection` }, [
        { unitSetId },
      ]);
      const outside = observed.filter((u) => !u.selected).map((u) => u.unitId);
      if (outside.length > 0) {
        await acts.addUnitsToSelection.executeWithOptions({ summary: `put ${unitList(outside)} back in the selection after the recovery` }, [{ unitSetId, unitIds: outside }]);
      }
      state.deselected = [];
    }
    state.checkpoint = 'done';
    enter('checking-key-storage', `every entry must open under ${state.newVp}`);
    state.keyStorage = await acts.checkKeyStorage.executeWithOptions({ summary: `check that every key-storage entry of ${set} opens under master key ${vp(state.newVp)}` }, [
      { unitSetId, expectedVp: state.newVp! },
    ]);
  };

  let step: Step = { action: 'restart', reason: 'start' };
  for (;;) {
    try {
      await run(step);
      break;
    } catch (err) {
      if (isCancellation(err)) throw err;
      const error = errorText(err);
      if (state.checkpoint === 'none') {
        // The pre-check (or the login) failed: nothing was changed. Fix it and start again.
        enter('failed', error);
        upsertSearchAttributes([{ key: OutcomeAttribute, value: 'failed' }]);
        throw ApplicationFailure.nonRetryable(error, 'PRECHECK_FAILED');
      }
      state.recoveries += 1;
      enter('recovering', `after "${error}": reading the registers`);
      // Registers that cannot be read (the same unreachable unit, an expired login) leave the
      // decision to an operator: the run must not end half-way through a rotation.
      const observed = await observe(`to decide the recovery after a failure at checkpoint ${state.checkpoint}`);
      const units = observed.units;
      const decided: RecoveryDecision = observed.error
        ? { action: 'needs-operator', reason: `the registers could not be read (${observed.error})` }
        : state.recoveries > MAX_AUTOMATIC_RECOVERIES
          ? { action: 'needs-operator', reason: `${state.recoveries - 1} automatic recoveries did not finish the rotation` }
          : decideRecovery(state, units);
      state.evidence = { error, units, decision: decided.action, reason: decided.reason };
      log.warn('master-key rotation recovering', { unitSetId, checkpoint: state.checkpoint, error, decision: decided.action, reason: decided.reason });
      if (decided.action !== 'needs-operator') {
        step = decided;
        continue;
      }
      enter(
        'needs-operator',
        `${decided.reason}. Registers: ${units.map((u) => `unit ${u.unitId} current ${u.current.verificationPattern ?? u.current.state}, new ${u.next.verificationPattern ?? u.next.state}`).join('; ')}. ` +
          `Answer with \`keyops mk decide ${unitSetId} ${state.requestId} --action <restart|reencrypt|promote|finish|abort>\`; forbidden actions are refused.`,
      );
      upsertSearchAttributes([{ key: OutcomeAttribute, value: 'needs-operator' }]);
      decision = undefined;
      await condition(() => decision !== undefined);
      const chosen = decision!;
      decision = undefined;
      // Checked again where it is applied, whatever the validator saw.
      const why = forbiddenReason(state.checkpoint, chosen.action);
      if (why) throw ApplicationFailure.nonRetryable(`${chosen.action} at checkpoint ${state.checkpoint}: ${why}`, 'FORBIDDEN_DECISION');
      state.decisions.push({ action: chosen.action, operator: chosen.operator, note: chosen.note });
      upsertSearchAttributes([{ key: OutcomeAttribute, value: 'running' }]);
      if (chosen.action === 'abort') {
        await acts.releaseMasterKeyRotation.executeWithOptions({ summary: `release this run's claim on ${set}: aborted by ${chosen.operator ?? 'an operator'}` }, [{ unitSetId }]);
        enter('failed', `aborted by ${chosen.operator ?? 'an operator'}${chosen.note ? `: ${chosen.note}` : ''}; registers left as observed`);
        upsertSearchAttributes([{ key: OutcomeAttribute, value: 'failed' }]);
        throw ApplicationFailure.nonRetryable(`master-key rotation of ${unitSetId} aborted by ${chosen.operator ?? 'an operator'}`, 'ABORTED_BY_OPERATOR');
      }
      // An operator's choice gets a fresh start on automatic recoveries.
      state.recoveries = 0;
      const latest = (await observe(`to apply the operator's ${chosen.action}`)).units;
      step =
        chosen.action === 'promote'
          ? {
              action: 'promote',
              reason: 'operator',
              deselect: latest.filter((u) => u.selected && promoted(u)).map((u) => u.unitId),
              select: latest.filter((u) => !u.selected && pending(u)).map((u) => u.unitId),
            }
          : { action: chosen.action, reason: 'operator' };
    }
  }
  enter('done', `every unit's current master key is ${state.newVp}; ${state.keyStorage?.readable ?? 0} of ${state.keyStorage?.entries ?? 0} key-storage entries open under it`);
  upsertSearchAttributes([{ key: OutcomeAttribute, value: 'succeeded' }]);
  return state;
}
