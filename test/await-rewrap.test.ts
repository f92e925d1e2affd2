import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { localActivities } from './helpers/local-activities';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { awaitRewrap, rotateRootKey } from '../workflows';
import { keyEntityWorkflowId, keyStateQuery, rewrapCompleteSignal, rewrapWorkflowId } from '../workflows/root-key-messages';
import { recordHistory } from './helpers/record-history';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';

const EventType = temporal.api.enums.v1.EventType;
const eventMs = (e: temporal.api.history.v1.IHistoryEvent) => Number(e.eventTime?.seconds ?? 0) * 1000 + (e.eventTime?.nanos ?? 0) / 1e6;

/** No waiter is ever missed: before, during or after the rewrap, or with the signal lost. */
describe('awaitRewrap released by the key entity', () => {
  const suite = useSuiteFixture('await-rewrap');

  /** A fresh key at rewrapped version 1, with its own KMS, registry and task queue. */
  const freshKey = async (name: string) => {
    const kms = LocalKms.open({ path: join(suite.dir, `kms-${name}.sqlite`), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(suite.dir, `wdeks-${name}.sqlite`));
    const { keyId } = await kms.createKey({ name: `${name}-key` });
    registry.setRewrappedVersion(keyId, 1);
    const close = () => {
      registry.close();
      kms.close();
    };
    return { kms, registry, keyId, taskQueue: uniqueTaskQueue(`await-${name}`), entity: suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)), close };
  };

  it('releases waiters registered before, during and after the rewrap, the first by the announcement signal', async (t) => {
    const kms = LocalKms.open({ path: join(suite.dir, 'kms.sqlite'), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'wdeks.sqlite'));
    const { keyId } = await kms.createKey({ name: 'await-key' });
    for (let i = 0; i < 2000; i++) {
      const { wdek, keyVersion } = await kms.wrap(keyId);
      registry.register({ id: `w-${String(i).padStart(5, '0')}`, keyId, keyVersion, wdek, owner: 'await-test' });
    }
    registry.setRewrappedVersion(keyId, 1);
    const taskQueue = uniqueTaskQueue('await-rewrap');
    const worker = await createTestWorker(suite.env, {
      taskQueue,
      activities: localActivities({ dataDir: suite.dir, kms, registry }).activities,
    });
    const wait = (name: string, extra: Partial<Parameters<typeof awaitRewrap>[0]> = {}) =>
      suite.client.workflow.start(awaitRewrap, { taskQueue, workflowId: `await/${taskQueue}/${name}`, args: [{ keyId, minVersion: 2, ...extra }] });

    await worker.runUntil(async () => {
      const before = await wait('before');
      const entity = suite.client.workflow.getHandle(keyEntityWorkflowId(keyId));
      /** Returns once the key entity lists `workflowId` among its waiters: it registered, having seen the key not yet there. */
      const registered = (workflowId: string) =>
        waitUntil(`${workflowId} to register with the key entity`, async () => ((await entity.query(keyStateQuery)).waiters.some((w) => w.workflowId === workflowId) ? true : undefined));
      await registered(before.workflowId);
      const rotation = await suite.client.workflow.start(rotateRootKey, {
        taskQueue,
        workflowId: rewrapWorkflowId(keyId, 2),
        args: [{ keyId, targetVersion: 2, rotate: true, chunkSize: 500, batchSize: 100 }],
      });
      const during = await wait('during');
      await rotation.result();
      const after = await wait('after');

      const results = await Promise.all([before.result(), during.result(), after.result()]);
      assert.deepEqual(results.map((r) => r.version), [2, 2, 2]);
      assert.equal(results[0].releasedBy, 'signal');
      assert.equal(results[2].releasedBy, 'already-rewrapped');

      // Release latency: the announce activity completing → the waiter receiving the signal.
      const rotationEvents = (await rotation.fetchHistory()).events ?? [];
      const announced = rotationEvents.filter((e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED).pop()!;
      const signalled = ((await before.fetchHistory()).events ?? []).find((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)!;
      const latency = eventMs(signalled) - eventMs(announced);
      // Ordered after the announcement; how fast is bench:backup's to measure, not a test's.
      assert.ok(latency >= 0, `waiter signalled ${latency} ms after the announcement`);
      t.diagnostic(`announcement -> waiter signalled: ${latency} ms`);

      // The wait is bounded: a version that never comes fails the run with a typed error.
      const never = await suite.client.workflow
        .execute(awaitRewrap, { taskQueue, workflowId: `await/${taskQueue}/never`, args: [{ keyId, minVersion: 9, recheckEveryMs: 500, timeoutMs: 1500 }] })
        .catch((e: unknown) => e);
      assert.ok(never instanceof WorkflowFailedError);
      assert.ok(never.cause instanceof ApplicationFailure && never.cause.type === 'REWRAP_WAIT_TIMEOUT', String(never.cause));

      // A lost announcement: the registry says done, nobody signals; the re-check releases.
      const recheck = await suite.client.workflow.start(awaitRewrap, {
        taskQueue,
        workflowId: `await/${taskQueue}/recheck`,
        args: [{ keyId, minVersion: 4, recheckEveryMs: 500, timeoutMs: 30_000 }],
      });
      // Registered: its first look found the key below version 4, so only a re-check can release it.
      await registered(recheck.workflowId);
      registry.setRewrappedVersion(keyId, 4);
      const rechecked = await recheck.result();
      assert.equal(rechecked.releasedBy, 'recheck');
      await entity.terminate('test finished');
    });
    registry.close();
    kms.close();
  });

  it('releases every waiter of a version at once, by one local activity of the key entity, and keeps the waiters of a later version', async () => {
    const { kms, registry, keyId, taskQueue, entity, close } = await freshKey('together');
    const worker = await createTestWorker(suite.env, { taskQueue, activities: localActivities({ dataDir: suite.dir, kms, registry }).activities });
    await worker.runUntil(async () => {
      const waits = await Promise.all(
        [2, 2, 2, 2, 2, 3].map((minVersion, i) =>
          suite.client.workflow.start(awaitRewrap, { taskQueue, workflowId: `await/${taskQueue}/${i}`, args: [{ keyId, minVersion, recheckEveryMs: 3600_000 }] }),
        ),
      );
      await waitUntil('all six waiters registered with the key entity', async () => ((await entity.query(keyStateQuery)).waiters.length === 6 ? true : undefined));

      await entity.signal(rewrapCompleteSignal, { keyId, version: 2 });
      const released = await Promise.all(waits.slice(0, 5).map((w) => w.result()));
      assert.deepEqual(released.map((r) => [r.version, r.releasedBy]), Array(5).fill([2, 'signal']));
      // The version-3 waiter is still held, and still known to the entity.
      assert.deepEqual((await entity.query(keyStateQuery)).waiters.map((w) => [w.workflowId, w.minVersion]), [[waits[5]!.workflowId, 3]]);
      assert.equal((await waits[5]!.describe()).status.name, 'RUNNING');

      // All five were released by one local activity of the entity: the last waiter did not queue
      // behind the first four, and no signal went through the entity's own history.
      const events = (await entity.fetchHistory()).events ?? [];
      assert.equal(events.filter((e) => e.eventType === EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED).length, 0);
      const releases = events.filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_local_activity');
      assert.equal(releases.length, 1, `the five releases took ${releases.length} local activities`);
      for (const w of waits.slice(0, 5)) {
        const signalled = ((await w.fetchHistory()).events ?? []).filter((e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'rewrapComplete');
        assert.equal(signalled.length, 1, `${w.workflowId} was signalled once`);
      }

      await entity.signal(rewrapCompleteSignal, { keyId, version: 3 });
      assert.deepEqual(await waits[5]!.result().then((r) => [r.version, r.releasedBy]), [3, 'signal']);
      await entity.terminate('test finished');
      if (process.env.KEYOPS_RECORD_HISTORIES) await recordHistory(entity.workflowId, 'key-entity-release-by-local-activity.json');
    });
    close();
  });

  it('still releases every waiter, by the workflow\'s own signals, when the releasing local activity fails', async () => {
    const { kms, registry, keyId, taskQueue, entity, close } = await freshKey('fallback');
    const { activities } = localActivities({ dataDir: suite.dir, kms, registry });
    let attempts = 0;
    const worker = await createTestWorker(suite.env, {
      taskQueue,
      activities: {
        ...activities,
        // As if the worker's client could not reach the frontend, for good.
        releaseRewrapWaiters: () => {
          attempts++;
          return Promise.reject(ApplicationFailure.nonRetryable('frontend unreachable (test)', 'TEST_UNREACHABLE'));
        },
      },
    });
    await worker.runUntil(async () => {
      const waits = await Promise.all(
        [0, 1, 2].map((i) => suite.client.workflow.start(awaitRewrap, { taskQueue, workflowId: `await/${taskQueue}/${i}`, args: [{ keyId, minVersion: 2, recheckEveryMs: 3600_000 }] })),
      );
      await waitUntil('all three waiters registered with the key entity', async () => ((await entity.query(keyStateQuery)).waiters.length === 3 ? true : undefined));
      await entity.signal(rewrapCompleteSignal, { keyId, version: 2 });
      const released = await Promise.all(waits.map((w) => w.result()));
      assert.deepEqual(released.map((r) => [r.version, r.releasedBy]), Array(3).fill([2, 'signal']));
      assert.equal(attempts, 1);
      const events = (await entity.fetchHistory()).events ?? [];
      assert.equal(events.filter((e) => e.eventType === EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED).length, 3);
      // The entity lives on for the key's next rotation.
      assert.equal((await entity.describe()).status.name, 'RUNNING');
      await entity.terminate('test finished');
    });
    close();
  });
});
