import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, openSync, readdirSync, readSync, statSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ApplicationFailure, ScheduleOverlapPolicy, WorkflowFailedError } from '@temporalio/client';
import { LocalKms } from '../activities/kms/local-kms';
import { drillSample } from '../activities/restore-drill';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { SqliteBackupCatalog } from '../activities/catalog/sqlite-backup-catalog';
import { ScheduleFileError, parseScheduleFile, parseDuration } from '../client/schedules/schedule-file';
import { DRILL_SCHEDULE_ID, applyDrillSchedule } from '../client/schedules/restore-drill-schedule';
import { nightlyBackup, restoreDrill, rotateRootKey } from '../workflows';
import { backupWorkflowId } from '../workflows/backup-messages';
import { drillWorkflowId } from '../workflows/drill-messages';
import { keyEntityWorkflowId, rewrapWorkflowId } from '../workflows/root-key-messages';
import { OutcomeAttribute } from '../workflows/search-attributes';
import { alertReceiver } from './helpers/alert-receiver';
import { localActivities } from './helpers/local-activities';
import { recordHistory } from './helpers/record-history';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import Database from 'better-sqlite3-multiple-ciphers';

describe('restoreDrill on a real worker, encrypted database, KMS and catalog files', () => {
  const suite = useSuiteFixture('restore-drill');

  /** A database `db` with backups for nights 1 and 2 under root-key version 1 and night 3 under version 2. */
  const setup = async (label: string, db: string, alertWebhook?: string, wrap?: (local: ReturnType<typeof localActivities>) => ReturnType<typeof localActivities>['activities']) => {
    const dataDir = join(suite.dir, label);
    const kms = LocalKms.open({ path: join(dataDir, 'kms', 'keys.sqlite'), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(dataDir, 'registry', 'wdeks.sqlite'));
    const local = localActivities({ dataDir, kms, registry, ...(alertWebhook ? { alertWebhook } : {}) });
    const { keyId } = await kms.createKey({ name: `drill-${label}` });
    const taskQueue = uniqueTaskQueue(label);
    const worker = await createTestWorker(suite.env, { taskQueue, activities: wrap ? wrap(local) : local.activities });
    await local.engine.createDatabase(db, keyId);
    await local.engine.withDatabase(db, (d) => d.exec('CREATE TABLE t (v); INSERT INTO t VALUES (1), (2), (3);'));
    const night = (n: string) =>
      suite.client.workflow.execute(nightlyBackup, { taskQueue, workflowId: backupWorkflowId(db, n), args: [{ databaseId: db, night: n }] });
    /** Runs the three nights and the rotation between them, then `body`, on the one worker run. */
    const run = <T>(body: () => Promise<T>): Promise<T> =>
      worker.runUntil(async () => {
        await night('2026-11-01');
        await night('2026-11-02');
        await suite.client.workflow.execute(rotateRootKey, { taskQueue, workflowId: rewrapWorkflowId(keyId, 2), args: [{ keyId, targetVersion: 2, rotate: true }] });
        await night('2026-11-03');
        return body();
      });
    after(() => suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished').catch(() => undefined));
    return { dataDir, kms, keyId, taskQueue, run, ...local };
  };

  it('samples the oldest, the retired-version and the newest backup, restores each, and records when and how in the catalog', async (t) => {
    const s = await setup('pass', 'ledger');
    const workflowId = drillWorkflowId('ledger', new Date().toISOString());
    let started = 0;
    let tookMs = 0;
    const result = await s.run(async () => {
      assert.deepEqual(
        s.catalog.list({ databaseId: 'ledger' }).map((e) => [e.night, e.keyVersion, e.lastDrill]),
        [
          ['2026-11-03', 2, undefined],
          ['2026-11-02', 1, undefined],
          ['2026-11-01', 1, undefined],
        ],
      );
      started = Date.now();
      const drilled = await suite.client.workflow.execute(restoreDrill, { taskQueue: s.taskQueue, workflowId, args: [{ databaseId: 'ledger' }] });
      tookMs = Date.now() - started;
      return drilled;
    });
    t.diagnostic(`drill of ${result.backups.length} backups took ${(tookMs / 1000).toFixed(2)} s`);
    assert.deepEqual(
      result.backups.map((b) => [b.backupId, b.keyVersion, b.reasons, b.result, b.rows]),
      [
        [backupWorkflowId('ledger', '2026-11-01'), 1, ['oldest'], 'passed', 3],
        [backupWorkflowId('ledger', '2026-11-02'), 1, ['retired-key-version'], 'passed', 3],
        [backupWorkflowId('ledger', '2026-11-03'), 2, ['newest'], 'passed', 3],
      ],
    );
    assert.deepEqual({ phase: result.phase, passed: result.passed, failed: result.failed }, { phase: 'done', passed: 3, failed: 0 });
    assert.equal((await suite.client.workflow.getHandle(workflowId).describe()).typedSearchAttributes.get(OutcomeAttribute), 'succeeded');
    for (const e of s.catalog.list({ databaseId: 'ledger' })) {
      assert.ok(e.lastDrill, `${e.backupId} has a last drill`);
      assert.deepEqual({ result: e.lastDrill.result, workflowId: e.lastDrill.workflowId, rows: e.lastDrill.rows }, { result: 'passed', workflowId, rows: 3 });
      const at = Date.parse(e.lastDrill.drilledAt);
      assert.ok(at >= started - 1000 && at <= Date.now(), `drilled at ${e.lastDrill.drilledAt}`);
    }
    // The scratch copies are gone.
    const scratch = join(s.dataDir, 'databases', 'scratch');
    assert.deepEqual(existsSync(scratch) ? readdirSync(scratch) : [], []);
    if (process.env.KEYOPS_RECORD_HISTORIES) await recordHistory(workflowId, 'restore-drill.json');
  });

  it('a backup that retention deletes after the sample was chosen is skipped, not failed: no alert, nothing recorded for it', async () => {
    const s = await setup('retention-race', 'orders', undefined, (local) => ({
      ...local.activities,
      // Retention runs between the choice and the restore: the oldest backup is gone.
      selectDrillSample: async (input: Parameters<typeof local.activities.selectDrillSample>[0]) => {
        const sample = await local.activities.selectDrillSample(input);
        const oldest = local.catalog.get(sample[0]!.backupId)!;
        local.catalog.record({ ...oldest, status: 'deleted' });
        return sample;
      },
    }));
    const workflowId = drillWorkflowId('orders', new Date().toISOString());
    const result = await s.run(() => suite.client.workflow.execute(restoreDrill, { taskQueue: s.taskQueue, workflowId, args: [{ databaseId: 'orders' }] }));
    assert.deepEqual(
      result.backups.map((b) => [b.backupId, b.result]),
      [
        [backupWorkflowId('orders', '2026-11-01'), 'skipped'],
        [backupWorkflowId('orders', '2026-11-02'), 'passed'],
        [backupWorkflowId('orders', '2026-11-03'), 'passed'],
      ],
    );
    assert.match(result.backups[0]!.error ?? '', /deleted by retention/);
    assert.deepEqual({ phase: result.phase, passed: result.passed, failed: result.failed }, { phase: 'done', passed: 2, failed: 0 });
    assert.equal((await suite.client.workflow.getHandle(workflowId).describe()).typedSearchAttributes.get(OutcomeAttribute), 'succeeded');
    assert.equal(s.catalog.get(backupWorkflowId('orders', '2026-11-01'))?.lastDrill, undefined, 'nothing recorded for the skipped backup');
  });

  it('a corrupted backup file fails the drill, is recorded as failed, and raises the backup alert (Outcome, webhook)', async () => {
    const { url: hookUrl, received } = await alertReceiver();
    const s = await setup('corrupt', 'orders', hookUrl);
    const workflowId = drillWorkflowId('orders', new Date().toISOString());
    const oldestId = backupWorkflowId('orders', '2026-11-01');
    const err = await s
      .run(() => {
        const oldest = s.catalog.get(oldestId)!;
        // Flip bytes in the middle of the file: the header still reads, the data does not.
        const fd = openSync(oldest.path, 'r+');
        const at = Math.floor(statSync(oldest.path).size / 2);
        const bytes = Buffer.alloc(16);
        readSync(fd, bytes, 0, 16, at);
        writeSync(fd, Buffer.from(bytes.map((b) => b ^ 0xff)), 0, 16, at);
        closeSync(fd);
        return suite.client.workflow.execute(restoreDrill, { taskQueue: s.taskQueue, workflowId, args: [{ databaseId: 'orders' }] });
      })
      .then(() => undefined, (e: unknown) => e);
    const oldest = s.catalog.get(oldestId)!;
    assert.ok(err instanceof WorkflowFailedError, String(err));
    assert.ok(err.cause instanceof ApplicationFailure);
    assert.equal(err.cause.type, 'DRILL_FAILED');
    assert.equal(err.cause.nonRetryable, true);
    assert.match(err.cause.message, /1 of 3 drilled backup\(s\) did not restore: backup\/orders\/2026-11-01/);
    assert.equal((await suite.client.workflow.getHandle(workflowId).describe()).typedSearchAttributes.get(OutcomeAttribute), 'alert');
    const drills = s.catalog.list({ databaseId: 'orders' }).map((e) => [e.night, e.lastDrill?.result]);
    assert.deepEqual(drills, [
      ['2026-11-03', 'passed'],
      ['2026-11-02', 'passed'],
      ['2026-11-01', 'failed'],
    ]);
    assert.ok(s.catalog.get(oldest.backupId)?.lastDrill?.error, 'the failure says why');
    assert.deepEqual(
      received.map((a) => ({ event: a.event, workflowId: a.workflowId, drilled: a.drilled, failed: (a.failed as { backupId: string }[]).map((f) => f.backupId) })),
      [{ event: 'keyops.drill.alert', workflowId, drilled: 3, failed: [oldest.backupId] }],
    );
  });

  it('a drill that cannot choose its backups (a key gone from the KMS) raises the backup alert too', async () => {
    const { url: hookUrl, received } = await alertReceiver();
    const s = await setup('no-sample', 'notes', hookUrl);
    const workflowId = drillWorkflowId('notes', new Date().toISOString());
    const goneKey = randomUUID();
    const err = await s
      .run(() => {
        // A backup catalogued under a key the KMS no longer has (deleted, or another KMS's).
        const newest = s.catalog.get(backupWorkflowId('notes', '2026-11-03'))!;
        s.catalog.record({ ...newest, backupId: backupWorkflowId('notes', '2026-11-04'), night: '2026-11-04', keyId: goneKey });
        return suite.client.workflow.execute(restoreDrill, { taskQueue: s.taskQueue, workflowId, args: [{ databaseId: 'notes' }] });
      })
      .then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof WorkflowFailedError, String(err));
    assert.ok(err.cause instanceof ApplicationFailure);
    assert.equal(err.cause.type, 'DRILL_FAILED');
    assert.match(err.cause.message, new RegExp(`could not choose its backups: .*${goneKey}`));
    assert.equal((await suite.client.workflow.getHandle(workflowId).describe()).typedSearchAttributes.get(OutcomeAttribute), 'alert');
    assert.deepEqual(
      received.map((a) => ({ event: a.event, workflowId: a.workflowId, drilled: a.drilled, failed: a.failed, gone: String(a.reason).includes(goneKey) })),
      [{ event: 'keyops.drill.alert', workflowId, drilled: 0, failed: [], gone: true }],
    );
    assert.ok(s.catalog.list({ databaseId: 'notes' }).every((e) => e.lastDrill === undefined), 'nothing drilled, nothing recorded');
    if (process.env.KEYOPS_RECORD_HISTORIES) await recordHistory(workflowId, 'restore-drill-sample-failed.json');
  });

  it('a catalog written before drills existed gains them at open, its rows intact', () => {
    const path = join(suite.dir, 'old-catalog', 'backups.sqlite');
    const before = SqliteBackupCatalog.open(path);
    before.record({
      backupId: 'backup/old/2026-01-01', databaseId: 'old', night: '2026-01-01', createdAt: '2026-01-01T02:00:00.000Z', path: '/x.kob', bytes: 1, sha256: 'a',
      keyId: 'k', keyVersion: 1, backupKeyHash: 'h', verification: { tables: 1, rows: 1 }, status: 'good',
    });
    before.close();
    // The catalog as an older keyops left it: no drills table.
    const raw = new Database(path);
    raw.exec('DROP TABLE drills');
    raw.close();
    const reopened = SqliteBackupCatalog.open(path);
    assert.equal(reopened.list().length, 1);
    assert.equal(reopened.get('backup/old/2026-01-01')?.lastDrill, undefined);
    reopened.recordDrill('backup/old/2026-01-01', { drilledAt: '2026-02-01T00:00:00.000Z', result: 'passed', workflowId: 'drill/all/x', rows: 1, tables: 1 });
    assert.equal(reopened.get('backup/old/2026-01-01')?.lastDrill?.result, 'passed');
    reopened.close();
  });

  it('samples one backup per retired key version, each database\'s oldest once, without the newest when asked', () => {
    const e = (db: string, night: string, keyVersion: number, status: 'good' | 'deleted' = 'good') => ({
      backupId: `backup/${db}/${night}`, databaseId: db, night, createdAt: `${night}T02:00:00.000Z`, path: '/x', bytes: 1, sha256: 'a', keyId: `k-${db}`, keyVersion,
      backupKeyHash: 'h', verification: undefined, status,
    });
    const sample = drillSample([e('a', '2026-01-01', 1, 'deleted'), e('a', '2026-01-02', 1), e('a', '2026-01-03', 2), e('a', '2026-01-04', 2), e('a', '2026-01-05', 3), e('b', '2026-01-01', 5)], (k) => (k === 'k-a' ? 3 : 5), false);
    assert.deepEqual(
      sample.map((x) => [x.backupId, x.reasons]),
      [
        ['backup/b/2026-01-01', ['oldest']],
        ['backup/a/2026-01-02', ['oldest', 'retired-key-version']],
        ['backup/a/2026-01-04', ['retired-key-version']],
      ],
    );
  });

  it('the schedule file\'s drills: every: 7d applies a schedule idempotently; a bad value is refused with the field named', async () => {
    const file = parseScheduleFile('watch:\n  every: 1h\ndrills:\n  every: 7d\n', 'schedules.yaml');
    assert.deepEqual(file.drills, { every: '7d' });
    const problems = (text: string) => {
      try {
        parseScheduleFile(text, 'schedules.yaml');
        return [];
      } catch (err) {
        if (err instanceof ScheduleFileError) return err.problems;
        throw err;
      }
    };
    assert.deepEqual(problems('drills:\n  every: weekly\n'), ['schedules.yaml:2:10: drills.every: must be a whole number of days or hours such as 7d or 12h']);
    assert.deepEqual(problems('drills:\n  every: 7d\n  at: "02:00"\n'), ['schedules.yaml:2:3: drills: Unrecognized key: "at" (at)']);

    const taskQueue = uniqueTaskQueue('drill-schedule');
    const everyMs = parseDuration(file.drills.every)!;
    await suite.client.schedule.getHandle(DRILL_SCHEDULE_ID).delete().catch(() => undefined);
    after(() => suite.client.schedule.getHandle(DRILL_SCHEDULE_ID).delete().catch(() => undefined));
    assert.equal(await applyDrillSchedule(suite.client, everyMs, taskQueue, 'test'), 'created');
    assert.equal(await applyDrillSchedule(suite.client, everyMs, taskQueue, 'test'), 'unchanged');
    const described = await suite.client.schedule.getHandle(DRILL_SCHEDULE_ID).describe();
    assert.equal(described.spec.intervals?.[0]?.every, 7 * 86_400_000);
    assert.equal(described.policies.overlap, ScheduleOverlapPolicy.SKIP);
    assert.equal(described.action.type === 'startWorkflow' ? described.action.workflowType : undefined, 'restoreDrill');
    assert.equal(await applyDrillSchedule(suite.client, 86_400_000, taskQueue, 'test'), 'updated');
  });
});
