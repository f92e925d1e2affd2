import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { ApplicationFailure, WorkflowFailedError } from '@temporalio/client';
import { SqliteBackupCatalog } from '../activities/catalog/sqlite-backup-catalog';
import { keyEntity, nightlyBackup, restoreBackup, rotateRootKey } from '../workflows';
import { keyStateQuery, rewrapCompleteSignal } from '../workflows/root-key-messages';
import { localWorker } from './helpers/local-activities';
import { useSuiteFixture } from './helpers/temporal';

/** The run's failure, which must be a non-retryable INVALID_INPUT naming `field`. */
async function invalidInput(run: Promise<unknown>, field: RegExp): Promise<string> {
  const err = await run.then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err instanceof WorkflowFailedError && err.cause instanceof ApplicationFailure, `expected a failed run, got ${String(err)}`);
  assert.equal(err.cause.type, 'INVALID_INPUT');
  assert.equal(err.cause.nonRetryable, true);
  assert.match(err.cause.message, field);
  return err.cause.message;
}

describe('workflow inputs are checked inside the workflows (a run started from the Web UI or the temporal CLI)', () => {
  const suite = useSuiteFixture('workflow-input');

  it('refuses what the CLI would have refused, naming the field, before any activity runs', async () => {
    const site = await localWorker(suite.env, join(suite.dir, 'refusals'), 'workflow-input');
    const { taskQueue } = site;
    const start = <A extends unknown[]>(workflow: (...args: A) => Promise<unknown>, args: A) =>
      suite.client.workflow.execute(workflow, { taskQueue, workflowId: `input-${Math.random().toString(36).slice(2)}`, args });
    await site.worker.runUntil(async () => {
      // retain "x" used to become NaN, and retention then deleted every backup but one.
      await invalidInput(start(nightlyBackup, [{ databaseId: 'shop', night: '2026-12-01', retain: 'x' as unknown as number }]), /^nightlyBackup input retain: /);
      await invalidInput(start(nightlyBackup, [{ databaseId: 'shop', retain: 0 }]), /retain: /);
      // A night far ahead would sort after every real night and silence the alert.
      await invalidInput(start(nightlyBackup, [{ databaseId: 'shop', night: '2099-01-01' }]), /night: later than tomorrow \(\d{4}-\d{2}-\d{2}\)/);
      await invalidInput(start(nightlyBackup, [{ databaseId: 'shop', night: '2026-02-30' }]), /night: not a calendar date/);
      await invalidInput(start(nightlyBackup, [{ databaseId: 'shop', night: '2026-13-45' }]), /night: not a calendar date/);
      await invalidInput(start(nightlyBackup, [{ databaseId: '../etc' }]), /databaseId: 1 to 63 characters/);
      // A relative target would resolve against the worker's working directory.
      await invalidInput(start(restoreBackup, [{ backupId: 'backup/shop/2026-12-01', targetPath: 'restored.db' }]), /targetPath: must be an absolute path/);
      await invalidInput(start(restoreBackup, [{ targetPath: '/tmp/x.db' }]), /backupId: name exactly one of backupId and path/);
      await invalidInput(start(rotateRootKey, [{ keyId: 'k', targetVersion: 1.5, rotate: true }]), /targetVersion: /);
    });
    site.catalog.close();
  });

  it('drops a malformed rewrapComplete signal instead of letting it wedge key/<id>', async () => {
    const site = await localWorker(suite.env, join(suite.dir, 'signal'), 'workflow-input-signal');
    await site.worker.runUntil(async () => {
      const handle = await suite.client.workflow.start(keyEntity, {
        taskQueue: site.taskQueue,
        workflowId: `key/input-test-${site.taskQueue}`,
        args: [{ keyId: `input-test-${site.taskQueue}`, rewrappedVersion: 1, waiters: [] }],
      });
      // Signals are handled in order: 2.5 first, then 2. A 2.5 accepted would make 2 (and every
      // later whole version up to it) look old forever.
      await handle.signal(rewrapCompleteSignal, { keyId: 'x', version: 2.5 });
      await handle.signal(rewrapCompleteSignal, { keyId: 'x', version: 2 });
      let version = 1;
      for (let tries = 0; version === 1 && tries < 600; tries++) {
        version = (await handle.query(keyStateQuery)).rewrappedVersion;
        if (version === 1) await delay(50);
      }
      assert.equal(version, 2);
      await handle.terminate('test finished');
    });
    site.catalog.close();
  });

  it('counts failed nights in the order they ran, whatever their dates', () => {
    const catalog = SqliteBackupCatalog.open(join(suite.dir, 'nights', 'catalog.sqlite'));
    try {
      assert.equal(catalog.recordNight('shop', '2026-12-05', 'failed'), 1);
      // A later run (a backfill of an earlier date) succeeded: the streak is broken.
      assert.equal(catalog.recordNight('shop', '2026-12-01', 'succeeded'), 0);
      assert.equal(catalog.recordNight('shop', '2026-12-06', 'failed'), 1);
      assert.equal(catalog.recordNight('shop', '2026-12-07', 'failed'), 2);
    } finally {
      catalog.close();
    }
  });
});
