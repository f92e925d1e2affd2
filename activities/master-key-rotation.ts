import { Context, getClient, heartbeat } from '@temporalio/activity';
import { WorkflowNotFoundError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { type CryptoUnit, CryptoUnitError, type CryptoUnitSet } from './crypto-units/crypto-unit-set';
import { precheckProblems } from './crypto-units/precheck';
import type { RotationLedgerStore } from './crypto-units/rotation-ledger';
import { awaitMasterKeyRotationSignal, type MasterKeyWait } from '../workflows/master-key-messages';

export interface MasterKeyDeps {
  /** The crypto-unit set with this id, or an error naming it. */
  cryptoUnitSet: (unitSetId: string) => CryptoUnitSet;
  rotationLedger: RotationLedgerStore;
  /** The unit set whose master key protects the KMS's key storage (backups and rewraps wait for it). */
  kmsUnitSet?: string;
  /** Whether that set's master key is being rotated. */
  keyStorageRotation?: () => Promise<{ inProgress: boolean; reason: string | undefined }>;
}

/** The rotation an activity runs for: its workflow id. */
const owner = () => Context.current().info.workflowExecution?.workflowId ?? 'local';

/** Heartbeats while `work` runs: a step that hangs is retried elsewhere, one that works is not. */
async function withHeartbeats<T>(work: () => Promise<T>): Promise<T> {
  heartbeat();
  const tick = setInterval(() => heartbeat(), 1000);
  try {
    return await work();
  } finally {
    clearInterval(tick);
  }
}

function failure(err: unknown): unknown {
  if (!(err instanceof CryptoUnitError)) return err;
  return ApplicationFailure.create({ type: err.code, message: err.message, nonRetryable: !err.retryable, details: [{ unitIds: err.unitIds }] });
}

async function typed<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw failure(err);
  }
}

const isPromoted = (u: CryptoUnit, newVp: string) => u.current.state === 'valid' && u.current.verificationPattern === newVp && u.next.state === 'empty';

/**
 * The steps of a staged master-key rotation, one activity each, so that every completed stage is
 * a durable checkpoint in the workflow's history. Each one is safe to retry at the point where
 * the workflow calls it; the workflow never calls one where it would not be.
 */
