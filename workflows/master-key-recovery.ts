/**
 * The recovery decision of a staged master-key rotation (reference 002): a pure function of the
 * durable checkpoint and the registers observed after the failure. A wrong answer here loses
 * every key in key storage, so it only answers where a rule of reference 002 applies, and
 * otherwise hands the decision to an operator.
 *
 * Rules, with C the current-MK VP found by the pre-check and N the new-MK VP loaded in stage 1:
 *
 * | checkpoint              | observed (every unit of the set)                          | action          |
 * |-------------------------|-----------------------------------------------------------|-----------------|
 * | none, prechecked        | anything (the rotation has not touched key storage)       | restart         |
 * | new-mk-loaded           | every unit: current C valid, new N valid, selected        | reencrypt       |
 * | new-mk-loaded           | anything else                                             | needs-operator  |
 * | reencrypted, promoting  | every unit pending (current C, new N) or promoted         | promote: take   |
 * |                         | (current N, new empty), at least one pending              | promoted units  |
 * |                         |                                                           | out, pending in |
 * | reencrypted, promoting  | every unit promoted                                       | finish          |
 * | reencrypted, promoting  | any unit in another state                                 | needs-operator  |
 * | done                    | every unit promoted                                       | finish          |
 * | done                    | anything else                                             | needs-operator  |
 *
 * Also needs-operator: a recorded new VP equal to the current one (the registers then cannot show
 * progress). Forbidden whatever the registers say: `restart` once the new MK is loaded
 * (re-encryption may have begun: a new value makes key storage unusable), `reencrypt` before this
 * rotation loaded a new MK or once re-encryption completed (promotion may have begun), `promote`
 * or `finish` before it completed.
 */
import type { CryptoUnit } from '../activities/crypto-units/crypto-unit-set';

export type Checkpoint = 'none' | 'prechecked' | 'new-mk-loaded' | 'reencrypted' | 'promoting' | 'done';

const ORDER: readonly Checkpoint[] = ['none', 'prechecked', 'new-mk-loaded', 'reencrypted', 'promoting', 'done'];
export const reached = (checkpoint: Checkpoint, stage: Checkpoint): boolean => ORDER.indexOf(checkpoint) >= ORDER.indexOf(stage);

export interface RecoveryState {
  checkpoint: Checkpoint;
  /** VP of the current MK when the pre-check passed. */
  currentVp: string | undefined;
  /** VP of the new MK loaded in stage 1. */
  newVp: string | undefined;
}

/** What an operator (or the decision function) may choose. `abort` stops and changes nothing. */
export type RecoveryActionName = 'restart' | 'reencrypt' | 'promote' | 'finish' | 'abort';

export type RecoveryDecision =
  | { action: 'restart' | 'reencrypt' | 'finish'; reason: string }
  /** Take `deselect` (already promoted) out of the selection and add `select` (waiting, but not selected) to it, then promote. */
  | { action: 'promote'; reason: string; deselect: string[]; select: string[] }
  | { action: 'needs-operator'; reason: string };

type UnitRegisters = Pick<CryptoUnit, 'unitId' | 'selected' | 'current' | 'next'>;

const isValid = (r: CryptoUnit['current'], vp: string | undefined) => r.state === 'valid' && vp !== undefined && r.verificationPattern === vp;
const pending = (u: UnitRegisters, s: RecoveryState) => isValid(u.current, s.currentVp) && isValid(u.next, s.newVp);
const promoted = (u: UnitRegisters, s: RecoveryState) => isValid(u.current, s.newVp) && u.next.state === 'empty';

function describe(u: UnitRegisters): string {
  const reg = (r: CryptoUnit['current']) => (r.state === 'valid' ? `valid ${r.verificationPattern ?? '?'}` : r.state);
  return `unit ${u.unitId}${u.selected ? '' : ' (not selected)'}: current ${reg(u.current)}, new ${reg(u.next)}`;
}

/** Why `action` is never safe at `checkpoint`, or undefined when reference 002 allows it. */
export function forbiddenReason(checkpoint: Checkpoint, action: RecoveryActionName): string | undefined {
  if (action === 'restart' && reached(checkpoint, 'new-mk-loaded')) {
    return 'a new master key is already loaded and key storage may be partly re-encrypted under it: generating another one makes key storage unusable (reference 002: do not rerun auto-mk-rotate)';
  }
  if (action === 'reencrypt' && !reached(checkpoint, 'new-mk-loaded')) {
    return 'this rotation has not loaded a new master key: there is no value to re-encrypt key storage towards (restart instead)';
  }
  if (action === 'reencrypt' && reached(checkpoint, 'reencrypted')) {
    return 'key storage is already re-encrypted and promotion may have begun: re-encrypting now is forbidden (reference 002); promote the remaining units instead';
  }
  if ((action === 'promote' || action === 'finish') && !reached(checkpoint, 'reencrypted')) {
    return 'key storage is not fully re-encrypted under the new master key: promoting it now leaves entries under a value no register holds';
  }
  return undefined;
}

export function decideRecovery(state: RecoveryState, units: readonly UnitRegisters[]): RecoveryDecision {
  const { checkpoint } = state;
  if (!reached(checkpoint, 'new-mk-loaded')) {
    return { action: 'restart', reason: `failed at checkpoint ${checkpoint}: key storage untouched, so the rotation runs again from its next step` };
  }
  const evidence = units.map(describe).join('; ');
  if (units.length === 0) return { action: 'needs-operator', reason: 'no crypto unit was observed' };
  // Reference 002 promotes only when the current registers hold a *different* pattern: equal
  // ones cannot show whether the new value was ever loaded or moved.
  if (state.currentVp === state.newVp) {
    return { action: 'needs-operator', reason: `the recorded current and new master keys have the same verification pattern ${state.newVp ?? '(none)'}, so the registers cannot show how far the rotation got (${evidence})` };
  }
  if (checkpoint === 'new-mk-loaded') {
    if (units.every((u) => u.selected && pending(u, state))) {
      return { action: 'reencrypt', reason: 'the new master key is loaded on every unit and key storage may be partly re-encrypted: re-encryption runs again, the new value is kept' };
    }
    return { action: 'needs-operator', reason: `stage 1 was reached but the registers no longer hold the new master key ${state.newVp ?? '?'} on every selected unit (${evidence})` };
  }
  if (checkpoint === 'done' && !units.every((u) => promoted(u, state))) {
    const behind = units.filter((u) => !promoted(u, state));
    return { action: 'needs-operator', reason: `the rotation was done, but ${behind.map(describe).join('; ')} does not hold the new master key ${state.newVp ?? '?'} as current` };
  }
  const others = units.filter((u) => !pending(u, state) && !promoted(u, state));
  if (others.length > 0) {
    return { action: 'needs-operator', reason: `after checkpoint ${checkpoint}, ${others.map(describe).join('; ')} is neither waiting for promotion nor promoted` };
  }
  if (units.every((u) => promoted(u, state))) {
    return { action: 'finish', reason: 'every unit holds the new master key as current' };
  }
  return {
    action: 'promote',
    reason: 'key storage is re-encrypted; units already promoted are taken out of the selection and the rest promoted (reference 002)',
    deselect: units.filter((u) => u.selected && promoted(u, state)).map((u) => u.unitId),
    select: units.filter((u) => !u.selected && pending(u, state)).map((u) => u.unitId),
  };
}
