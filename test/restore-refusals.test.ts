import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import Database from 'better-sqlite3-multiple-ciphers';
import type { KeyManagementService } from '../activities/kms/key-management-service';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { nightlyBackup, restoreBackup } from '../workflows';
import { backupWorkflowId } from '../workflows/backup-messages';
import { OutcomeAttribute, PhaseAttribute } from '../workflows/search-attributes';
import { filesAt } from './helpers/backup-nights';
import { localActivities } from './helpers/local-activities';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { failsWith } from './helpers/workflow-failures';

const ROWS = 25;

/**
 * restoreBackup refuses, before it writes anything, a backup whose root-key version the KMS no
 * longer has (KEY_VERSION_MISSING), whose root key is disabled (KEY_DISABLED), or that retention
 * deleted (BACKUP_NOT_FOUND, "deleted by retention"). Each refusal leaves no file at the target,
 * not even a partial, and changes neither the KMS nor the catalog; the same restore of a backup
 * that is fine succeeds, so it is the refusal that stops it.
 */
describe('restoreBackup refusals', () => {
  const suite = useSuiteFixture('restore-refusals');

  /**
   * A worker on the embedded adapters whose KMS can be swapped for another store (as when the KMS
   * is restored from an older copy), and database `databaseId` with ROWS rows under a fresh key.
   */
  const setup = async (label: string, databaseId: string) => {
    const dataDir = join(suite.dir, label);
    const masterSecret = randomBytes(32);
    const kmsPath = join(dataDir, 'kms', 'keys.sqlite');
    const live = LocalKms.open({ path: kmsPath, masterSecret });
    let current: KeyManagementService = live;
    const kms = new Proxy({} as KeyManagementService, {
      get(_target, prop) {
        const value: unknown = Reflect.get(current, prop);
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(current) : value;
      },
    });
    const registry = SqliteWdekRegistry.open(join(dataDir, 'registry', 'wdeks.sqlite'));
    const local = localActivities({ dataDir, kms, registry });
    const { keyId } = await live.createKey({ name: `restore-${label}` });
    await local.engine.createDatabase(databaseId, keyId);
    await local.engine.withDatabase(databaseId, (db) => {
      db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
      for (let i = 0; i < ROWS; i++) db.prepare('INSERT INTO t (v) VALUES (?)').run(`row ${i}`);
    });
    const taskQueue = uniqueTaskQueue(label);
    const worker = await createTestWorker(suite.env, { taskQueue, activities: local.activities });
    let restores = 0;
    return {
      ...local,
      dataDir,
      live,
      keyId,
      taskQueue,
      worker,
      /** From now on the worker's KMS is `store`. */
      useKms: (store: KeyManagementService) => void (current = store),
      /** A copy of the KMS store as it is now, opened (the key's versions so far, and no later ones). */
      snapshotKms: async () => {
        const path = join(dataDir, 'kms-copy', 'keys.sqlite');
        mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
        const source = new Database(kmsPath, { readonly: true, fileMustExist: true });
        try {
          await source.backup(path);
        } finally {
          source.close();
        }
        return LocalKms.open({ path, masterSecret });
      },
      backup: (night: string, retain?: number) =>
        suite.client.workflow.execute(nightlyBackup, {
          taskQueue,
          workflowId: backupWorkflowId(databaseId, night),
          args: [{ databaseId, night, ...(retain === undefined ? {} : { retain }) }],
        }),
      restore: (backupId: string, targetPath: string) =>
        suite.client.workflow.start(restoreBackup, { taskQueue, workflowId: `restore/${label}/${++restores}`, args: [{ backupId, targetPath }] }),
    };
  };
  type Setup = Awaited<ReturnType<typeof setup>>;

  /**
   * Restores `backupId` to a fresh target and asserts the refusal: typed, non-retryable, with
   * `message`; the run failed in checking-keys and never started restoring; nothing at the target;
   * the catalog and the key as `kms` describes it are as they were.
   */
  const assertRefused = async (s: Setup, kms: KeyManagementService, backupId: string, type: string, message: string) => {
    const target = join(s.dataDir, 'restored', `${type.toLowerCase()}.db`);
    const catalogBefore = s.catalog.list();
    const keyBefore = await kms.getKeyMetadata(s.keyId);
    const handle = await s.restore(backupId, target);
    const failure = await failsWith(handle.result(), type, `restore of ${backupId}`);
    assert.equal(failure.nonRetryable, true);
    assert.equal(failure.message, message);
    const description = await handle.describe();
    assert.equal(description.status.name, 'FAILED');
    assert.equal(description.typedSearchAttributes.get(OutcomeAttribute), 'failed');
    assert.equal(description.typedSearchAttributes.get(PhaseAttribute), 'checking-keys');
    const steps = ((await handle.fetchHistory()).events ?? []).flatMap((e) => e.activityTaskScheduledEventAttributes?.activityType?.name ?? []);
    assert.deepEqual(steps, ['checkRestorable'], 'refused before any restore began');
    assert.equal(existsSync(target), false);
    assert.deepEqual(filesAt(target), [], 'no file at the target, not even a partial');
    assert.deepEqual(s.catalog.list(), catalogBefore, 'the catalog is unchanged');
    assert.deepEqual(await kms.getKeyMetadata(s.keyId), keyBefore, 'the key is unchanged');
  };

  /** The same restore of a backup that is fine: the rows come back. */
  const assertRestores = async (s: Setup, backupId: string, keyVersion: number) => {
    const target = join(s.dataDir, 'restored', `${backupId.replace(/\W+/g, '-')}.db`);
    const result = await (await s.restore(backupId, target)).result();
    assert.deepEqual({ backupId: result.backupId, keyVersion: result.keyVersion, rows: result.rows }, { backupId, keyVersion, rows: ROWS });
    assert.deepEqual(filesAt(target), [`${backupId.replace(/\W+/g, '-')}.db`], 'the restored file alone, no partial left');
  };

  it('KEY_VERSION_MISSING: a backup under version 2 of a key, after the KMS was restored from a copy that has only version 1', async () => {
    const s = await setup('version-missing', 'ledger');
    await s.worker.runUntil(async () => {
      const first = await s.backup('2026-10-01');
      assert.equal(first.keyVersion, 1);
      const snapshot = await s.snapshotKms();
      await s.live.rotateKey(s.keyId, 'by-hand');
      await s.engine.reprotect('ledger');
      const second = await s.backup('2026-10-02');
      assert.equal(second.keyVersion, 2, 'the second backup is under version 2');

      // The KMS store is lost and restored from its copy of before the rotation.
      s.useKms(snapshot);
      assert.deepEqual((await snapshot.getKeyMetadata(s.keyId)).versions.map((v) => v.version), [1]);
      await assertRefused(s, snapshot, second.backupId, 'KEY_VERSION_MISSING', `backup ${second.backupId} needs version 2 of root key ${s.keyId}, which the KMS no longer has`);
      await assertRestores(s, first.backupId, 1);
    });
  });

  it('KEY_DISABLED: a backup whose root key is disabled; restorable again once the key is enabled', async () => {
    const s = await setup('key-disabled', 'orders');
    await s.worker.runUntil(async () => {
      const night = await s.backup('2026-10-03');
      await s.live.disableKey(s.keyId);
      await assertRefused(s, s.live, night.backupId, 'KEY_DISABLED', `backup ${night.backupId} needs root key ${s.keyId}, which is disabled`);
      assert.equal((await s.live.getKeyMetadata(s.keyId)).state, 'disabled', 'still disabled: the refusal changed nothing');
      await s.live.enableKey(s.keyId);
      await assertRestores(s, night.backupId, 1);
    });
  });

  it('BACKUP_NOT_FOUND: a backup deleted by retention; the backup retention kept still restores', async () => {
    const s = await setup('retention', 'shop');
    await s.worker.runUntil(async () => {
      const old = await s.backup('2026-10-04');
      const kept = await s.backup('2026-10-05', 1);
      assert.deepEqual(kept.deleted, [old.backupId], 'retention deleted the older backup');
      const entry = s.catalog.get(old.backupId);
      assert.equal(entry?.status, 'deleted');
      assert.equal(existsSync(entry.path), false, 'its file is gone');
      await assertRefused(s, s.live, old.backupId, 'BACKUP_NOT_FOUND', `backup ${old.backupId} was deleted by retention`);
      await assertRestores(s, kept.backupId, 1);
    });
  });
});
