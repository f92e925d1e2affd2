import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { describe, it } from 'node:test';
import { ActivityFailure, WorkflowFailedError } from '@temporalio/client';
import { decodeArrayFromPayloads } from '@temporalio/common/lib/internal-non-workflow';
import { EngineError } from '../activities/engines/engine-error';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { type awaitRewrap, nightlyBackup, regenerateDataKey, rotateMasterKey, rotateRootKey } from '../workflows';
import { decideRecoveryUpdate, masterKeyRotationQuery, masterKeyRotationWorkflowId } from '../workflows/master-key-messages';
import { regenerateWorkflowId } from '../workflows/regenerate-data-key';
import { backupProgressQuery, backupWorkflowId } from '../workflows/backup-messages';
import { keyEntityWorkflowId, rewrapProgressQuery, rewrapWorkflowId } from '../workflows/root-key-messages';
import { OutcomeAttribute } from '../workflows/search-attributes';
import { backupFiles } from './helpers/backup-nights';
import { alertReceiver } from './helpers/alert-receiver';
import { localActivities } from './helpers/local-activities';
import { recordHistory } from './helpers/record-history';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';

const eventMs = (e: { eventTime?: { seconds?: unknown; nanos?: number | null } | null }) =>
  Number(e.eventTime?.seconds ?? 0) * 1000 + Math.round((e.eventTime?.nanos ?? 0) / 1e6);

