import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { awaitRewrap, rotateMasterKey } from '../workflows';
import { masterKeyRotationWorkflowId } from '../workflows/master-key-messages';
import { keyEntityWorkflowId } from '../workflows/root-key-messages';
import { keyops } from './helpers/child-process';
import { localWorker } from './helpers/local-activities';
import { testServerAddress, useSuiteFixture } from './helpers/temporal';

describe('keyops signal rewrap-complete and keyops runs', () => {
  const suite = useSuiteFixture('runs-signal');

  it('an external rewrap-complete releases a waiting workflow; runs lists keyops runs with phase and outcome', async () => {
    const { kms, taskQueue, worker, unitSets } = await localWorker(suite.env, suite.dir, 'runs-signal');
    const run = (...args: string[]) => keyops(args, { TEMPORAL_ADDRESS: testServerAddress() });
    const { keyId } = await kms.createKey({ name: 'external' });
    const setId = `runs-${randomBytes(3).toString('hex')}`;
    unitSets.create(setId, { units: 2, entries: 4 });

    await worker.runUntil(async () => {
      const waiter = await suite.client.workflow.start(awaitRewrap, { taskQueue, workflowId: `wait-external-${keyId}`, args: [{ keyId, minVersion: 3 }] });
      // The waiter registers with the key's entity; then the outside world announces version 3.
      for (let i = 0; ; i++) {
        const entity = await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).describe().catch(() => undefined);
        if (entity) break;
        assert.ok(i < 100, 'the waiter registered with the key entity');
        await new Promise((r) => setTimeout(r, 100));
      }
      const bad = await run('signal', 'rewrap-complete', keyId, '--version', 'three');
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /--version "three" is not a key version/);
      const sent = await run('signal', 'rewrap-complete', keyId, '--version', '3', '--task-queue', taskQueue);
      assert.equal(sent.code, 0, sent.stderr);
      const released = await waiter.result();
      assert.deepEqual([released.releasedBy, released.version], ['signal', 3]);

      await suite.client.workflow.execute(rotateMasterKey, { taskQueue, workflowId: masterKeyRotationWorkflowId(setId, 'r'), args: [{ unitSetId: setId, requestId: 'r' }] });
      let listed: { workflowId: string; type: string; status: string; phase: string | null; outcome: string | null }[] = [];
      for (let i = 0; listed.length === 0; i++) {
        assert.ok(i < 50, 'visibility shows the run');
        const out = await run('runs', '--query', `WorkflowId = "${masterKeyRotationWorkflowId(setId, 'r')}"`, '--json');
        assert.equal(out.code, 0, out.stderr);
        listed = JSON.parse(out.stdout) as typeof listed;
        if (listed[0]?.status !== 'COMPLETED') listed = [];
        if (listed.length === 0) await new Promise((r) => setTimeout(r, 200));
      }
      assert.deepEqual(
        listed.map((r) => [r.workflowId, r.type, r.status, r.phase, r.outcome]),
        [[masterKeyRotationWorkflowId(setId, 'r'), 'rotateMasterKey', 'COMPLETED', 'done', 'succeeded']],
      );
      const malformed = await run('runs', '--query', 'Phase = = "x"');
      assert.equal(malformed.code, 2, malformed.stderr);
      assert.match(malformed.stderr, /--query is not a valid visibility query/);
      await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished');
    });
  });
});
