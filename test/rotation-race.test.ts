import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { type WorkflowHandleWithFirstExecutionRunId, WorkflowExecutionAlreadyStartedError } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { applyRotationSchedule, rotationScheduleId } from '../client/schedules/root-key-rotation-schedule';
import { rotateRootKey, type rotateRootKeyOnSchedule } from '../workflows';
import { keyEntityWorkflowId, keyStateQuery, rewrapProgressQuery, rewrapWorkflowId } from '../workflows/root-key-messages';
import { OutcomeAttribute } from '../workflows/search-attributes';
import { holdableKms } from './helpers/held-kms';
import { localActivities } from './helpers/local-activities';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';

const COUNT = 30;
const StartChildFailedCause = temporal.api.enums.v1.StartChildWorkflowExecutionFailedCause;

/** A key with COUNT WDEKs on version 1, rewrapped to 1; a worker whose KMS calls the test can hold. */
async function setup(dir: string, label: string, env: Parameters<typeof createTestWorker>[0]) {
  const kms = LocalKms.open({ path: join(dir, 'kms.sqlite'), masterSecret: randomBytes(32) });
  const registry = SqliteWdekRegistry.open(join(dir, 'wdeks.sqlite'));
  const { keyId } = await kms.createKey({ name: `race-${label}` });
  const deks = new Map<string, Buffer>();
  const records = [];
  for (let i = 0; i < COUNT; i++) {
    const id = `app/${String(i).padStart(4, '0')}`;
    const { wdek, dek, keyVersion } = await kms.wrap(keyId);
    deks.set(id, dek);
    records.push({ id, keyId, keyVersion, wdek, owner: 'app' });
  }
  registry.registerMany(records);
  registry.setRewrappedVersion(keyId, 1);
  const holdable = holdableKms(kms);
  const taskQueue = uniqueTaskQueue(label);
  const worker = await createTestWorker(env, { taskQueue, activities: localActivities({ dataDir: dir, kms: holdable.kms, registry }).activities });
  return { kms, registry, keyId, deks, holdable, taskQueue, worker };
}

/** Exactly one new version in the KMS, and every WDEK on it, unwrapping to its own DEK. */
async function assertOneRotation(s: Awaited<ReturnType<typeof setup>>) {
  assert.deepEqual((await s.kms.getKeyMetadata(s.keyId)).versions.map((v) => v.version), [1, 2], 'exactly one new version');
  assert.equal(s.registry.getRewrappedVersion(s.keyId), 2);
  const records = s.registry.list(s.keyId, {}, COUNT + 1);
  assert.equal(records.length, COUNT);
  for (const r of records) {
    const { dek, keyVersion } = await s.kms.unwrap(s.keyId, r.wdek);
    assert.deepEqual([r.keyVersion, keyVersion, dek.equals(s.deks.get(r.id)!)], [2, 2, true], r.id);
  }
}

/**
 * A scheduled rotation (the key's rotation schedule, triggered) and a manual one (what `keyops key
 * rotate` starts: rotateRootKey under rewrap/<key>/v<current + 1>) that both read the key at
 * version 1 and so both go for version 2. The workflow id rewrap/<key>/v2 lets only one of them
 * rotate; the other waits for that run. Each order is forced by holding a KMS call at the moment
 * that decides it.
 */
