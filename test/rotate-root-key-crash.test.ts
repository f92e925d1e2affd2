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

    const second = new WorkerProcess(await workerEnv());
    try {
      const result = await handle.result();
      assert.equal(result.verified, COUNT);
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