export function createMasterKeyActivities({ cryptoUnitSet, rotationLedger, kmsUnitSet, keyStorageRotation }: MasterKeyDeps) {
  const set = (unitSetId: string) => {
    try {
      return cryptoUnitSet(unitSetId);
    } catch (err) {
      if (err instanceof CryptoUnitError) throw ApplicationFailure.create({ type: 'INVALID_CONFIGURATION', nonRetryable: true, message: err.message });
      throw err;
    }
  };

  return {
    /** Stage 0. Fails (non-retryably, with every problem listed) when reference 002's conditions do not hold. */
    async precheckMasterKeyRotation(input: { unitSetId: string }): Promise<{ currentVp: string; units: CryptoUnit[] }> {
      const units = await typed(async () => {
        const s = set(input.unitSetId);
        await s.checkAuthentication();
        return s.listUnits();
      });
      const problems = precheckProblems(units);
      const held = rotationLedger.get(input.unitSetId);
      if (held && held.owner !== owner()) problems.push(`rotation ${held.owner} holds this unit set: finish or abort it first`);
      if (problems.length > 0) {
        throw ApplicationFailure.create({
          type: 'PRECHECK_FAILED',
          nonRetryable: true,
          message: `crypto-unit set ${input.unitSetId} is not ready for a master-key rotation; nothing was changed: ${problems.join('; ')}`,
          details: [{ problems }],
        });
      }
      // One rotation per unit set: two could each load a new MK over the other's.
      const claim = rotationLedger.claim(input.unitSetId, owner());
      if (claim.owner !== owner()) {
        throw ApplicationFailure.create({ type: 'PRECHECK_FAILED', nonRetryable: true, message: `rotation ${claim.owner} holds crypto-unit set ${input.unitSetId}; nothing was changed` });
      }
      return { currentVp: units[0]!.current.verificationPattern!, units };
    },

    /** The registers as they are now: the evidence a recovery decision is made from. */
    async observeCryptoUnits(input: { unitSetId: string }): Promise<CryptoUnit[]> {
      return typed(() => set(input.unitSetId).listUnits());
    },

    /**
     * Stage 1: a fresh new MK on every selected unit. Overwriting is safe only because the
     * workflow calls this before re-encryption can have started (a retry included).
     */
    async loadNewMasterKey(input: { unitSetId: string }): Promise<{ newVp: string }> {
      // The ledger, not the workflow's memory, decides: an attempt that stalled and resumes after
      // its retry moved on must not overwrite the value key storage is being re-encrypted to.
      const claim = rotationLedger.get(input.unitSetId);
      if (claim?.owner !== owner() || claim.reencryptingVp !== undefined) {
        throw ApplicationFailure.create({
          type: 'FORBIDDEN_STEP',
          nonRetryable: true,
          message: claim?.reencryptingVp
            ? `re-encryption of key storage towards ${claim.reencryptingVp} began: a new master key must not be generated now (reference 002)`
            : `this rotation does not hold crypto-unit set ${input.unitSetId}`,
        });
      }
      return typed(() => withHeartbeats(async () => ({ newVp: (await set(input.unitSetId).loadNewMasterKey()).verificationPattern })));
    },

    /**
     * Stage 2, resumable. It first checks that the registers hold exactly the values the rotation
     * recorded, so it never re-encrypts towards a value the workflow does not know.
     */
    async reencryptKeyStorage(input: { unitSetId: string; currentVp: string; newVp: string }): Promise<{ entries: number }> {
      return typed(async () => {
        const s = set(input.unitSetId);
        const wrong = (await s.listUnits()).filter(
          (u) => u.selected && (u.current.verificationPattern !== input.currentVp || u.next.state !== 'valid' || u.next.verificationPattern !== input.newVp),
        );
        if (wrong.length > 0) {
          throw new CryptoUnitError('PRECONDITION_FAILED', `unit(s) ${wrong.map((u) => u.unitId).join(', ')} do not hold current MK ${input.currentVp} and new MK ${input.newVp}`, wrong.map((u) => u.unitId));
        }
        rotationLedger.markReencrypting(input.unitSetId, owner(), input.newVp);
        return s.reencryptKeyStorage((done, total) => heartbeat({ done, total }));
      });
    },

    /**
     * Stage 3 on the selected units. A retry after it completed finds every unit promoted and
     * succeeds; a partly promoted selection is refused, for the workflow's recovery to handle
     * as reference 002 says (take the promoted units out, then promote the rest).
     */
    async promoteNewMasterKey(input: { unitSetId: string; currentVp: string; newVp: string }): Promise<{ promoted: string[] }> {
      return typed(async () => {
        const s = set(input.unitSetId);
        const selected = (await s.listUnits()).filter((u) => u.selected);
        const done = selected.filter((u) => isPromoted(u, input.newVp));
        if (done.length === selected.length) return { promoted: [] };
        if (done.length > 0) {
          throw new CryptoUnitError('PRECONDITION_FAILED', `unit(s) ${done.map((u) => u.unitId).join(', ')} are already promoted; take them out of the selection first`, done.map((u) => u.unitId));
        }
        // Set-immediate promotes whatever the new registers hold: it must be the value key
        // storage was re-encrypted to, on every unit.
        const wrong = selected.filter((u) => u.current.verificationPattern !== input.currentVp || u.next.state !== 'valid' || u.next.verificationPattern !== input.newVp);
        if (wrong.length > 0) {
          throw new CryptoUnitError('PRECONDITION_FAILED', `unit(s) ${wrong.map((u) => u.unitId).join(', ')} do not hold current MK ${input.currentVp} and new MK ${input.newVp}: not promoting`, wrong.map((u) => u.unitId));
        }
        await withHeartbeats(() => s.promoteNewMasterKey());
        return { promoted: selected.map((u) => u.unitId) };
      });
    },

    async removeUnitsFromSelection(input: { unitSetId: string; unitIds: string[] }): Promise<void> {
      await typed(() => set(input.unitSetId).removeFromSelection(input.unitIds));
    },

    async addUnitsToSelection(input: { unitSetId: string; unitIds: string[] }): Promise<void> {
      await typed(() => set(input.unitSetId).addToSelection(input.unitIds));
    },

    /** The proof at the end: every entry of key storage opens under the new current MK. */
    async checkKeyStorage(input: { unitSetId: string; expectedVp: string }): Promise<{ entries: number; readable: number }> {
      const s = set(input.unitSetId);
      const behind = (await typed(() => s.listUnits())).filter((u) => !u.selected || !isPromoted(u, input.expectedVp));
      if (behind.length > 0) {
        throw ApplicationFailure.create({
          type: 'KEY_STORAGE_UNUSABLE',
          nonRetryable: true,
          message: `unit(s) ${behind.map((u) => u.unitId).join(', ')} of ${input.unitSetId} are not selected with ${input.expectedVp} as their only master key`,
        });
      }
      const check = await typed(() => s.checkKeyStorage());
      if (check.readable !== check.entries || check.verificationPattern !== input.expectedVp) {
        throw ApplicationFailure.create({
          type: 'KEY_STORAGE_UNUSABLE',
          nonRetryable: true,
          message: `key storage of ${input.unitSetId}: ${check.readable} of ${check.entries} entries open under the current master key ${check.verificationPattern ?? '(units disagree)'}, expected all under ${input.expectedVp}`,
        });
      }
      // Proven: the set is free for the next rotation.
      rotationLedger.release(input.unitSetId, owner());
      return { entries: check.entries, readable: check.readable };
    },

    /** An operator aborted: the set is released; a new rotation's pre-check still refuses loaded registers. */
    async releaseMasterKeyRotation(input: { unitSetId: string }): Promise<void> {
      rotationLedger.release(input.unitSetId, owner());
      return Promise.resolve();
    },

    /**
     * Asks the rotation that holds the KMS's unit set to signal `workflowId` when it ends. The
     * registers are read after the request is in the rotation's history: a rotation that ended
     * before it could hear the request is then seen as ended, so no waiter is ever missed.
     */
    async registerMasterKeyWaiter(input: { workflowId: string }): Promise<MasterKeyWait> {
      const claim = kmsUnitSet === undefined ? undefined : rotationLedger.get(kmsUnitSet);
      let registered = false;
      if (claim) {
        try {
          await getClient().workflow.getHandle(claim.owner).signal(awaitMasterKeyRotationSignal, { workflowId: input.workflowId });
          registered = true;
        } catch (err) {
          // The run holding the claim is closed: its end is what the registers now show.
          if (!(err instanceof WorkflowNotFoundError)) throw err;
        }
      }
      const state = await keyStorageRotation?.();
      if (!state?.inProgress) return 'ended';
      return registered ? 'signal' : 'poll';
    },

    /** Whether a master-key rotation is under way on the set: backups and rewraps wait for it. */
    async masterKeyRotationState(input: { unitSetId: string }): Promise<{ inProgress: boolean; reason: string | undefined }> {
      return typed(async () => {
        const units = await set(input.unitSetId).listUnits();
        return masterKeyRotationState(units);
      });
    },
  };
}

/** A rotation is under way while any new-MK register holds a value or the units disagree on the current MK. */
export function masterKeyRotationState(units: readonly CryptoUnit[]): { inProgress: boolean; reason: string | undefined } {
  const loaded = units.filter((u) => u.next.state !== 'empty');
  if (loaded.length > 0) return { inProgress: true, reason: `unit(s) ${loaded.map((u) => u.unitId).join(', ')} hold a new master key` };
  const current = new Set(units.map((u) => u.current.verificationPattern ?? u.current.state));
  if (current.size > 1) return { inProgress: true, reason: 'the units disagree on the current master key (partly promoted)' };
  return { inProgress: false, reason: undefined };
}