describe('a scheduled rotation racing a manual one on the same key', () => {
  const suite = useSuiteFixture('rotation-race');

  /** Creates the key's rotation schedule (every 30 days), fires it now, and returns the run it started. */
  const fireSchedule = async (s: Awaited<ReturnType<typeof setup>>) => {
    await applyRotationSchedule(suite.client, { keyId: s.keyId, keyName: 'race', everyDays: 30, taskQueue: s.taskQueue });
    const schedule = suite.client.schedule.getHandle(rotationScheduleId(s.keyId));
    await schedule.trigger();
    const workflowId = await waitUntil('the schedule to start its rotation', async () => (await schedule.describe()).info.recentActions[0]?.action.workflow.workflowId);
    return { schedule, scheduled: suite.client.workflow.getHandle<typeof rotateRootKeyOnSchedule>(workflowId) };
  };

  /** What the manual caller does: read the key, start rotateRootKey under the id of the next version. */
  const startManual = async (s: Awaited<ReturnType<typeof setup>>): Promise<WorkflowHandleWithFirstExecutionRunId<typeof rotateRootKey>> => {
    const targetVersion = (await s.kms.getKeyMetadata(s.keyId)).currentVersion + 1;
    return suite.client.workflow.start(rotateRootKey, { taskQueue: s.taskQueue, workflowId: rewrapWorkflowId(s.keyId, targetVersion), args: [{ keyId: s.keyId, targetVersion, rotate: true }] });
  };

  it('the manual rotation starts rewrap/<key>/v2 first: the scheduled run, which read version 1 too, waits for it instead of rotating', async () => {
    const s = await setup(join(suite.dir, 'manual-first'), 'race-manual-first', suite.env);
    const rewrapId = rewrapWorkflowId(s.keyId, 2);
    await s.worker.runUntil(async () => {
      // The scheduled run's first read of the key is answered (version 1) but the answer is held.
      const read = s.holdable.hold('getKeyMetadata', { calls: 1, answerFirst: true });
      // The manual run's rewrap stops at its first batch, so both runs are in flight together.
      const batches = s.holdable.hold('rewrapBatch');
      const { schedule, scheduled } = await fireSchedule(s);
      await waitUntil('the scheduled run to have read the key', () => (read.reached === 1 ? true : undefined));

      const manual = await startManual(s);
      assert.equal(manual.workflowId, rewrapId);
      await waitUntil('the manual run to rotate and reach its first batch', async () =>
        (await manual.query(rewrapProgressQuery)).phase === 'rewrapping' && batches.reached > 0 ? true : undefined,
      );
      assert.equal((await s.kms.getKeyMetadata(s.keyId)).currentVersion, 2, 'the manual run rotated');

      // The scheduled run now acts on its read of version 1: it goes for v2 as well.
      read.release();
      const entity = suite.client.workflow.getHandle(keyEntityWorkflowId(s.keyId));
      await waitUntil('the scheduled run to wait for the manual rewrap', async () =>
        (await entity.query(keyStateQuery)).waiters.some((w) => w.workflowId === `${scheduled.workflowId}/await-rewrap-v2` && w.minVersion === 2) ? true : undefined,
      );
      batches.release();

      const [manualResult, scheduledResult] = await Promise.all([manual.result(), scheduled.result()]);
      assert.deepEqual(
        { phase: manualResult.phase, targetVersion: manualResult.targetVersion, rotated: manualResult.rotated, verified: manualResult.verified },
        { phase: 'done', targetVersion: 2, rotated: true, verified: COUNT },
      );
      assert.deepEqual(scheduledResult, { keyId: s.keyId, phase: 'done', fromVersion: 1, toVersion: 2, rotated: false, rewrapped: 0 }, 'done at version 2, by the other run');
      for (const handle of [manual, scheduled]) assert.equal((await handle.describe()).typedSearchAttributes.get(OutcomeAttribute), 'succeeded', handle.workflowId);

      // Its start of rewrap/<key>/v2 was refused because the manual run held the id; one run of it exists.
      const refused = ((await scheduled.fetchHistory()).events ?? []).flatMap((e) => e.startChildWorkflowExecutionFailedEventAttributes ?? []);
      assert.deepEqual(
        refused.map((f) => [f.workflowId, f.cause]),
        [[rewrapId, StartChildFailedCause.START_CHILD_WORKFLOW_EXECUTION_FAILED_CAUSE_WORKFLOW_ALREADY_EXISTS]],
      );
      assert.equal((await suite.client.workflow.getHandle(rewrapId).describe()).runId, manual.firstExecutionRunId, 'the manual run is the only rewrap to v2');
      await schedule.delete();
      await entity.terminate('test finished');
    });
    await assertOneRotation(s);
  });

  it('the scheduled rotation starts rewrap/<key>/v2 first: the manual start of the same id is refused, and the caller follows the scheduled rewrap to the same result', async () => {
    const s = await setup(join(suite.dir, 'schedule-first'), 'race-schedule-first', suite.env);
    const rewrapId = rewrapWorkflowId(s.keyId, 2);
    await s.worker.runUntil(async () => {
      // The KMS rotation of the scheduled run's rewrap is in flight (not yet made) when the operator acts.
      const rotation = s.holdable.hold('rotateKey');
      const { schedule, scheduled } = await fireSchedule(s);
      await waitUntil('the scheduled rewrap to be rotating in the KMS', () => (rotation.reached === 1 ? true : undefined));

      const manual = await startManual(s).then(
        () => assert.fail('a second run under rewrap/<key>/v2 was started'),
        (err: unknown) => err,
      );
      assert.ok(manual instanceof WorkflowExecutionAlreadyStartedError, String(manual));
      assert.equal(manual.workflowId, rewrapId);
      // `keyops key rotate` then names the run that holds the id; the caller follows it.
      const followed = suite.client.workflow.getHandle<typeof rotateRootKey>(rewrapId);
      rotation.release();

      const [followedResult, scheduledResult] = await Promise.all([followed.result(), scheduled.result()]);
      assert.deepEqual(
        { phase: followedResult.phase, targetVersion: followedResult.targetVersion, rotated: followedResult.rotated, verified: followedResult.verified },
        { phase: 'done', targetVersion: 2, rotated: true, verified: COUNT },
      );
      assert.deepEqual(scheduledResult, { keyId: s.keyId, phase: 'done', fromVersion: 1, toVersion: 2, rotated: true, rewrapped: COUNT });
      const rewrap = await followed.describe();
      assert.equal(rewrap.parentExecution?.workflowId, scheduled.workflowId, 'the rewrap the caller followed is the scheduled run\'s child');
      assert.equal(rewrap.typedSearchAttributes.get(OutcomeAttribute), 'succeeded');
      assert.equal((await scheduled.describe()).typedSearchAttributes.get(OutcomeAttribute), 'succeeded');
      assert.equal(rotation.reached, 1, 'one rotation request reached the KMS');
      await schedule.delete();
      await suite.client.workflow.getHandle(keyEntityWorkflowId(s.keyId)).terminate('test finished');
    });
    await assertOneRotation(s);
  });
});
