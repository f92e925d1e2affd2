/**
 * Exhaustive table test of the recovery decision of a staged master-key rotation
 * (workflows/master-key-recovery.ts) against reference 002 (HSM master-key rotation recovery)
 * and DESIGN.md "Staged master-key rotation".
 *
 * The expected decision is computed HERE, from the rules written out plainly below, never by
 * calling the function under test. Every checkpoint × every register state of a finite
 * per-unit alphabet × 1, 2 and 3 units × selected / not selected is checked:
 *   current ∈ {empty, valid C, valid N, valid X, invalid}
 *   new     ∈ {empty, valid N, valid C, valid X, invalid}
 *   selected ∈ {true, false}
 * i.e. 50 states per unit, 50 + 50² + 50³ = 127,550 unit sets per checkpoint, 765,300 cases in
 * all (the full alphabet for 3 units too: one shared pass calls decideRecovery once per case and
 * checks every property, about 3 s on a dev machine, so the 3-unit alphabet is not restricted).
 * C is the current-MK verification pattern found by the pre-check, N the new-MK one loaded in
 * stage 1, X any other value.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { CryptoUnit, MasterKeyRegister } from '../activities/crypto-units/crypto-unit-set';
import {
  type Checkpoint,
  type RecoveryActionName,
  type RecoveryDecision,
  type RecoveryState,
  decideRecovery,
  forbiddenReason,
  reached,
} from '../workflows/master-key-recovery';

const C = 'VP-C';
const N = 'VP-N';
const X = 'VP-X';

const CHECKPOINTS: readonly Checkpoint[] = ['none', 'prechecked', 'new-mk-loaded', 'reencrypted', 'promoting', 'done'];
const ACTIONS: readonly RecoveryActionName[] = ['restart', 'reencrypt', 'promote', 'finish', 'abort'];

/** What a register holds, as the test reasons about it: a state, or a valid value named by its VP. */
type Holds = 'empty' | 'invalid' | 'C' | 'N' | 'X';
const CURRENT_ALPHABET: readonly Holds[] = ['empty', 'C', 'N', 'X', 'invalid'];
const NEW_ALPHABET: readonly Holds[] = ['empty', 'N', 'C', 'X', 'invalid'];

const VP_OF: Record<'C' | 'N' | 'X', string> = { C, N, X };
function register(holds: Holds): MasterKeyRegister {
  return holds === 'empty' || holds === 'invalid' ? { state: holds } : { state: 'valid', verificationPattern: VP_OF[holds] };
}

type Unit = Pick<CryptoUnit, 'unitId' | 'selected' | 'current' | 'next'>;
interface UnitCase {
  unit: Unit;
  current: Holds;
  next: Holds;
  selected: boolean;
}

const UNIT_IDS = ['hsm-1', 'hsm-2', 'hsm-3'] as const;

/** The 50 unit states of the alphabet, built once for each position (decideRecovery is pure: shared objects are fine). */
const ALPHABET_BY_POSITION: UnitCase[][] = UNIT_IDS.map((unitId) => {
  const states: UnitCase[] = [];
  for (const current of CURRENT_ALPHABET) {
    for (const next of NEW_ALPHABET) {
      for (const selected of [true, false]) {
        states.push({ unit: { unitId, selected, current: register(current), next: register(next) }, current, next, selected });
      }
    }
  }
  return states;
});
const PER_UNIT = ALPHABET_BY_POSITION[0]!.length;

interface Case {
  checkpoint: Checkpoint;
  state: RecoveryState;
  cases: UnitCase[];
  units: Unit[];
}

/** Calls `visit` with every checkpoint × every set of 1, 2 and 3 units of the alphabet. */
function forEachCase(visit: (c: Case) => void): number {
  let count = 0;
  for (const checkpoint of CHECKPOINTS) {
    const state: RecoveryState = { checkpoint, currentVp: C, newVp: N };
    const visitSet = (cases: UnitCase[]) => {
      count += 1;
      visit({ checkpoint, state, cases, units: cases.map((c) => c.unit) });
    };
    const [p1, p2, p3] = ALPHABET_BY_POSITION as [UnitCase[], UnitCase[], UnitCase[]];
    for (const a of p1) {
      visitSet([a]);
      for (const b of p2) {
        visitSet([a, b]);
        for (const c of p3) visitSet([a, b, c]);
      }
    }
  }
  return count;
}

