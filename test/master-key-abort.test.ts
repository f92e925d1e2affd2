import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { WorkflowHandle } from '@temporalio/client';
import type { temporal } from '@temporalio/proto';
import { RotationLedger } from '../activities/crypto-units/rotation-ledger';
import { rotateMasterKey, rotateRootKey } from '../workflows';
import { decideRecoveryUpdate, masterKeyRotationQuery, masterKeyRotationWorkflowId } from '../workflows/master-key-messages';
import { rewrapProgressQuery, rewrapWorkflowId } from '../workflows/root-key-messages';
import { OutcomeAttribute, PhaseAttribute } from '../workflows/search-attributes';
import { localWorker } from './helpers/local-activities';
import { useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';
import { failsWith } from './helpers/workflow-failures';

type HistoryEvent = temporal.api.history.v1.IHistoryEvent;

const events = async (handle: WorkflowHandle): Promise<HistoryEvent[]> => (await handle.fetchHistory()).events ?? [];
const activityName = (e: HistoryEvent) => e.activityTaskScheduledEventAttributes?.activityType?.name ?? undefined;
const signalsOf = (history: HistoryEvent[]) => history.flatMap((e) => e.workflowExecutionSignaledEventAttributes?.signalName ?? []);

/** What each completed call of `activity` returned, in order, decoded from the run's history (JSON payloads). */
function resultsOf(history: HistoryEvent[], activity: string): unknown[] {
  const scheduled = new Set(history.filter((e) => activityName(e) === activity).map((e) => String(e.eventId)));
  return history.flatMap((e) => {
    const done = e.activityTaskCompletedEventAttributes;
    if (!done || !scheduled.has(String(done.scheduledEventId))) return [];
    const data = done.result?.payloads?.[0]?.data;
    return [data ? (JSON.parse(Buffer.from(data).toString('utf8')) as unknown) : undefined];
  });
}

const UNIT_SET = 'kms-hsm';
const ENTRIES = 16;

/**
 * The operator's `abort` of a master-key rotation stopped in needs-operator. Documented (CLI help
 * of `keyops mk decide`, master-key-recovery.ts): "stop and change nothing; the registers stay as
 * they are"; the workflow releases its claim on the unit set and fails ABORTED_BY_OPERATOR, and
 * tells every run it held that it ended.
 */
describe('rotateMasterKey aborted by the operator', () => {
  const suite = useSuiteFixture('master-key-abort');

  it('abort in needs-operator: fails ABORTED_BY_OPERATOR, changes no register or selection, releases the claim and the held rewrap; a new rotation is refused by the registers, not the claim', async () => {
    // The set is the one under the KMS's key storage: rewraps wait for its rotations.
    const s = await localWorker(suite.env, join(suite.dir, 'abort'), 'mk-abort', UNIT_SET);
    const set = s.unitSets.create(UNIT_SET, { units: 3, entries: ENTRIES });
    // Promotion of unit 2 fails every time: three automatic recoveries, then needs-operator.
    for (let i = 0; i < 4; i++) set.injectFault({ step: 'promote', unitId: '2', timing: 'before', action: 'fatal' });
    const { keyId } = await s.kms.createKey({ name: 'held-by-mk' });
    const wdeks = [];
    for (let i = 0; i < 20; i++) {
      const { wdek, keyVersion } = await s.kms.wrap(keyId);
      wdeks.push({ id: `app/${String(i).padStart(3, '0')}`, keyId, keyVersion, wdek, owner: 'app' });
    }
    s.registry.registerMany(wdeks);
    s.registry.setRewrappedVersion(keyId, 1);
    const ledger = RotationLedger.open(join(s.dataDir, 'ledger', 'mk-rotations.sqlite'));
    const workflowId = masterKeyRotationWorkflowId(UNIT_SET, 'to-abort');

    await s.worker.runUntil(async () => {
      const handle = await suite.client.workflow.start(rotateMasterKey, { taskQueue: s.taskQueue, workflowId, args: [{ unitSetId: UNIT_SET, requestId: 'to-abort' }] });
      const stopped = await waitUntil('the rotation to stop in needs-operator', async () => {
        const state = await handle.query(masterKeyRotationQuery);
        return state.phase === 'needs-operator' ? state : undefined;
      });
      assert.equal(stopped.checkpoint, 'promoting');

      // A rewrap of a key in that key storage is held by the rotation and asks it to say when it ends.
      const rewrap = await suite.client.workflow.start(rotateRootKey, {
        taskQueue: s.taskQueue,
        workflowId: rewrapWorkflowId(keyId, 2),
        args: [{ keyId, targetVersion: 2, rotate: true, parallelism: 1 }],
      });
      await waitUntil('the rewrap to be held and registered with the rotation', async () =>
        (await rewrap.query(rewrapProgressQuery)).heldBy !== undefined && signalsOf(await events(handle)).includes('awaitMasterKeyRotation') ? true : undefined,
      );

      const unitsBefore = await set.listUnits();
      const storageBefore = await set.checkKeyStorage();
      assert.deepEqual(unitsBefore, stopped.evidence?.units, 'the registers are as the evidence shows them');
      assert.ok(unitsBefore.some((u) => u.next.state === 'valid'), 'the abort finds new master keys loaded');
      assert.equal(ledger.get(UNIT_SET)?.owner, workflowId, 'the rotation holds the unit set');

      assert.deepEqual(await handle.executeUpdate(decideRecoveryUpdate, { args: [{ action: 'abort', operator: 'ops-test', note: 'vendor replaces unit 2' }] }), { accepted: 'abort' });
      const failure = await failsWith(handle.result(), 'ABORTED_BY_OPERATOR', 'an aborted master-key rotation');
      assert.equal(failure.nonRetryable, true);
      assert.equal(failure.message, `master-key rotation of ${UNIT_SET} aborted by ops-test`);

      const description = await handle.describe();
      assert.equal(description.status.name, 'FAILED');
      assert.equal(description.typedSearchAttributes.get(OutcomeAttribute), 'failed');
      assert.equal(description.typedSearchAttributes.get(PhaseAttribute), 'failed');
      const final = await handle.query(masterKeyRotationQuery);
      assert.deepEqual(
        { phase: final.phase, checkpoint: final.checkpoint, decisions: final.decisions },
        { phase: 'failed', checkpoint: 'promoting', decisions: [{ action: 'abort', operator: 'ops-test', note: 'vendor replaces unit 2' }] },
      );
      // After the decision the run did one thing: released its claim.
      const history = await events(handle);
      const decided = history.findIndex((e) => e.workflowExecutionUpdateAcceptedEventAttributes);
      assert.ok(decided > 0, 'the decision is in the history');
      assert.deepEqual(history.slice(decided).flatMap((e) => activityName(e) ?? []), ['releaseMasterKeyRotation']);

      // Nothing changed: registers, selection and key storage are as the operator saw them.
      assert.deepEqual(await set.listUnits(), unitsBefore);
      assert.deepEqual(await set.checkKeyStorage(), storageBefore);
      assert.equal(ledger.get(UNIT_SET), undefined, 'the claim on the unit set is released');

      // The held rewrap is told the rotation ended; the registers still show one, so it holds again
      // (polling now: nobody holds the claim) and no WDEK moves.
      const rewrapHistory = await waitUntil('the held rewrap to be told, and to hold again', async () => {
        const h = await events(rewrap);
        return signalsOf(h).includes('masterKeyRotationEnded') && resultsOf(h, 'registerMasterKeyWaiter').length >= 2 ? h : undefined;
      });
      assert.deepEqual(resultsOf(rewrapHistory, 'registerMasterKeyWaiter'), ['signal', 'poll']);
      assert.match((await rewrap.query(rewrapProgressQuery)).heldBy ?? '', /hold a new master key/);
      assert.deepEqual(s.registry.countBelowVersion(keyId, 2), { total: 20, below: 20 }, 'no WDEK moved');
      await rewrap.terminate('test finished');

      // A new rotation is refused by its pre-check because of the loaded registers, no longer by
      // a claim, and changes nothing either.
      const next = suite.client.workflow.execute(rotateMasterKey, {
        taskQueue: s.taskQueue,
        workflowId: masterKeyRotationWorkflowId(UNIT_SET, 'after-abort'),
        args: [{ unitSetId: UNIT_SET, requestId: 'after-abort' }],
      });
      const refused = await failsWith(next, 'PRECHECK_FAILED', 'a rotation after the abort');
      assert.match(refused.message, /still hold a new master key from an unfinished rotation/);
      assert.doesNotMatch(refused.message, /holds this unit set/);
      assert.deepEqual(await set.listUnits(), unitsBefore);
      assert.equal(ledger.get(UNIT_SET), undefined);
    });
    ledger.close();
  });
});