describe('nightlyBackup on a real worker, encrypted database, KMS and catalog files', () => {
  const suite = useSuiteFixture('nightly-backup');

  const setup = async (label: string, alertWebhook?: string, kmsUnitSet?: string) => {
    const dataDir = join(suite.dir, label);
    const kms = LocalKms.open({ path: join(dataDir, 'kms', 'keys.sqlite'), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(dataDir, 'registry', 'wdeks.sqlite'));
    const local = localActivities({ dataDir, kms, registry, ...(alertWebhook ? { alertWebhook } : {}), ...(kmsUnitSet ? { kmsUnitSet } : {}) });
    const { keyId } = await kms.createKey({ name: `nightly-${label}` });
    const taskQueue = uniqueTaskQueue(label);
    const worker = await createTestWorker(suite.env, { taskQueue, activities: local.activities });
    return { dataDir, kms, registry, keyId, taskQueue, worker, ...local };
  };

  it('waits while a root-key rewrap is in progress, is released by its signal and backs up; a naive backup then fails', async (t) => {
    const s = await setup('incident');
    await s.engine.createDatabase('payroll', s.keyId);
    await s.engine.withDatabase('payroll', (db) => {
      db.exec('CREATE TABLE pay (id INTEGER PRIMARY KEY, amount INTEGER)');
      const insert = db.prepare('INSERT INTO pay (amount) VALUES (?)');
      for (let i = 0; i < 500; i++) insert.run(i * 7);
    });
    // Application WDEKs that sort before the database's (`db/…`): the rewrap reaches the
    // database's keys last, so the key stays in its transitional state for a while.
    const filler = [];
    for (let i = 0; i < 20_000; i++) {
      const { wdek, keyVersion } = await s.kms.wrap(s.keyId);
      filler.push({ id: `app/${String(i).padStart(6, '0')}`, keyId: s.keyId, keyVersion, wdek, owner: 'app' });
    }
    s.registry.registerMany(filler);
    s.registry.setRewrappedVersion(s.keyId, 1);

    await s.worker.runUntil(async () => {
      const rewrap = await suite.client.workflow.start(rotateRootKey, {
        taskQueue: s.taskQueue,
        workflowId: rewrapWorkflowId(s.keyId, 2),
        args: [{ keyId: s.keyId, targetVersion: 2, rotate: true, parallelism: 1, chunkSize: 1000, batchSize: 100 }],
      });
      for (let i = 0; (await rewrap.query(rewrapProgressQuery)).phase !== 'rewrapping'; i++) {
        assert.ok(i < 200, 'the rewrap reached its rewrapping phase');
        await new Promise((r) => setTimeout(r, 50));
      }

      const night = '2026-11-01';
      const backup = await suite.client.workflow.start(nightlyBackup, {
        taskQueue: s.taskQueue,
        workflowId: backupWorkflowId('payroll', night),
        args: [{ databaseId: 'payroll', night }],
      });
      for (let i = 0; (await backup.query(backupProgressQuery)).phase !== 'awaiting-rewrap'; i++) {
        assert.ok(i < 200, 'the backup saw the rotation and waits');
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal((await rewrap.query(rewrapProgressQuery)).phase, 'rewrapping', 'the rewrap is still running');

      // What a plain `backup database` at this moment gets: the engine refuses, retryably.
      const naive = await s.engine.backup('payroll', join(suite.dir, 'incident', 'naive.kob')).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(naive instanceof EngineError && naive.code === 'KEY_IN_TRANSITION', `naive backup: ${String(naive)}`);
      assert.match(naive.message, /root key .* is at version 2 but 2 of its WDEKs are still on version 1/);

      const result = await backup.result();
      await rewrap.result();
      assert.deepEqual(
        { phase: result.phase, awaitedVersion: result.awaitedVersion, keyVersion: result.keyVersion, failedNights: result.failedNights },
        { phase: 'done', awaitedVersion: 2, keyVersion: 2, failedNights: 0 },
      );

      // The latency the operator cares about: rewrap announced → backup activity started.
      const rewrapEvents = (await rewrap.fetchHistory()).events ?? [];
      const scheduled = new Map(rewrapEvents.filter((e) => e.activityTaskScheduledEventAttributes).map((e) => [String(e.eventId), e]));
      const announced = rewrapEvents.find(
        (e) => scheduled.get(String(e.activityTaskCompletedEventAttributes?.scheduledEventId))?.activityTaskScheduledEventAttributes?.activityType?.name === 'announceRewrapComplete',
      );
      assert.ok(announced, 'the rewrap announced completion');
      const backupEvents = (await backup.fetchHistory()).events ?? [];
      const backupScheduled = backupEvents.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'backupDatabase');
      const backupStarted = backupEvents.find((e) => String(e.activityTaskStartedEventAttributes?.scheduledEventId) === String(backupScheduled?.eventId));
      assert.ok(backupStarted, 'the backup activity started');
      const latency = eventMs(backupStarted) - eventMs(announced);
      assert.ok(latency >= 0, `backup started ${latency} ms after the rewrap was announced`);
      // Released by the announcement itself, not by a later re-check of the key: how fast that
      // is on this machine is measured by npm run bench:backup (rewrap complete -> backup started).
      const waited = await suite.client.workflow.getHandle<typeof awaitRewrap>(`${backupWorkflowId('payroll', night)}/await-rewrap`).result();
      assert.equal(waited.releasedBy, 'signal');
      t.diagnostic(`rewrap announced -> backup started: ${latency} ms`);

      const entry = s.catalog.get(backupWorkflowId('payroll', night));
      assert.ok(entry);
      assert.deepEqual(
        { status: entry.status, keyId: entry.keyId, keyVersion: entry.keyVersion, verification: entry.verification },
        { status: 'good', keyId: s.keyId, keyVersion: 2, verification: { tables: 1, rows: 500 } },
      );
      assert.deepEqual(await s.engine.verifyBackup(entry), { tables: 1, rows: 500 });
      assert.equal((await backup.describe()).typedSearchAttributes.get(OutcomeAttribute), 'succeeded');
      // The night's test restore asks for the authenticated check (drills and backup verify ask for the full one).
      const verifyScheduled = ((await backup.fetchHistory()).events ?? []).find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'verifyBackupImage');
      const [verifyInput] = await decodeArrayFromPayloads(suite.client.options.loadedDataConverter, verifyScheduled?.activityTaskScheduledEventAttributes?.input?.payloads);
      assert.deepEqual(verifyInput, { path: entry.path, sha256: entry.sha256, check: 'authenticated' });
      assert.match(entry.sha256, /^tags-sha256:[0-9a-f]{64}$/, 'the catalog records the hash of the chunk tags');
      // Since the nightly-backup-patches-first patch (nightly-backup-local-bookkeeping.json and
      // nightly-backup-checked-input.json are from before it).
      if (process.env.KEYOPS_RECORD_HISTORIES) await recordHistory(backup.workflowId, 'nightly-backup-patches-first.json');
    });
    await suite.client.workflow.getHandle(keyEntityWorkflowId(s.keyId)).terminate('test finished');
  });

  it('raises the alert after two failed nights in a row (search attribute, webhook), and a good night clears it', async () => {
    const { url: hookUrl, received } = await alertReceiver();
    const s = await setup('alert', hookUrl);
    const run = (night: string) =>
      suite.client.workflow.execute(nightlyBackup, { taskQueue: s.taskQueue, workflowId: backupWorkflowId('crm', night), args: [{ databaseId: 'crm', night }] });
    const outcome = async (night: string) => (await suite.client.workflow.getHandle(backupWorkflowId('crm', night)).describe()).typedSearchAttributes.get(OutcomeAttribute);
    await s.worker.runUntil(async () => {
      // No such database yet: a configuration error, not retried.
      for (const [night, expected] of [
        ['2026-11-01', 'failed'],
        ['2026-11-02', 'alert'],
      ] as const) {
        const err = await run(night).then(() => undefined, (e: unknown) => e);
        assert.ok(err instanceof WorkflowFailedError, String(err));
        // A local activity's failure is the run's failure itself; an activity's is wrapped in ActivityFailure.
        const cause = err.cause instanceof ActivityFailure ? err.cause.cause : err.cause;
        assert.ok(cause instanceof Error);
        assert.match(cause.message, /no database crm/);
        assert.equal(await outcome(night), expected);
        if (expected === 'alert' && process.env.KEYOPS_RECORD_HISTORIES) await recordHistory(backupWorkflowId('crm', night), 'nightly-backup-alert-patches-first.json');
      }
      assert.deepEqual(
        received.map((a) => ({ event: a.event, databaseId: a.databaseId, night: a.night, failedNights: a.failedNights })),
        [{ event: 'keyops.backup.alert', databaseId: 'crm', night: '2026-11-02', failedNights: 2 }],
        'one webhook call, on the second failed night',
      );
      assert.match(String(received[0]!.reason), /no database crm/);
      await s.engine.createDatabase('crm', s.keyId);
      const good = await run('2026-11-03');
      assert.equal(good.failedNights, 0);
      assert.equal(await outcome('2026-11-03'), 'succeeded');
      assert.equal(s.catalog.recordNight('crm', '2026-11-04', 'failed'), 1, 'the streak restarted after the good night');
    });
  });

  it('retention keeps the newest good backups, deletes older files only after a new good one, and keeps the keys they need', async () => {
    const s = await setup('retention');
    await s.engine.createDatabase('logs', s.keyId);
    await s.engine.withDatabase('logs', (db) => db.exec('CREATE TABLE l (v); INSERT INTO l VALUES (1);'));
    const nights = ['2026-11-01', '2026-11-02', '2026-11-03', '2026-11-04'];
    await s.worker.runUntil(async () => {
      for (const night of nights) {
        const result = await suite.client.workflow.execute(nightlyBackup, {
          taskQueue: s.taskQueue,
          workflowId: backupWorkflowId('logs', night),
          args: [{ databaseId: 'logs', night, retain: 2 }],
        });
        assert.equal(result.phase, 'done');
      }
    });
    const entries = s.catalog.list({ databaseId: 'logs' });
    assert.deepEqual(
      entries.map((e) => [e.night, e.status, existsSync(e.path)]),
      [
        ['2026-11-04', 'good', true],
        ['2026-11-03', 'good', true],
        ['2026-11-02', 'deleted', false],
        ['2026-11-01', 'deleted', false],
      ],
    );
    for (const e of entries.filter((x) => x.status === 'good')) {
      assert.ok(s.engine.hasBackupKey('logs', e.backupKeyHash), 'the backup key of a retained backup is still registered');
      assert.deepEqual(await s.engine.verifyBackup(e), { tables: 1, rows: 1 });
    }
  });

  it('waits while the HSM master key under the KMS key storage rotates, and is released by the rotation end signal, not its poll', async () => {
    const s = await setup('mk-wait', undefined, 'kms-hsm');
    const units = s.unitSets.create('kms-hsm', { units: 3, entries: 4 });
    // The rotation stops before promoting unit 2 until an operator decides: it lasts as long as the test wants.
    for (let i = 0; i < 4; i++) units.injectFault({ step: 'promote', unitId: '2', timing: 'before', action: 'fatal' });
    await s.engine.createDatabase('hr', s.keyId);
    await s.engine.withDatabase('hr', (db) => db.exec('CREATE TABLE staff (name TEXT); INSERT INTO staff VALUES (1), (2), (3);'));
    const night = '2026-11-08';
    const mkWorkflowId = masterKeyRotationWorkflowId('kms-hsm', 'night');
    await s.worker.runUntil(async () => {
      const mk = await suite.client.workflow.start(rotateMasterKey, { taskQueue: s.taskQueue, workflowId: mkWorkflowId, args: [{ unitSetId: 'kms-hsm', requestId: 'night' }] });
      await waitUntil('the rotation to need an operator', async () => ((await mk.query(masterKeyRotationQuery)).phase === 'needs-operator' ? true : undefined));
      const handle = await suite.client.workflow.start(nightlyBackup, {
        taskQueue: s.taskQueue,
        workflowId: backupWorkflowId('hr', night),
        // A poll once an hour: only the rotation's signal can release this backup within the test.
        args: [{ databaseId: 'hr', night, keyChangeRecheckMs: 3_600_000 }],
      });
      await waitUntil('the backup to wait for the master key', async () => ((await handle.query(backupProgressQuery)).phase === 'awaiting-master-key' ? true : undefined));
      await waitUntil('the backup to ask the rotation for its end', async () =>
        ((await mk.fetchHistory()).events ?? []).some((e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'awaitMasterKeyRotation') ? true : undefined,
      );
      assert.deepEqual(backupFiles(s.dataDir, 'hr'), [], 'nothing written while the master key rotates');
      await mk.executeUpdate(decideRecoveryUpdate, { args: [{ action: 'promote', operator: 'test' }] });
      assert.equal((await mk.result()).phase, 'done');
      const promotedAt = Date.now();
      const result = await handle.result();
      assert.equal(result.phase, 'done');
      assert.ok(result.backupStartedAt! >= promotedAt - 1000, 'the backup started only after the rotation ended');
      const events = (await handle.fetchHistory()).events ?? [];
      assert.ok(events.some((e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'masterKeyRotationEnded'), 'released by the rotation end signal');
      assert.ok(!events.some((e) => e.timerFiredEventAttributes), 'the hour-long poll never fired');
      assert.equal(s.catalog.list({ databaseId: 'hr' }).length, 1);
      if (process.env.KEYOPS_RECORD_HISTORIES) await recordHistory(backupWorkflowId('hr', night), 'nightly-backup-master-key-patches-first.json');
    });
  });

  it('two runs of the same night (the schedule and a manual run) keep one good backup and no stray file', async () => {
    const s = await setup('same-night');
    await s.engine.createDatabase('crm', s.keyId);
    await s.engine.withDatabase('crm', (db) => {
      db.exec('CREATE TABLE c (id INTEGER PRIMARY KEY, v BLOB)');
      const insert = db.prepare('INSERT INTO c (v) VALUES (?)');
      for (let i = 0; i < 300; i++) insert.run(randomBytes(16 * 1024));
    });
    const night = '2026-11-07';
    const results = await s.worker.runUntil(() =>
      Promise.all(
        // A schedule names its runs `<id>-<fire time>`: the two ids differ, Temporal runs both.
        [backupWorkflowId('crm', night), `${backupWorkflowId('crm', night)}-2026-12-07T02:00:00Z`].map((workflowId) =>
          suite.client.workflow.execute(nightlyBackup, { taskQueue: s.taskQueue, workflowId, args: [{ databaseId: 'crm', night }] }),
        ),
      ),
    );
    assert.deepEqual(results.map((r) => r.phase), ['done', 'done']);
    const entries = s.catalog.list({ databaseId: 'crm' });
    assert.equal(entries.length, 1);
    assert.equal(entries[0]!.status, 'good');
    assert.deepEqual(results.map((r) => r.path), [entries[0]!.path, entries[0]!.path], 'both runs report the backup that was kept');
    assert.deepEqual(readdirSync(join(s.dataDir, 'backups', 'crm')), [basename(entries[0]!.path)], 'the duplicate file is gone, nothing partial is left');
    assert.deepEqual(await s.engine.verifyBackup(entries[0]!), { tables: 1, rows: 300 });
  });

  it('waits while the DEK is being regenerated (an interrupted regeneration resumed by regenerateDataKey), then backs up under the new DEK', async () => {
    const s = await setup('regenerate');
    await s.engine.createDatabase('orders', s.keyId);
    await s.engine.withDatabase('orders', (db) => {
      db.exec('CREATE TABLE o (id INTEGER PRIMARY KEY, v TEXT)');
      const insert = db.prepare('INSERT INTO o (v) VALUES (?)');
      db.transaction(() => {
        for (let i = 0; i < 20_000; i++) insert.run(`order ${i}`);
      })();
    });
    const oldDek = s.registry.get('db/orders/dek')!.wdek;
    // A regeneration that dies after its first batch: the key change stays in progress.
    await assert.rejects(
      s.engine.regenerate('orders', () => {
        throw new Error('worker lost');
      }),
      /worker lost/,
    );
    assert.equal((await s.engine.keyState('orders')).keyChangeInProgress, true);

    await s.worker.runUntil(async () => {
      const night = '2026-11-05';
      const backup = await suite.client.workflow.start(nightlyBackup, {
        taskQueue: s.taskQueue,
        workflowId: backupWorkflowId('orders', night),
        args: [{ databaseId: 'orders', night, keyChangeRecheckMs: 200 }],
      });
      for (let i = 0; (await backup.query(backupProgressQuery)).phase !== 'awaiting-key-change'; i++) {
        assert.ok(i < 200, 'the backup waits for the key change');
        await new Promise((r) => setTimeout(r, 50));
      }
      const regenerated = await suite.client.workflow.execute(regenerateDataKey, { taskQueue: s.taskQueue, workflowId: regenerateWorkflowId('orders'), args: [{ databaseId: 'orders' }] });
      assert.equal(regenerated.databaseId, 'orders');
      const result = await backup.result();
      assert.equal(result.phase, 'done');
      assert.ok(!s.registry.get('db/orders/dek')!.wdek.equals(oldDek), 'the database is under a new DEK');
      const entry = s.catalog.get(backupWorkflowId('orders', night))!;
      assert.deepEqual(await s.engine.verifyBackup(entry), { tables: 1, rows: 20_000 });
    });
  });
});