const EXPECTED_CASES = CHECKPOINTS.length * (PER_UNIT + PER_UNIT ** 2 + PER_UNIT ** 3);

// ---------------------------------------------------------------------------------------------
// The rules of reference 002, written out plainly (independently of the function under test).
// ---------------------------------------------------------------------------------------------

/** Stage 2 done, stage 3 not yet: the new MK waits in the new register, the old one is current. */
const isWaiting = (u: UnitCase) => u.current === 'C' && u.next === 'N';
/** Stage 3 done on this unit: the new MK was moved to the current register and the new register cleared. */
const isPromoted = (u: UnitCase) => u.current === 'N' && u.next === 'empty';

type Expected =
  | { action: 'restart' | 'reencrypt' | 'finish' }
  | { action: 'promote'; deselect: string[]; select: string[] }
  /** `offending`: the units whose registers (or selection) made the case fit no rule: the reason must show them. */
  | { action: 'needs-operator'; offending: UnitCase[]; selectionMatters: boolean };

function expectedDecision(checkpoint: Checkpoint, units: UnitCase[]): Expected {
  switch (checkpoint) {
    // Neither "Delaying 30 seconds…" nor "KMS CRK rewrap successful…": key storage was not
    // touched, so running the whole rotation again (a fresh new MK overwrites the new
    // registers) is the reference's recovery, whatever the registers hold.
    case 'none':
    case 'prechecked':
      return { action: 'restart' };

    // First message only: re-encryption may have started under the loaded new MK. Re-run
    // re-encryption only (cryptounit-mk-rotate), keeping that value — but only when every unit
    // still holds it (current C, new N) and is selected, so the command acts on all of them.
    // Anything else: the value key storage may partly be under is not where it must be: ask.
    case 'new-mk-loaded': {
      const offending = units.filter((u) => !(u.selected && isWaiting(u)));
      return offending.length === 0 ? { action: 'reencrypt' } : { action: 'needs-operator', offending, selectionMatters: true };
    }

    // Both messages: only promotion remains. Units already promoted are taken out of the
    // selection (cryptounit-rm), units still waiting are promoted (cryptounit-mk-setimm), so
    // waiting units that are not selected are put back in. All promoted: nothing left to do.
    // A unit neither waiting nor promoted fits no rule of the reference: ask.
    case 'reencrypted':
    case 'promoting': {
      const offending = units.filter((u) => !isWaiting(u) && !isPromoted(u));
      if (offending.length > 0) return { action: 'needs-operator', offending, selectionMatters: false };
      if (units.every(isPromoted)) return { action: 'finish' };
      return {
        action: 'promote',
        deselect: units.filter((u) => u.selected && isPromoted(u)).map((u) => u.unit.unitId),
        select: units.filter((u) => !u.selected && isWaiting(u)).map((u) => u.unit.unitId),
      };
    }

    // The rotation completed: only "every unit promoted" is consistent with that.
    case 'done': {
      const offending = units.filter((u) => !isPromoted(u));
      return offending.length === 0 ? { action: 'finish' } : { action: 'needs-operator', offending, selectionMatters: false };
    }
  }
}

/** How a register must appear in the evidence: its VP when valid, else its state. */
const shown = (holds: Holds) => (holds === 'empty' || holds === 'invalid' ? holds : VP_OF[holds]);

/** The part of `reason` that talks about `unitId` (up to the next unit named), or undefined. */
function segmentAbout(reason: string, unitId: string): string | undefined {
  const at = reason.indexOf(unitId);
  if (at < 0) return undefined;
  const rest = reason.slice(at + unitId.length);
  const nextUnit = Math.min(...UNIT_IDS.map((id) => rest.indexOf(id)).filter((i) => i >= 0), rest.length);
  return rest.slice(0, nextUnit);
}

