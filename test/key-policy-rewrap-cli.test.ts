import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { keyEntityWorkflowId } from '../workflows/root-key-messages';
import { keyops } from './helpers/child-process';
import { localWorker } from './helpers/local-activities';
import { testServerAddress, useSuiteFixture } from './helpers/temporal';

describe('keyops key policy and keyops rewrap status', () => {
  const suite = useSuiteFixture('key-policy');

  it('sets and removes the KMS rotation policy; follows a rewrap from behind to up to date', async () => {
    const { kms, registry, taskQueue, worker } = await localWorker(suite.env, suite.dir, 'key-policy');
    const run = (...args: string[]) => keyops([...args, '--task-queue', taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });
    const { keyId } = await kms.createKey({ name: 'policy' });
    const wdeks = [];
    for (let i = 0; i < 30; i++) {
      const { wdek, keyVersion } = await kms.wrap(keyId);
      wdeks.push({ id: `app/${i}`, keyId, keyVersion, wdek, owner: 'app' });
    }
    registry.registerMany(wdeks);
    registry.setRewrappedVersion(keyId, 1);

    await worker.runUntil(async () => {
      const set = await run('key', 'policy', keyId, '--every', '3');
      assert.equal(set.code, 0, set.stderr);
      assert.match(set.stdout, new RegExp(`key ${keyId}: the KMS rotates it every 3 month\\(s\\)`));
      assert.deepEqual((await kms.getKeyMetadata(keyId)).rotationPolicy, { intervalMonths: 3 });
      assert.match((await run('key', 'show', keyId)).stdout, /rotation policy: every 3 month\(s\), by the KMS/);
      const off = await run('key', 'policy', keyId, '--off', '--json');
      assert.equal(off.code, 0, off.stderr);
      assert.equal((JSON.parse(off.stdout) as { rotationPolicyMonths?: number }).rotationPolicyMonths, undefined);
      assert.equal((await kms.getKeyMetadata(keyId)).rotationPolicy, undefined);
      for (const bad of [['--every', '13'], []]) {
        const r = await run('key', 'policy', keyId, ...bad);
        assert.equal(r.code, 2, `${bad.join(' ')}: ${r.stderr}`);
      }

      const before = await run('rewrap', 'status', keyId, '--json');
      assert.equal(before.code, 0, before.stderr);
      assert.deepEqual(JSON.parse(before.stdout), { keyId, currentVersion: 1, rewrappedVersion: 1, upToDate: true, rewrap: null, waiting: [], consumers: { wdeks: 30, wdeksBehind: 0, engines: [] } });
      await kms.rotateKey(keyId, 'outside-keyops'); // as a KMS policy would
      const behind = await run('rewrap', 'status', keyId);
      assert.match(behind.stdout, /version 2, WDEKs rewrapped to 1 \(behind: backups of its databases wait\)\nconsumers:\n {2}WDEKs: 30, 30 below version 2\nno rewrap run for version 2 \(keyops key rotate/);

      const watched = await run('key', 'watch');
      assert.equal(watched.code, 0, watched.stderr);
      let after: { currentVersion: number; upToDate: boolean; rewrap: { phase: string; total: number; verified: number } | null } | undefined;
      for (let i = 0; !after?.upToDate || after.rewrap?.phase !== 'done'; i++) {
        assert.ok(i < 100, `the watcher's rewrap finishes: ${JSON.stringify(after)}`);
        if (i > 0) await new Promise((r) => setTimeout(r, 200));
        after = JSON.parse((await run('rewrap', 'status', keyId, '--json')).stdout) as typeof after;
      }
      assert.deepEqual([after.currentVersion, after.rewrap.total, after.rewrap.verified], [2, 30, 30]);
      await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished');
    });
  });
});
