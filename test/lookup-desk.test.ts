import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { lookupDesk, nightlyBackup } from '../workflows';
import { backupWorkflowId } from '../workflows/backup-messages';
import { describeKeyUpdate, listBackupsUpdate, listKeyVersionsUpdate, lookupDeskStateQuery, lookupDeskWorkflowId } from '../workflows/lookup-messages';
import { CliError } from '../client/cli-error';
import { lookUpOnWorker } from '../client/run-on-worker';
import { resolveKeyRefs } from '../client/key-ref';
import { localWorker } from './helpers/local-activities';
import { recordHistory } from './helpers/record-history';
import { uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';

const fail = (failure: Error): never => {
  throw failure;
};

/**
 * The CLI's read-only look-ups go to one long-lived desk per task queue as updates (issue 17):
 * the answers come from the worker's KMS and catalog, and the workflow list gains no run per
 * look-up.
 */
describe('look-ups as updates of the task queue desk (dev server)', () => {
  const suite = useSuiteFixture('lookup-desk');

  it('answers key, version, name and catalog look-ups from the worker, and adds one run for all of them', async () => {
    const s = await localWorker(suite.env, join(suite.dir, 'desk'), 'desk');
    const { keyId } = await s.kms.createKey({ name: 'desk-key' });
    await s.engine.createDatabase('ledger', keyId);
    await s.engine.withDatabase('ledger', (db) => db.exec('CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1), (2), (3);'));
    const ask = <Ret, Args extends unknown[]>(update: Parameters<typeof lookUpOnWorker<Ret, Args>>[1], args: Args) =>
      lookUpOnWorker(suite.client, update, { taskQueue: s.taskQueue, args, summary: 'test look-up' }, fail);
    await s.worker.runUntil(async () => {
      await suite.client.workflow.execute(nightlyBackup, { taskQueue: s.taskQueue, workflowId: backupWorkflowId('ledger', '2026-11-21'), args: [{ databaseId: 'ledger', night: '2026-11-21' }] });

      const status = await ask(describeKeyUpdate, [keyId]);
      assert.deepEqual({ keyId: status.keyId, currentVersion: status.currentVersion }, { keyId, currentVersion: 1 });
      const refs = await resolveKeyRefs(suite.client, ['desk-key', keyId], s.taskQueue);
      assert.deepEqual(
        refs.map((r) => ({ ref: r.ref, keyId: r.keyId })),
        [
          { ref: 'desk-key', keyId },
          { ref: keyId, keyId },
        ],
      );
      const backups = await ask(listBackupsUpdate, [{ databaseId: 'ledger' }]);
      assert.deepEqual(
        backups.map((b) => b.backupId),
        s.catalog.list({ databaseId: 'ledger' }).map((b) => b.backupId),
      );
      assert.equal(backups.length, 1);
      const versions = await ask(listKeyVersionsUpdate, [keyId]);
      assert.deepEqual(
        versions.versions.map((v) => v.version),
        [1],
      );
      // A malformed question is refused by the validator, naming the field; nothing is run.
      await assert.rejects(ask(listBackupsUpdate, [{ databaseId: 'Not A Database!' }]), /listBackups: databaseId: 1 to 63 characters/);

      const desk = suite.client.workflow.getHandle(lookupDeskWorkflowId(s.taskQueue));
      assert.equal((await desk.query(lookupDeskStateQuery)).answered, 4, "four answered; the refused one never ran");
      // Every run on this task queue: the backup and the desk, nothing per look-up.
      const runs = await waitUntil('the runs to be listed', async () => {
        const ids: string[] = [];
        for await (const w of suite.client.workflow.list({ query: `TaskQueue = '${s.taskQueue}'` })) ids.push(w.workflowId);
        return ids.length >= 2 ? ids.sort() : undefined;
      });
      assert.deepEqual(runs, [backupWorkflowId('ledger', '2026-11-21'), lookupDeskWorkflowId(s.taskQueue)].sort());
      const activities = ((await desk.fetchHistory()).events ?? []).flatMap((e) => e.activityTaskScheduledEventAttributes?.activityType?.name ?? []);
      assert.deepEqual(activities, ['describeKey', 'resolveKeyRefs', 'listBackups', 'listKeyVersions']);
      if (process.env.KEYOPS_RECORD_HISTORIES) {
        await desk.terminate('recorded for the replay test');
        await recordHistory(desk.workflowId, 'lookup-desk.json');
      }
    });
  });

  it('hands over to its next run every few look-ups without losing one, asked 12 at once', async () => {
    const s = await localWorker(suite.env, join(suite.dir, 'handover'), 'handover');
    const { keyId } = await s.kms.createKey({ name: 'handover-key' });
    await s.worker.runUntil(async () => {
      // Started with a short run length: the CLI's first question finds it and uses it.
      await suite.client.workflow.start(lookupDesk, { taskQueue: s.taskQueue, workflowId: lookupDeskWorkflowId(s.taskQueue), args: [{ perRun: 4 }] });
      const answers = await Promise.all(
        Array.from({ length: 12 }, () => lookUpOnWorker(suite.client, describeKeyUpdate, { taskQueue: s.taskQueue, args: [keyId], summary: 'test look-up', timeoutSeconds: 120 }, fail)),
      );
      assert.deepEqual(new Set(answers.map((a) => a.keyId)), new Set([keyId]));
      const state = await suite.client.workflow.getHandle(lookupDeskWorkflowId(s.taskQueue)).query(lookupDeskStateQuery);
      assert.ok(state.generation >= 2, `12 look-ups at 4 per run took ${state.generation + 1} run(s)`);
    });
  });

  it('without a worker: says so within the timeout, naming the task queue', async () => {
    const taskQueue = uniqueTaskQueue('no-worker');
    const err = await lookUpOnWorker(suite.client, describeKeyUpdate, { taskQueue, args: ['0f6b9b2e-4c1d-4a8e-9d3a-5b7c2e1f8a90'], summary: 'test look-up', timeoutSeconds: 3 }, fail).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(err instanceof CliError, String(err));
    assert.equal(err.message, `no worker answered within 3 s on task queue "${taskQueue}"`);
    await suite.client.workflow.getHandle(lookupDeskWorkflowId(taskQueue)).terminate('test finished');
  });
});