const render = (c: Case) =>
  `checkpoint ${c.checkpoint}; ` +
  c.cases.map((u) => `${u.unit.unitId}${u.selected ? '' : ' (not selected)'} current ${u.current} new ${u.next}`).join(', ');

/** Undefined when `got` is the expected decision (action, and for promote the units moved), otherwise why not. */
function wrongDecision(want: Expected, got: RecoveryDecision): string | undefined {
  if (typeof got.reason !== 'string' || got.reason.trim() === '') return `empty reason (action ${got.action})`;
  if (got.action !== want.action) return `got ${got.action}, expected ${want.action} ("${got.reason}")`;
  if (want.action === 'promote' && got.action === 'promote') {
    const sorted = (ids: string[]) => JSON.stringify([...ids].sort());
    if (sorted(got.deselect) !== sorted(want.deselect)) return `promote deselect ${JSON.stringify(got.deselect)}, expected ${JSON.stringify(want.deselect)}`;
    if (sorted(got.select) !== sorted(want.select)) return `promote select ${JSON.stringify(got.select)}, expected ${JSON.stringify(want.select)}`;
  }
  return undefined;
}

/**
 * Undefined when a needs-operator reason shows the evidence: every unit that made the case fit
 * no rule, named, with what each of its registers holds (and, at 'new-mk-loaded', that it is not
 * selected when that is what is wrong).
 */
function missingEvidence(want: Expected, got: RecoveryDecision): string | undefined {
  if (want.action !== 'needs-operator' || got.action !== 'needs-operator') return undefined;
  for (const u of want.offending) {
    const about = segmentAbout(got.reason, u.unit.unitId);
    if (about === undefined) return `needs-operator reason does not name ${u.unit.unitId} (current ${u.current}, new ${u.next}): "${got.reason}"`;
    for (const holds of [u.current, u.next]) {
      if (!about.includes(shown(holds))) return `needs-operator reason does not show ${shown(holds)} for ${u.unit.unitId}: "${got.reason}"`;
    }
    if (want.selectionMatters && !u.selected && !/not selected/i.test(about)) {
      return `needs-operator reason does not say ${u.unit.unitId} is not selected: "${got.reason}"`;
    }
  }
  return undefined;
}

/** Collects failures (the first few in full, and a count) so one assertion reports them all. */
function collector() {
  const failures: string[] = [];
  let total = 0;
  return {
    fail(c: Case, why: string) {
      total += 1;
      if (failures.length < 12) failures.push(`${render(c)}: ${why}`);
    },
    assertNone(what: string) {
      assert.equal(total, 0, `${total} case(s) where ${what}; first ones:\n${failures.join('\n')}`);
    },
  };
}

/**
 * One pass over every case (decideRecovery called once each), checking every property; each
 * test below asserts its own property. Computed on first use and shared, so the file runs in a
 * few seconds rather than one full sweep per test.
 */
let sweepResult: ReturnType<typeof runSweep> | undefined;
const sweep = () => (sweepResult ??= runSweep());

function runSweep() {
  const table = collector();
  const evidence = collector();
  const restartAfterLoad = collector();
  const reencryptAfterReencrypted = collector();
  const promoteBeforeReencrypted = collector();
  const forbiddenAction = collector();
  const promoteSelection = collector();
  const seen = new Set<string>();
  const count = forEachCase((c) => {
    const got = decideRecovery(c.state, c.units);
    const want = expectedDecision(c.checkpoint, c.cases);
    seen.add(`${c.checkpoint}:${got.action}`);

    const wrong = wrongDecision(want, got);
    if (wrong) table.fail(c, wrong);
    const missing = missingEvidence(want, got);
    if (missing) evidence.fail(c, missing);

    if (reached(c.checkpoint, 'new-mk-loaded') && got.action === 'restart') restartAfterLoad.fail(c, `restart ("${got.reason}")`);
    if (reached(c.checkpoint, 'reencrypted') && got.action === 'reencrypt') reencryptAfterReencrypted.fail(c, `reencrypt ("${got.reason}")`);
    if (!reached(c.checkpoint, 'reencrypted') && (got.action === 'promote' || got.action === 'finish')) {
      promoteBeforeReencrypted.fail(c, `${got.action} ("${got.reason}")`);
    }
    if (got.action !== 'needs-operator') {
      const why = forbiddenReason(c.checkpoint, got.action);
      if (why !== undefined) forbiddenAction.fail(c, `${got.action}, forbidden: ${why}`);
    }
    if (got.action === 'promote') {
      // The units set-immediate will act on once the selection is changed as decided.
      const after = c.cases.filter((u) => (u.selected && !got.deselect.includes(u.unit.unitId)) || got.select.includes(u.unit.unitId));
      if (after.length === 0) promoteSelection.fail(c, 'the selection is empty after the promote');
      if (after.some((u) => !isWaiting(u))) promoteSelection.fail(c, `the selection then holds a unit that is not waiting: ${after.map((u) => u.unit.unitId).join(', ')}`);
      if (c.cases.some((u) => isWaiting(u) && !after.includes(u))) promoteSelection.fail(c, 'a waiting unit is left out of the promote');
    }
  });
  return { count, seen, table, evidence, restartAfterLoad, reencryptAfterReencrypted, promoteBeforeReencrypted, forbiddenAction, promoteSelection };
}

