import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import * as workflows from '../workflows';
import { keyEntityWorkflowId, rewrapCompleteSignal } from '../workflows/root-key-messages';
import { localActivities } from './helpers/local-activities';
import { recordHistory } from './helpers/record-history';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

const HISTORIES = join(__dirname, 'histories');

/** The workflow type each recorded history starts, from its first event. */
function recordedTypes(): Set<string> {
  const types = new Set<string>();
  for (const file of readdirSync(HISTORIES).filter((f) => f.endsWith('.json'))) {
    const history = JSON.parse(readFileSync(join(HISTORIES, file), 'utf8')) as { events: { workflowExecutionStartedEventAttributes?: { workflowType?: { name?: string } } }[] };
    const name = history.events[0]?.workflowExecutionStartedEventAttributes?.workflowType?.name;
    if (name) types.add(name);
  }
  return types;
}

describe('every registered workflow type has a recorded history for the replay test', () => {
  const suite = useSuiteFixture('workflow-histories');

  it('runs each workflow type the other tests do not record, end to end on a real worker (recorded with KEYOPS_RECORD_HISTORIES=1)', async () => {
    const dataDir = join(suite.dir, 'data');
    const kms = LocalKms.open({ path: join(dataDir, 'kms', 'keys.sqlite'), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(dataDir, 'registry', 'wdeks.sqlite'));
    const local = localActivities({ dataDir, kms, registry, backupKeyPassphrase: () => 'history passphrase, long enough' });
    const taskQueue = uniqueTaskQueue('workflow-histories');
    const worker = await createTestWorker(suite.env, { taskQueue, activities: local.activities });
    const ids = new Map<string, string>();
    const run = async <T>(type: string, workflow: (...args: never[]) => Promise<T>, args: unknown[]): Promise<T> => {
      const workflowId = `history/${type}/${taskQueue}`;
      ids.set(type, workflowId);
      return suite.client.workflow.execute(workflow as never, { taskQueue, workflowId, args } as never) as Promise<T>;
    };
    await worker.runUntil(async () => {
      const demo = await run('initDemo', workflows.initDemo, []);
      // `keyops init --wdeks N` (its input checked behind the validate-workflow-input patch); the demo is already there.
      assert.equal((await run('initDemoWithOptions', workflows.initDemo, [{ wdeks: 10 }])).created, false);
      const created = await run('createRootKey', workflows.createRootKey, ['history-key']);
      assert.equal((await run('describeRootKey', workflows.describeRootKey, [created.keyId])).keyId, created.keyId);
      assert.equal((await run('setRootKeyPolicy', workflows.setRootKeyPolicy, [{ keyId: demo.keyId, intervalMonths: 3 }])).keyId, demo.keyId);
      assert.deepEqual((await run('resolveRootKeys', workflows.resolveRootKeys, [['demo']])).map((r) => r.keyId), [demo.keyId]);
      assert.equal((await run('rotateInKms', workflows.rotateInKms, [{ keyId: created.keyId, targetVersion: 2 }])).version, 2);

      // A wait released by the key's entity workflow: both histories.
      const waiting = suite.client.workflow.start(workflows.awaitRewrap, {
        taskQueue,
        workflowId: `history/awaitRewrap/${taskQueue}`,
        args: [{ keyId: created.keyId, minVersion: 2 }],
      });
      ids.set('awaitRewrap', `history/awaitRewrap/${taskQueue}`);
      const entity = suite.client.workflow.getHandle(keyEntityWorkflowId(created.keyId));
      for (let i = 0; ; i++) {
        const described = await entity.describe().catch(() => undefined);
        if (described) break;
        assert.ok(i < 600, 'the wait registered with the key entity');
        await new Promise((r) => setTimeout(r, 50));
      }
      await entity.signal(rewrapCompleteSignal, { keyId: created.keyId, version: 2 });
      assert.equal((await (await waiting).result()).releasedBy, 'signal');
      await entity.terminate('history recorded');
      ids.set('keyEntity', keyEntityWorkflowId(created.keyId));

      const night = '2026-11-20';
      const backup = await suite.client.workflow.execute(workflows.nightlyBackup, { taskQueue, workflowId: `backup/demo/${night}`, args: [{ databaseId: 'demo', night }] });
      assert.equal(backup.phase, 'done');
      assert.equal((await run('listBackups', workflows.listBackups, [{ databaseId: 'demo' }])).length, 1);
      assert.equal((await run('verifyBackup', workflows.verifyBackup, [{ backupId: backup.backupId }])).rows, 1000);
      assert.equal((await run('restoreBackup', workflows.restoreBackup, [{ backupId: backup.backupId, targetPath: join(suite.dir, 'restored.db') }])).rows, 1000);
      assert.ok((await run('rotateBackupKey', workflows.rotateBackupKey, [{ databaseId: 'demo' }])).hash);
      assert.equal((await run('regenerateDataKey', workflows.regenerateDataKey, [{ databaseId: 'demo' }])).databaseId, 'demo');

      if (process.env.KEYOPS_RECORD_HISTORIES) {
        for (const [type, workflowId] of ids) await recordHistory(workflowId, `${type.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}.json`);
      }
    });
    local.unitSets.close();
    local.catalog.close();
    local.engine.close();
    registry.close();
    kms.close();
  });

  it('fails when a registered workflow type has no recorded history', () => {
    const registered = Object.entries(workflows)
      .filter(([, value]) => typeof value === 'function')
      .map(([name]) => name)
      .sort();
    const recorded = recordedTypes();
    assert.deepEqual(
      registered.filter((name) => !recorded.has(name)),
      [],
      'record one: run the suite with KEYOPS_RECORD_HISTORIES=1 (a test that runs the type must call recordHistory)',
    );
  });
});
