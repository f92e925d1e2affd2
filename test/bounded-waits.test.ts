import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { WorkflowHandle } from '@temporalio/client';
import { backupProgressQuery, backupWorkflowId, type BackupPhase } from '../workflows/backup-messages';
import { nightlyBackup } from '../workflows';
import { OutcomeAttribute, PhaseAttribute } from '../workflows/search-attributes';
import { backupFiles, recordedNights } from './helpers/backup-nights';
import { localWorker } from './helpers/local-activities';
import { skipTimeUntilClosed } from './helpers/skip-to-close';
import { useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';
import { childFailureOf, failsWith } from './helpers/workflow-failures';

const HOUR = 3_600_000;

/** Server time from a run's first event to its last: how long the workflow really waited. */
async function workflowTimeMs(handle: WorkflowHandle): Promise<number> {
  const events = (await handle.fetchHistory()).events ?? [];
  const at = (i: number) => {
    const t = events.at(i)?.eventTime;
    return Number(t?.seconds ?? 0) * 1000 + Math.round((t?.nanos ?? 0) / 1e6);
  };
  return at(-1) - at(0);
}

/** The activity types a run scheduled, from its history. */
async function activitiesOf(handle: WorkflowHandle): Promise<string[]> {
  return ((await handle.fetchHistory()).events ?? []).flatMap((e) => {
    const name = e.activityTaskScheduledEventAttributes?.activityType?.name;
    return name ? [name] : [];
  });
}

/**
 * The bounded waits of a nightly backup running out, on the time-skipping test server: a key
 * change that never ends, and a rewrap that never completes. Six hours of server time pass in
 * seconds; the clock moves only when the test moves it (suite.client never unlocks it by itself),
 * one timer at a time while the run waits (skipTimeUntilClosed says why).
 */
describe('nightlyBackup bounded waits running out (time-skipping server)', () => {
  const suite = useSuiteFixture('bounded-waits', 'time-skipping');

  /** A worker on the embedded adapters and a database `databaseId` with a few rows under a fresh key. */
  const setup = async (label: string, databaseId: string, kmsUnitSet?: string) => {
    const s = await localWorker(suite.env, join(suite.dir, label), label, kmsUnitSet);
    const { keyId } = await s.kms.createKey({ name: `bounded-${label}` });
    await s.engine.createDatabase(databaseId, keyId);
    await s.engine.withDatabase(databaseId, (db) => db.exec('CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1), (2), (3);'));
    return { ...s, keyId };
  };

  /**
   * Starts the night's backup and returns once it is waiting in `phase`, read from its Phase
   * search attribute. Not by a query: one that lands while the key check runs splits that
   * workflow task (nightly-backup-queried.test.ts), and the test server records an extra task
   * for it; the run is then replayed more than these tests mean to exercise.
   */
  const startWaiting = async (s: Awaited<ReturnType<typeof setup>>, databaseId: string, night: string, phase: BackupPhase, extra: Partial<Parameters<typeof nightlyBackup>[0]> = {}) => {
    const handle = await suite.client.workflow.start(nightlyBackup, {
      taskQueue: s.taskQueue,
      workflowId: backupWorkflowId(databaseId, night),
      args: [{ databaseId, night, ...extra }],
    });
    await waitUntil(`the backup to wait in ${phase}`, async () => ((await handle.describe()).typedSearchAttributes.get(PhaseAttribute) === phase ? true : undefined));
    return handle;
  };


  /** Nothing was written or catalogued, and the night counts as failed, with the reason. */
  const assertFailedNight = async (s: Awaited<ReturnType<typeof setup>>, handle: WorkflowHandle<typeof nightlyBackup>, databaseId: string, night: string, reason: RegExp) => {
    assert.deepEqual(backupFiles(s.dataDir, databaseId), [], 'no backup file, not even a partial one');
    assert.deepEqual(s.catalog.list({ databaseId }), [], 'no catalog entry');
    const nights = recordedNights(join(s.dataDir, 'catalog', 'backups.sqlite'), databaseId);
    assert.equal(nights.length, 1, JSON.stringify(nights));
    assert.equal(nights[0]!.night, night);
    assert.equal(nights[0]!.outcome, 'failed');
    assert.match(nights[0]!.error ?? '', reason);
    // A closed run answers a query by a replay on the worker. On the time-skipping server, a
    // query that reaches a worker whose task just expired can go unanswered: asked again, with
    // a deadline, rather than hanging the file.
    const progress = await waitUntil(
      'the closed run to answer its progress query',
      () => suite.client.withDeadline(Date.now() + 10_000, () => handle.query(backupProgressQuery)).catch(() => undefined),
      120_000,
    );
    assert.deepEqual({ phase: progress.phase, failedNights: progress.failedNights, path: progress.path }, { phase: 'failed', failedNights: 1, path: undefined });
    assert.equal((await handle.describe()).typedSearchAttributes.get(OutcomeAttribute), 'failed');
    const steps = await activitiesOf(handle);
    assert.ok(!steps.includes('backupDatabase'), `no backup was attempted: ${steps.join(', ')}`);
    return progress;
  };

  it('a DEK regeneration that never ends: KEY_CHANGE_WAIT_TIMEOUT after the 6-hour wait, nothing written, the night failed', async () => {
    const s = await setup('regenerate', 'orders');
    // A regeneration that dies after its first batch and is never resumed: the key change stays recorded.
    await assert.rejects(
      s.engine.regenerate('orders', () => {
        throw new Error('worker lost');
      }),
      /worker lost/,
    );
    assert.equal((await s.engine.keyState('orders')).keyChangeInProgress, true);
    const night = '2026-11-10';
    await s.worker.runUntil(async () => {
      // The default 6-hour bound; re-checks every 30 min instead of every minute keep the history short.
      const handle = await startWaiting(s, 'orders', night, 'awaiting-key-change', { keyChangeRecheckMs: 30 * 60_000 });
      await skipTimeUntilClosed(suite.env, suite.client, [handle.workflowId], 7 * HOUR);
      const failure = await failsWith(handle.result(), 'KEY_CHANGE_WAIT_TIMEOUT', 'backup held by a regeneration');
      assert.equal(failure.nonRetryable, true);
      assert.match(failure.message, /database orders was still being re-encrypted when the wait ended/);
      const waited = await workflowTimeMs(handle);
      assert.ok(waited >= 6 * HOUR, `gave up after ${waited / HOUR} h of workflow time, before its 6-hour bound`);
      await assertFailedNight(s, handle, 'orders', night, /still being re-encrypted/);
    });
    assert.equal((await s.engine.keyState('orders')).keyChangeInProgress, true, 'the failed backup left the key change alone');
  });

  it('a master-key rotation under the KMS that never ends: KEY_CHANGE_WAIT_TIMEOUT after the 6-hour wait, nothing written, the night failed', async () => {
    const s = await setup('master-key', 'hr', 'kms-hsm');
    const units = s.unitSets.create('kms-hsm', { units: 2, entries: 4 });
    await units.loadNewMasterKey(); // stage 1 of a rotation nobody finishes
    const night = '2026-11-11';
    await s.worker.runUntil(async () => {
      const handle = await startWaiting(s, 'hr', night, 'awaiting-master-key', { keyChangeRecheckMs: 30 * 60_000 });
      await skipTimeUntilClosed(suite.env, suite.client, [handle.workflowId], 7 * HOUR);
      const failure = await failsWith(handle.result(), 'KEY_CHANGE_WAIT_TIMEOUT', 'backup held by a master-key rotation');
      assert.match(failure.message, /the master-key rotation was still running when the wait ended/);
      const waited = await workflowTimeMs(handle);
      assert.ok(waited >= 6 * HOUR, `gave up after ${waited / HOUR} h of workflow time, before its 6-hour bound`);
      await assertFailedNight(s, handle, 'hr', night, /master-key rotation was still running/);
    });
    assert.equal((await units.listUnits()).every((u) => u.next.state === 'valid'), true, 'the registers were left as they were');
  });

  it('a rewrap that never completes: the 6-hour awaitRewrap fails REWRAP_WAIT_TIMEOUT, the backup fails through it, nothing written, the night failed', async () => {
    const s = await setup('rewrap', 'payroll');
    s.registry.setRewrappedVersion(s.keyId, 1);
    // Rotated outside keyops; no rewrap ever runs (no watcher, nobody signals).
    await s.kms.rotateKey(s.keyId, 'by-hand');
    const night = '2026-11-12';
    await s.worker.runUntil(async () => {
      // Every default: a 6-hour wait re-checking the key every 10 minutes.
      const handle = await startWaiting(s, 'payroll', night, 'awaiting-rewrap');
      await skipTimeUntilClosed(suite.env, suite.client, [handle.workflowId, `${backupWorkflowId('payroll', night)}/await-rewrap`], 7 * HOUR);
      const failure = await failsWith(handle.result(), 'REWRAP_WAIT_TIMEOUT', 'backup waiting for a rewrap');
      assert.equal(failure.nonRetryable, true);
      assert.equal(failure.message, `rewrap of key ${s.keyId} did not reach version 2 within 360 min`);
      // The backup itself fails with the child's failure: its awaitRewrap run is what timed out.
      const child = childFailureOf(await handle.result().catch((e: unknown) => e));
      assert.equal(child?.execution.workflowId, `${backupWorkflowId('payroll', night)}/await-rewrap`);
      const awaitHandle = suite.client.workflow.getHandle(`${backupWorkflowId('payroll', night)}/await-rewrap`);
      assert.equal((await awaitHandle.describe()).status.name, 'FAILED');
      const waited = await workflowTimeMs(awaitHandle);
      assert.ok(waited >= 6 * HOUR, `awaitRewrap gave up after ${waited / HOUR} h of workflow time`);
      // The re-check interval, from the timers the run started: the clock moved one timer at a
      // time, so each of the 6 h's 10-minute re-checks ran.
      const timers = ((await awaitHandle.fetchHistory()).events ?? []).flatMap((e) => {
        const t = e.timerStartedEventAttributes?.startToFireTimeout;
        return t ? [Number(t.seconds ?? 0)] : [];
      });
      assert.ok(timers.length >= 36 && timers.every((s) => s <= 600), `re-checks the key every 10 min for 6 h: timers of ${timers.join(', ')} s`);
      const checks = (await activitiesOf(awaitHandle)).filter((a) => a === 'describeKey').length;
      assert.ok(checks >= 36, `it re-checked the key after each timer: ${checks} look-ups`);
      const progress = await assertFailedNight(s, handle, 'payroll', night, /did not reach version 2 within 360 min/);
      assert.equal(progress.awaitedVersion, 2);
    });
    assert.equal(s.registry.getRewrappedVersion(s.keyId), 1);
  });
});