describe('decideRecovery: exhaustive table against reference 002', () => {
  it(`every checkpoint × every 1-, 2- and 3-unit register set (${EXPECTED_CASES} cases) gets the reference's decision`, () => {
    const { count, table } = sweep();
    assert.equal(count, EXPECTED_CASES);
    table.assertNone('the decision differs from the rules of reference 002');
  });

  it("every 'needs-operator' reason shows the evidence: each unit that fits no rule, with its registers", () => {
    sweep().evidence.assertNone('the needs-operator reason leaves out evidence');
  });

  it('the table reaches every decision (the alphabet is not degenerate)', () => {
    const { seen } = sweep();
    for (const key of [
      'none:restart',
      'prechecked:restart',
      'new-mk-loaded:reencrypt',
      'new-mk-loaded:needs-operator',
      'reencrypted:promote',
      'reencrypted:finish',
      'reencrypted:needs-operator',
      'promoting:promote',
      'promoting:finish',
      'promoting:needs-operator',
      'done:finish',
      'done:needs-operator',
    ]) {
      assert.ok(seen.has(key), `no case decided ${key}`);
    }
  });
});

describe('decideRecovery: safety properties over every case', () => {
  it("never 'restart' once the new MK is loaded (a new value makes key storage unusable)", () => {
    sweep().restartAfterLoad.assertNone("restart is decided after 'new-mk-loaded'");
  });

  it("never 'reencrypt' once key storage is re-encrypted (promotion may have begun)", () => {
    sweep().reencryptAfterReencrypted.assertNone("reencrypt is decided after 'reencrypted'");
  });

  it("never 'promote' or 'finish' before key storage is re-encrypted", () => {
    sweep().promoteBeforeReencrypted.assertNone("promote or finish is decided before 'reencrypted'");
  });

  it('never an action that forbiddenReason(checkpoint, action) forbids', () => {
    sweep().forbiddenAction.assertNone('the decision is an action forbiddenReason refuses');
  });

  it('a promote acts on exactly the waiting units: never an empty selection, never a unit that is not waiting', () => {
    sweep().promoteSelection.assertNone('a promote acts on the wrong units');
  });
});

