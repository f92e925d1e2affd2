import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { createActivities } from '../activities';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { keyEntityWorkflowId } from '../workflows/root-key-messages';
import { keyops } from './helpers/child-process';
import { createTestWorker, testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

/** `keyops key show|rotate` through a real child process, against a real worker and local KMS. */
describe('keyops key commands', () => {
  const suite = useSuiteFixture('key-cli');

  it('rotates with --wait, then refuses bad ids, unknown and disabled keys, and a second rotation within the hour', async () => {
    const kms = LocalKms.open({ path: join(suite.dir, 'kms.sqlite'), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'wdeks.sqlite'));
    const { keyId } = await kms.createKey({ name: 'cli-key' });
    const { keyId: disabledKey } = await kms.createKey({ name: 'cli-disabled' });
    await kms.disableKey(disabledKey);
    for (let i = 0; i < 25; i++) {
      const { wdek, keyVersion } = await kms.wrap(keyId);
      registry.register({ id: `cli-${i}`, keyId, keyVersion, wdek, owner: 'cli-test' });
    }
    const taskQueue = uniqueTaskQueue('key-cli');
    const worker = await createTestWorker(suite.env, {
      taskQueue,
      activities: createActivities({ dataDir: suite.dir, keyopsVersion: 'test', kms, registry }),
    });
    const run = (...args: string[]) => keyops([...args, '--task-queue', taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });

    await worker.runUntil(async () => {
      const rotated = await run('key', 'rotate', keyId, '--wait', '--json');
      assert.equal(rotated.code, 0, rotated.stderr);
      const out = JSON.parse(rotated.stdout) as { workflowId: string; verified: number; targetVersion: number; rotated: boolean };
      assert.deepEqual(
        { workflowId: out.workflowId, verified: out.verified, targetVersion: out.targetVersion, rotated: out.rotated },
        { workflowId: `rewrap/${keyId}/v2`, verified: 25, targetVersion: 2, rotated: true },
      );

      const shown = await run('key', 'show', keyId, '--json');
      assert.equal(shown.code, 0, shown.stderr);
      assert.deepEqual(
        (({ currentVersion, rewrappedVersion, state }) => ({ currentVersion, rewrappedVersion, state }))(JSON.parse(shown.stdout) as Record<string, unknown>),
        { currentVersion: 2, rewrappedVersion: 2, state: 'active' },
      );

      const again = await run('key', 'rotate', keyId);
      assert.equal(again.code, 1);
      assert.match(again.stderr, /one rotation per hour, so the next is allowed at \d{4}-\d\d-\d\dT/);

      const malformed = await run('key', 'rotate', 'not-a-key');
      assert.equal(malformed.code, 2);
      assert.match(malformed.stderr, /key id "not-a-key" is malformed: expected a UUID/);

      const unknown = randomUUID();
      const missing = await run('key', 'rotate', unknown);
      assert.equal(missing.code, 2, missing.stderr);
      assert.match(missing.stderr, new RegExp(`key ${unknown} does not exist in the KMS`));

      const disabled = await run('key', 'rotate', disabledKey);
      assert.equal(disabled.code, 1);
      assert.match(disabled.stderr, /is disabled/);

      for (const r of [again, malformed, missing, disabled]) assert.doesNotMatch(r.stderr, /^\s+at /m);
    });
    assert.equal((await kms.getKeyMetadata(keyId)).versions.length, 2, 'refused requests rotated nothing');
    await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished');
    registry.close();
    kms.close();
  });
});
