import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { SqliteBackupCatalog } from '../activities/catalog/sqlite-backup-catalog';
import { EncryptedSqliteEngine } from '../activities/engines/encrypted-sqlite-engine';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { nightlyBackup } from '../workflows';
import { backupWorkflowId } from '../workflows/backup-messages';
import { freePort } from './helpers/child-process';
import { testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { WorkerProcess } from './helpers/worker-process';

const MIB = 1024 * 1024;

describe('nightlyBackup survives SIGKILL of its worker in the middle of writing', () => {
  const suite = useSuiteFixture('backup-crash');

  it('ends the night with one good catalogued backup and no half-written file', async () => {
    const secret = randomBytes(32);
    const kms = LocalKms.open({ path: join(suite.dir, 'kms', 'keys.sqlite'), masterSecret: secret });
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'registry', 'wdeks.sqlite'));
    const engine = EncryptedSqliteEngine.open({ dir: join(suite.dir, 'databases'), kms, registry });
    const { keyId } = await kms.createKey({ name: 'crash-backup' });
    await engine.createDatabase('big', keyId);
    // Large enough that writing the backup takes a while, so the kill lands mid-file.
    await engine.withDatabase('big', (db) => {
      db.exec('CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)');
      const insert = db.prepare('INSERT INTO blobs (data) VALUES (?)');
      db.transaction(() => {
        for (let i = 0; i < 384; i++) insert.run(randomBytes(MIB));
      })();
    });

    const taskQueue = uniqueTaskQueue('backup-crash');
    const workerEnv = async () => ({
      TEMPORAL_ADDRESS: testServerAddress(),
      KEYOPS_TASK_QUEUE: taskQueue,
      KEYOPS_DATA_DIR: suite.dir,
      KEYOPS_LOG_FORMAT: 'json',
      KEYOPS_METRICS_ADDRESS: `127.0.0.1:${await freePort()}`,
      KEYOPS_KMS_MASTER_SECRET: secret.toString('base64'),
    });
    const backupDir = join(suite.dir, 'backups', 'big');
    const files = () => {
      try {
        return readdirSync(backupDir);
      } catch {
        return [];
      }
    };
    const first = new WorkerProcess(await workerEnv());
    await first.waitFor('worker started');
    const night = '2026-12-01';
    const handle = await suite.client.workflow.start(nightlyBackup, { taskQueue, workflowId: backupWorkflowId('big', night), args: [{ databaseId: 'big', night }] });
    for (let i = 0; !files().some((f) => f.includes('.partial-')); i++) {
      assert.ok(i < 3000, 'the backup started writing');
      await new Promise((r) => setTimeout(r, 5));
    }
    first.child.kill('SIGKILL');
    await once(first.child, 'exit');
    const atKill = files();
    assert.ok(atKill.some((f) => f.includes('.partial-')) && !atKill.some((f) => f.endsWith('.kob')), `killed mid-write: ${atKill.join(', ')}`);

    // The retry comes once the heartbeat times out (30 s); the new worker finishes the night.
    const second = new WorkerProcess(await workerEnv());
    try {
      const result = await handle.result();
      assert.equal(result.phase, 'done');
      const left = files();
      const own = `big-2026-12-01-${(await handle.describe()).runId.replace(/-/g, '').slice(-12)}.kob`;
      assert.deepEqual(left, [own], 'one backup file, named for its run, no partial one left');
      const catalog = SqliteBackupCatalog.open(join(suite.dir, 'catalog', 'backups.sqlite'));
      try {
        const entries = catalog.list({ databaseId: 'big' });
        assert.deepEqual(
          entries.map((e) => ({ status: e.status, path: e.path, rows: e.verification?.rows })),
          [{ status: 'good', path: join(backupDir, own), rows: 384 }],
        );
        assert.deepEqual(await engine.verifyBackup(entries[0]!), { tables: 1, rows: 384 });
      } finally {
        catalog.close();
      }
    } finally {
      second.child.kill('SIGTERM');
      await once(second.child, 'exit');
      engine.close();
      registry.close();
      kms.close();
    }
  });
  it('a worker killed during the test restore leaves no scratch database behind once a worker starts again', async () => {
    const dir = join(suite.dir, 'verify-kill');
    const secret = randomBytes(32);
    const kms = LocalKms.open({ path: join(dir, 'kms', 'keys.sqlite'), masterSecret: secret });
    const registry = SqliteWdekRegistry.open(join(dir, 'registry', 'wdeks.sqlite'));
    const engine = EncryptedSqliteEngine.open({ dir: join(dir, 'databases'), kms, registry });
    const { keyId } = await kms.createKey({ name: 'crash-verify' });
    await engine.createDatabase('wide', keyId);
    await engine.withDatabase('wide', (db) => {
      db.exec('CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)');
      const insert = db.prepare('INSERT INTO blobs (data) VALUES (?)');
      db.transaction(() => {
        for (let i = 0; i < 384; i++) insert.run(randomBytes(MIB));
      })();
    });
    engine.close();
    registry.close();
    kms.close();
    const taskQueue = uniqueTaskQueue('verify-crash');
    const workerEnv = async () => ({
      TEMPORAL_ADDRESS: testServerAddress(),
      KEYOPS_TASK_QUEUE: taskQueue,
      KEYOPS_DATA_DIR: dir,
      KEYOPS_LOG_FORMAT: 'json',
      KEYOPS_METRICS_ADDRESS: `127.0.0.1:${await freePort()}`,
      KEYOPS_KMS_MASTER_SECRET: secret.toString('base64'),
    });
    const scratchDir = join(dir, 'databases', 'scratch');
    const scratch = () => {
      try {
        return readdirSync(scratchDir).filter((f) => f.includes('.verify-'));
      } catch {
        return [];
      }
    };
    const first = new WorkerProcess(await workerEnv());
    await first.waitFor('worker started');
    const night = '2026-11-30';
    const handle = await suite.client.workflow.start(nightlyBackup, { taskQueue, workflowId: backupWorkflowId('wide', night), args: [{ databaseId: 'wide', night }] });
    for (let i = 0; scratch().length === 0; i++) {
      assert.ok(i < 6000, 'the test restore started');
      await new Promise((r) => setTimeout(r, 5));
    }
    first.child.kill('SIGKILL');
    await once(first.child, 'exit');
    assert.ok(scratch().length > 0, 'the killed worker left its scratch database');

    const second = new WorkerProcess(await workerEnv());
    try {
      const result = await handle.result();
      assert.equal(result.phase, 'done');
      assert.deepEqual(scratch(), [], 'no scratch database left');
      const own = `wide-${night}-${(await handle.describe()).runId.replace(/-/g, '').slice(-12)}.kob`;
      assert.deepEqual(readdirSync(join(dir, 'backups', 'wide')), [own], 'nothing but the catalogued backup');
    } finally {
      second.child.kill('SIGTERM');
      await once(second.child, 'exit');
    }
  });
});