describe('decideRecovery: recorded verification patterns that fit no rule', () => {
  // 1 and 2 units of the full alphabet: the point is the recorded state, not the unit count.
  const smallSets: UnitCase[][] = [];
  for (const a of ALPHABET_BY_POSITION[0]!) {
    smallSets.push([a]);
    for (const b of ALPHABET_BY_POSITION[1]!) smallSets.push([a, b]);
  }

  it('with no recorded new-MK (or current-MK) verification pattern after stage 1, always asks the operator', () => {
    for (const checkpoint of CHECKPOINTS.filter((cp) => reached(cp, 'new-mk-loaded'))) {
      for (const state of [
        { checkpoint, currentVp: C, newVp: undefined },
        { checkpoint, currentVp: undefined, newVp: N },
      ] satisfies RecoveryState[]) {
        for (const cases of smallSets) {
          const d = decideRecovery(state, cases.map((u) => u.unit));
          // Without N (or C) no register can be shown to hold the right value: only the operator
          // can tell — except that "finish" needs only N (a missing C cannot hide a promoted set).
          const allowed = state.newVp !== undefined && cases.every(isPromoted) ? ['finish', 'needs-operator'] : ['needs-operator'];
          assert.ok(allowed.includes(d.action), `${JSON.stringify(state)} ${cases.map((u) => `${u.unit.unitId} ${u.current}/${u.next}`).join(', ')}: got ${d.action}`);
        }
      }
    }
  });

  it('no crypto unit observed after stage 1: asks the operator', () => {
    for (const checkpoint of CHECKPOINTS.filter((cp) => reached(cp, 'new-mk-loaded'))) {
      const d = decideRecovery({ checkpoint, currentVp: C, newVp: N }, []);
      assert.equal(d.action, 'needs-operator', checkpoint);
      assert.ok(d.reason.length > 0);
    }
  });

  it('a recorded new-MK VP equal to the current one never leads to reencrypt, promote or finish (reference 002: promote only when the current registers hold a *different* VP)', () => {
    // With C = N, "current V, new V" and "current V, new empty" cannot show whether the new
    // value was ever loaded or moved: the reference's condition for set-immediate ("current
    // registers Valid with a different same verification pattern") does not hold.
    const problems: string[] = [];
    for (const checkpoint of CHECKPOINTS.filter((cp) => reached(cp, 'new-mk-loaded'))) {
      const state: RecoveryState = { checkpoint, currentVp: C, newVp: C };
      for (const cases of smallSets) {
        const d = decideRecovery(state, cases.map((u) => u.unit));
        if (d.action !== 'needs-operator' && problems.length < 10) {
          problems.push(`checkpoint ${checkpoint}, currentVp = newVp = ${C}; ${cases.map((u) => `${u.unit.unitId}${u.selected ? '' : ' (not selected)'} current ${u.current} new ${u.next}`).join(', ')}: got ${d.action}`);
        }
      }
    }
    assert.deepEqual(problems, []);
  });
});

