import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { rotateRootKey } from '../workflows';
import { watchRootKeys } from '../workflows';
import { keyEntityWorkflowId, keyStateQuery, rewrapWorkflowId } from '../workflows/root-key-messages';
import { OutcomeAttribute } from '../workflows/search-attributes';
import { localWorker } from './helpers/local-activities';
import { useSuiteFixture } from './helpers/temporal';
import { failsWith } from './helpers/workflow-failures';

const COUNT = 60;

/**
 * watchRootKeys starts the rewrap of a rotation keyops did not make under the id
 * `rewrap/<key>/v<version>` with ALLOW_DUPLICATE_FAILED_ONLY: a rewrap that failed is started
 * again by the next watch, a completed one never.
 */
describe('watchRootKeys re-runs a rewrap that failed', () => {
  const suite = useSuiteFixture('watch-reruns-rewrap');

  it('a rewrap failed on a disabled key is started again by the next watch once the key is enabled, and moves every WDEK', async () => {
    const s = await localWorker(suite.env, join(suite.dir, 'rerun'), 'watch-rerun');
    const { keyId } = await s.kms.createKey({ name: 'watched' });
    const deks = new Map<string, Buffer>();
    const records = [];
    for (let i = 0; i < COUNT; i++) {
      const id = `app/${String(i).padStart(4, '0')}`;
      const { wdek, dek, keyVersion } = await s.kms.wrap(keyId);
      deks.set(id, dek);
      records.push({ id, keyId, keyVersion, wdek, owner: 'app' });
    }
    s.registry.registerMany(records);
    s.registry.setRewrappedVersion(keyId, 1);
    // Rotated outside keyops (a policy, the KMS console), then disabled (suspected compromise).
    await s.kms.rotateKey(keyId, 'by-hand');
    await s.kms.disableKey(keyId);
    const rewrapId = rewrapWorkflowId(keyId, 2);
    const watch = (n: number) => suite.client.workflow.execute(watchRootKeys, { taskQueue: s.taskQueue, workflowId: `watch/${s.taskQueue}/${n}` });

    await s.worker.runUntil(async () => {
      const first = await watch(1);
      assert.deepEqual({ started: first.started, alreadyRunning: first.alreadyRunning, unreadable: first.unreadable }, { started: [rewrapId], alreadyRunning: [], unreadable: [] });
      const failedRun = suite.client.workflow.getHandle<typeof rotateRootKey>(rewrapId);
      const failure = await failsWith(failedRun.result(), 'KEY_DISABLED', 'the rewrap of a disabled key');
      assert.equal(failure.nonRetryable, true);
      const failed = await failedRun.describe();
      assert.equal(failed.status.name, 'FAILED');
      assert.equal(failed.typedSearchAttributes.get(OutcomeAttribute), 'failed');
      assert.deepEqual(s.registry.countBelowVersion(keyId, 2), { total: COUNT, below: COUNT }, 'the failed run moved nothing');
      assert.equal(s.registry.getRewrappedVersion(keyId), 1);

      await s.kms.enableKey(keyId);
      const second = await watch(2);
      assert.deepEqual({ started: second.started, alreadyRunning: second.alreadyRunning }, { started: [rewrapId], alreadyRunning: [] }, 'the failed rewrap is started again under its id');
      const rerun = suite.client.workflow.getHandle<typeof rotateRootKey>(rewrapId);
      const result = await rerun.result();
      assert.deepEqual(
        { phase: result.phase, rotated: result.rotated, total: result.total, rewrapped: result.rewrapped, verified: result.verified },
        { phase: 'done', rotated: false, total: COUNT, rewrapped: COUNT, verified: COUNT },
      );
      const completed = await rerun.describe();
      assert.equal(completed.status.name, 'COMPLETED');
      assert.notEqual(completed.runId, failed.runId, 'a new run, not the failed one resumed');
      assert.equal((await suite.client.workflow.getHandle(rewrapId, failed.runId).describe()).status.name, 'FAILED', 'the failed run stays failed');
      assert.equal((await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).query(keyStateQuery)).rewrappedVersion, 2, 'rewrap complete was announced');

      const third = await watch(3);
      assert.deepEqual({ started: third.started, alreadyRunning: third.alreadyRunning }, { started: [], alreadyRunning: [] }, 'a completed rewrap is left alone');
      await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished');
    });
    assert.deepEqual((await s.kms.getKeyMetadata(keyId)).versions.map((v) => v.version), [1, 2], 'keyops never rotated');
    assert.equal(s.registry.getRewrappedVersion(keyId), 2);
    const after = s.registry.list(keyId, {}, COUNT + 1);
    assert.equal(after.length, COUNT);
    for (const r of after) {
      const { dek, keyVersion } = await s.kms.unwrap(keyId, r.wdek);
      assert.deepEqual([r.keyVersion, keyVersion, dek.equals(deks.get(r.id)!)], [2, 2, true], r.id);
    }
  });
});
