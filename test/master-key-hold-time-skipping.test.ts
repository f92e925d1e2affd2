import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { WorkflowNotFoundError } from '@temporalio/client';
import { rotateRootKey } from '../workflows';
import { keyEntityWorkflowId, rewrapProgressQuery, rewrapWorkflowId } from '../workflows/root-key-messages';
import { localWorker } from './helpers/local-activities';
import { useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';

const HOUR = 3_600_000;

/**
 * A master-key rotation under the KMS that lasts longer than a rewrap chunk's whole retry budget
 * (20 attempts, about 15 minutes of backoff), on the time-skipping server. The rotation here is
 * driven outside keyops (no rotation run to signal the end), so the rewrap falls back to its
 * re-check: it must still be waiting, not failed, after an hour, and finish once it ends.
 */
describe('a rewrap held by a master-key rotation longer than its retry budget (time-skipping server)', () => {
  const suite = useSuiteFixture('master-key-hold', 'time-skipping');

  it('waits an hour of workflow time without spending retries, then rewraps every WDEK once the rotation ends', async () => {
    const s = await localWorker(suite.env, join(suite.dir, 'held'), 'held', 'kms-hsm');
    const units = s.unitSets.create('kms-hsm', { units: 2, entries: 4 });
    const { keyId } = await s.kms.createKey({ name: 'held-long' });
    for (let i = 0; i < 40; i++) {
      const { wdek, keyVersion } = await s.kms.wrap(keyId);
      s.registry.register({ id: `app/${String(i).padStart(3, '0')}`, keyId, keyVersion, wdek, owner: 'app' });
    }
    s.registry.setRewrappedVersion(keyId, 1);
    await units.loadNewMasterKey(); // stage 1 of a rotation run by hand
    await s.worker.runUntil(async () => {
      const rewrap = await suite.client.workflow.start(rotateRootKey, {
        taskQueue: s.taskQueue,
        workflowId: rewrapWorkflowId(keyId, 2),
        args: [{ keyId, targetVersion: 2, rotate: true, parallelism: 1 }],
      });
      // A query that the time-skipping server never answers (seen once in CI under load, after it
      // expired a workflow task) is given up after 15 s and asked again, not awaited forever.
      const progressOf = () => suite.client.withDeadline(Date.now() + 15_000, () => rewrap.query(rewrapProgressQuery));
      await waitUntil('the rewrap to be held', async () => ((await progressOf()).heldBy ? true : undefined));
      await suite.env.sleep(HOUR);

      // Between two re-checks the run is briefly not held: take it when it is waiting again.
      const progress = await waitUntil('the rewrap to be held again', async () => {
        const p = await progressOf();
        return p.heldBy ? p : undefined;
      });
      assert.equal((await rewrap.describe()).status.name, 'RUNNING', 'still waiting after an hour, not failed');
      assert.equal(progress.phase, 'rewrapping');
      assert.match(progress.heldBy ?? '', /hold a new master key/);
      assert.deepEqual(s.registry.countBelowVersion(keyId, 2), { total: 40, below: 40 }, 'no WDEK moved while the master key rotates');
      // Every held chunk failed on its first attempt: the wait is the workflow's, not the retry policy's.
      const failures = ((await rewrap.fetchHistory()).events ?? []).flatMap((e) => (e.activityTaskFailedEventAttributes ? [e] : []));
      // Failed at once and for good: a chunk retried by its policy instead would show no failure
      // until its 20th attempt, and then fail the run.
      assert.ok(failures.length >= 1, 'the held chunk failed');
      for (const f of failures) {
        const info = f.activityTaskFailedEventAttributes?.failure?.applicationFailureInfo;
        assert.deepEqual({ type: info?.type, nonRetryable: info?.nonRetryable }, { type: 'MASTER_KEY_ROTATION_IN_PROGRESS', nonRetryable: true });
      }
      // No attempt was retried because of the hold. (The test server's clock jumps can time out
      // an attempt that was merely running; such a retry carries a timeout, not the hold.)
      const retriedForTheHold = ((await rewrap.fetchHistory()).events ?? []).filter((e) => {
        const started = e.activityTaskStartedEventAttributes;
        return (started?.attempt ?? 1) > 1 && started?.lastFailure?.applicationFailureInfo?.type === 'MASTER_KEY_ROTATION_IN_PROGRESS';
      });
      assert.deepEqual(retriedForTheHold, [], 'no attempt was retried for the hold');

      await units.reencryptKeyStorage();
      await units.promoteNewMasterKey();
      await suite.env.sleep(2 * 60_000);
      const result = await rewrap.result();
      assert.deepEqual({ phase: result.phase, rewrapped: result.rewrapped, verified: result.verified, heldBy: result.heldBy }, { phase: 'done', rewrapped: 40, verified: 40, heldBy: undefined });
      assert.deepEqual(s.registry.countBelowVersion(keyId, 2), { total: 40, below: 0 });
      // The key's entity may already have ended on the skipped clock (an idle entity closes).
      await suite.client.workflow
        .getHandle(keyEntityWorkflowId(keyId))
        .terminate('test finished')
        .catch((err: unknown) => {
          if (!(err instanceof WorkflowNotFoundError)) throw err;
        });
    });
  });
});