describe('forbiddenReason', () => {
  /** DESIGN.md / reference 002, written out: which action is never safe from which checkpoint on (or before). */
  const forbidden: Record<Checkpoint, readonly RecoveryActionName[]> = {
    // Not in DESIGN.md's table, a safeguard on top: before stage 1 there is no recorded new MK to
    // re-encrypt towards.
    none: ['reencrypt', 'promote', 'finish'],
    prechecked: ['reencrypt', 'promote', 'finish'],
    'new-mk-loaded': ['restart', 'promote', 'finish'],
    reencrypted: ['restart', 'reencrypt'],
    promoting: ['restart', 'reencrypt'],
    done: ['restart', 'reencrypt'],
  };

  it('forbids exactly the actions of the table, with a human-readable reason; abort is never forbidden', () => {
    for (const checkpoint of CHECKPOINTS) {
      for (const action of ACTIONS) {
        const why = forbiddenReason(checkpoint, action);
        const label = `${action} at ${checkpoint}`;
        if (!forbidden[checkpoint].includes(action)) {
          assert.equal(why, undefined, `${label} should be allowed, got "${why}"`);
          continue;
        }
        assert.equal(typeof why, 'string', `${label} should be forbidden`);
        const text = why!;
        assert.ok(text.trim().length >= 30, `${label}: reason too short: "${text}"`);
        assert.ok(text.trim().split(/\s+/).length >= 6, `${label}: reason is not a sentence: "${text}"`);
        assert.match(text, /^[A-Za-z]/, `${label}: reason does not start with a word: "${text}"`);
        assert.doesNotMatch(text, /undefined|null|\[object|NaN|\$\{/, `${label}: reason has a rendering artefact: "${text}"`);
        assert.match(text, /key storage/i, `${label}: reason does not say what is at risk: "${text}"`);
      }
      assert.equal(forbiddenReason(checkpoint, 'abort'), undefined, `abort at ${checkpoint}`);
    }
  });

  it('restart is refused with the reference\'s warning once the new MK is loaded', () => {
    for (const checkpoint of CHECKPOINTS.filter((cp) => reached(cp, 'new-mk-loaded'))) {
      assert.match(forbiddenReason(checkpoint, 'restart') ?? '', /unusable/i, checkpoint);
    }
  });
});

describe('named examples from reference 002', () => {
  const unit = (unitId: string, current: Holds, next: Holds, selected = true): Unit => ({ unitId, selected, current: register(current), next: register(next) });
  const at = (checkpoint: Checkpoint): RecoveryState => ({ checkpoint, currentVp: C, newVp: N });

  it('neither message present: run the rotation again (auto-mk-rotate), even if some new registers were already loaded', () => {
    for (const checkpoint of ['none', 'prechecked'] as const) {
      assert.equal(decideRecovery(at(checkpoint), [unit('a', 'C', 'empty'), unit('b', 'C', 'empty')]).action, 'restart');
      // The load failed half-way: "Rerunning … overwrites the previous value".
      assert.equal(decideRecovery(at(checkpoint), [unit('a', 'C', 'N'), unit('b', 'C', 'empty')]).action, 'restart');
      assert.equal(forbiddenReason(checkpoint, 'restart'), undefined);
    }
  });

  it('first message only: re-encrypt only (cryptounit-mk-rotate), never auto-mk-rotate again', () => {
    const d = decideRecovery(at('new-mk-loaded'), [unit('a', 'C', 'N'), unit('b', 'C', 'N'), unit('c', 'C', 'N')]);
    assert.equal(d.action, 'reencrypt');
    assert.ok(forbiddenReason('new-mk-loaded', 'restart'), 'rerunning auto-mk-rotate must be refused');
    assert.equal(forbiddenReason('new-mk-loaded', 'reencrypt'), undefined);
    // One new register lost its value: the value key storage may be partly under is not on every unit.
    const lost = decideRecovery(at('new-mk-loaded'), [unit('a', 'C', 'N'), unit('b', 'C', 'empty')]);
    assert.equal(lost.action, 'needs-operator');
    assert.match(lost.reason, /b/);
  });

  it('both messages, no unit promoted yet: promote (cryptounit-mk-setimm) with the selection as it is', () => {
    for (const checkpoint of ['reencrypted', 'promoting'] as const) {
      const d = decideRecovery(at(checkpoint), [unit('a', 'C', 'N'), unit('b', 'C', 'N')]);
      assert.equal(d.action, 'promote');
      assert.ok(d.action === 'promote');
      assert.deepEqual(d.deselect, []);
      assert.deepEqual(d.select, []);
    }
  });

  it('both messages, some units already promoted: take those out of the selection (cryptounit-rm), then promote the rest', () => {
    for (const checkpoint of ['reencrypted', 'promoting'] as const) {
      const d = decideRecovery(at(checkpoint), [unit('a', 'N', 'empty'), unit('b', 'C', 'N'), unit('c', 'N', 'empty')]);
      assert.equal(d.action, 'promote');
      assert.ok(d.action === 'promote');
      assert.deepEqual([...d.deselect].sort(), ['a', 'c']);
      assert.deepEqual(d.select, []);
      // A waiting unit that an earlier attempt took out of the selection is put back in.
      const back = decideRecovery(at(checkpoint), [unit('a', 'N', 'empty'), unit('b', 'C', 'N', false)]);
      assert.ok(back.action === 'promote', back.action);
      assert.deepEqual(back.deselect, ['a']);
      assert.deepEqual(back.select, ['b']);
    }
  });

  it('both messages, every unit promoted: finish', () => {
    for (const checkpoint of ['reencrypted', 'promoting', 'done'] as const) {
      assert.equal(decideRecovery(at(checkpoint), [unit('a', 'N', 'empty'), unit('b', 'N', 'empty')]).action, 'finish');
    }
  });

  it('both messages, a unit holding neither value: the operator decides, shown the unit', () => {
    const d = decideRecovery(at('promoting'), [unit('a', 'N', 'empty'), unit('b', 'X', 'N')]);
    assert.equal(d.action, 'needs-operator');
    assert.match(d.reason, /\bb\b/);
    assert.match(d.reason, new RegExp(X));
  });
});
