import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { rotateRootKey } from '../workflows';
import { rewrapWorkflowId, keyEntityWorkflowId } from '../workflows/root-key-messages';
import { freePort } from './helpers/child-process';
import { testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';
import { WorkerProcess } from './helpers/worker-process';

const COUNT = 40_000;

describe('rotateRootKey survives SIGKILL of its worker', () => {
  const suite = useSuiteFixture('rotate-crash');

  it('finishes on a new worker: rotated exactly once, no WDEK lost or broken', async () => {
    const secret = randomBytes(32);
    const kms = LocalKms.open({ path: join(suite.dir, 'kms', 'keys.sqlite'), masterSecret: secret });
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'registry', 'wdeks.sqlite'));
    const { keyId } = await kms.createKey({ name: 'crash-test' });
    const deks = new Map<string, Buffer>();
    const records = [];
    for (let i = 0; i < COUNT; i++) {
      const id = `wdek-${String(i).padStart(6, '0')}`;
      const { wdek, dek, keyVersion } = await kms.wrap(keyId);
      deks.set(id, dek);
      records.push({ id, keyId, keyVersion, wdek, owner: 'crash-test' });
    }
    registry.registerMany(records);

    const taskQueue = uniqueTaskQueue('rotate-crash');
    const workerEnv = async () => ({
      TEMPORAL_ADDRESS: testServerAddress(),
      KEYOPS_TASK_QUEUE: taskQueue,
      KEYOPS_DATA_DIR: suite.dir,
      KEYOPS_LOG_FORMAT: 'json',
      KEYOPS_METRICS_ADDRESS: `127.0.0.1:${await freePort()}`,
      KEYOPS_KMS_MASTER_SECRET: secret.toString('base64'),
    });
    const first = new WorkerProcess(await workerEnv());
    await first.waitFor('worker started');
    const handle = await suite.client.workflow.start(rotateRootKey, {
      taskQueue,
      workflowId: rewrapWorkflowId(keyId, 2),
      args: [{ keyId, targetVersion: 2, rotate: true, chunkSize: 10_000, batchSize: 100 }],
    });
    // Kill as soon as rewrap is under way and far from done.
    for (;;) {
      const onNew = registry.countByVersion(keyId).get(2) ?? 0;
      if (onNew > 0) {
        assert.ok(onNew < COUNT, 'rewrap finished before the kill; raise COUNT');
        break;
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    first.child.kill('SIGKILL');
    await once(first.child, 'exit');
    const rewrappedAtKill = registry.countByVersion(keyId).get(2) ?? 0;

    const killedAttempts = new Map(
      ((await handle.describe()).raw.pendingActivities ?? []).map((a) => [a.activityId ?? '', a.attempt ?? 0]),
    );
    assert.ok(killedAttempts.size > 0, 'the kill left activities in flight');

    const restartedAt = Date.now();
    const second = new WorkerProcess(await workerEnv());
    try {
      // The new worker reads the dead one's journal and fails its attempts at once: the retry
      // carries WORKER_DIED, not the heartbeat timeout that would have taken 30 s.
      const retried = await waitUntil('every killed attempt to be retried', async () => {
        const pending = (await handle.describe()).raw.pendingActivities ?? [];
        const moved = [...killedAttempts].filter(([id, attempt]) => {
          const now = pending.find((a) => a.activityId === id);
          return now === undefined || (now.attempt ?? 0) > attempt;
        });
        return moved.length === killedAttempts.size ? pending : undefined;
      });
      const resumeMs = Date.now() - restartedAt;
      for (const a of retried.filter((p) => killedAttempts.has(p.activityId ?? ''))) {
        assert.equal(a.lastFailure?.applicationFailureInfo?.type, 'WORKER_DIED', `${a.activityType?.name}: ${a.lastFailure?.message}`);
      }
      const resumed = second.lines.filter((l) => l.msg === 'resumed an activity a dead worker left running');
      assert.ok(resumed.length >= 1, 'the new worker says what it resumed');
      process.stdout.write(`# killed worker's ${killedAttempts.size} in-flight activities resumed ${resumeMs} ms after the new worker was spawned\n`);
      const result = await handle.result();
      assert.equal(result.verified, COUNT);
      assert.deepEqual({ total: result.total, rewrapped: result.rewrapped }, { total: COUNT, rewrapped: COUNT }, 'progress counts exactly, after the retry');
      assert.ok(rewrappedAtKill < COUNT, `killed with ${rewrappedAtKill}/${COUNT} rewrapped`);
    } finally {
      second.child.kill('SIGTERM');
      await once(second.child, 'exit');
    }

    const meta = await kms.getKeyMetadata(keyId);
    assert.deepEqual(meta.versions.map((v) => v.version), [1, 2], 'rotated exactly once');
    let checked = 0;
    for (const r of registry.list(keyId, {}, COUNT + 1)) {
      assert.equal(r.keyVersion, 2);
      const { dek, keyVersion } = await kms.unwrap(keyId, r.wdek);
      assert.equal(keyVersion, 2);
      assert.ok(dek.equals(deks.get(r.id)!), `${r.id} still unwraps to its DEK`);
      checked++;
    }
    assert.equal(checked, COUNT);
    await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished');
    registry.close();
    kms.close();
  });
});
