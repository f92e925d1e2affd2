import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ApplicationFailure, WorkflowFailedError } from '@temporalio/client';
import { readBackupHeader } from '../activities/engines/backup-file-format';
import { readBackupKeyExport, writeBackupKeyExport } from '../activities/engines/backup-key-export';
import { EngineError } from '../activities/engines/engine-error';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { rotateBackupKey } from '../workflows';
import { localActivities } from './helpers/local-activities';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

const PASSPHRASE = 'correct horse battery staple';

describe('rotateBackupKey (SAP HANA style) on a real worker and encrypted files', () => {
  const suite = useSuiteFixture('rotate-backup-key');

  it('creates, exports, verifies the export, then activates; later backups use the new key and earlier ones still restore', async () => {
    const kms = LocalKms.open({ path: join(suite.dir, 'kms.sqlite'), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'wdeks.sqlite'));
    let passphrase: string | undefined;
    const { activities, engine } = localActivities({ dataDir: suite.dir, kms, registry, backupKeyPassphrase: () => passphrase });
    const { keyId } = await kms.createKey({ name: 'backup-keys' });
    await engine.createDatabase('vault', keyId);
    await engine.withDatabase('vault', (db) => db.exec('CREATE TABLE t (v); INSERT INTO t VALUES (1), (2), (3);'));
    const oldHash = (await engine.keyState('vault')).backupKeyHash;
    const earlier = await engine.backup('vault', join(suite.dir, 'backups', 'earlier.kob'));

    const taskQueue = uniqueTaskQueue('rotate-backup-key');
    const worker = await createTestWorker(suite.env, { taskQueue, activities });
    await worker.runUntil(async () => {
      // Without a passphrase nothing is activated: backups stay on the old, working key.
      const err = await suite.client.workflow
        .execute(rotateBackupKey, { taskQueue, workflowId: `backup-key/vault/${taskQueue}/1`, args: [{ databaseId: 'vault' }] })
        .then(() => undefined, (e: unknown) => e);
      assert.ok(err instanceof WorkflowFailedError && err.cause?.cause instanceof ApplicationFailure, String(err));
      assert.equal(err.cause.cause.type, 'INVALID_CONFIGURATION');
      assert.match(err.cause.cause.message, /set KEYOPS_BACKUP_KEY_PASSPHRASE/);
      assert.equal((await engine.keyState('vault')).backupKeyHash, oldHash);

      passphrase = PASSPHRASE;
      const result = await suite.client.workflow.execute(rotateBackupKey, { taskQueue, workflowId: `backup-key/vault/${taskQueue}/2`, args: [{ databaseId: 'vault' }] });
      assert.notEqual(result.hash, oldHash);
      assert.equal((await engine.keyState('vault')).backupKeyHash, result.hash, 'the new key is active');
      assert.equal(statSync(result.exportPath).mode & 0o777, 0o600);
      const exported = await readBackupKeyExport(result.exportPath, PASSPHRASE);
      assert.deepEqual({ databaseId: exported.databaseId, hash: exported.hash }, { databaseId: 'vault', hash: result.hash });
      await assert.rejects(readBackupKeyExport(result.exportPath, 'wrong passphrase!'), (e: unknown) => e instanceof EngineError && e.code === 'PERMISSION_DENIED');
      await assert.rejects(writeBackupKeyExport(result.exportPath, 'vault', exported.material, PASSPHRASE), /never overwrites a key backup/);

      const later = await engine.backup('vault', join(suite.dir, 'backups', 'later.kob'));
      assert.equal((await readBackupHeader(later.path)).backupKeyHash, result.hash);
      assert.equal(later.backupKeyHash, result.hash);
      assert.deepEqual(await engine.verifyBackup(later), { tables: 1, rows: 3 });
      assert.equal(earlier.backupKeyHash, oldHash);
      assert.deepEqual(await engine.verifyBackup(earlier), { tables: 1, rows: 3 }, 'the earlier backup still restores with the retired key');
    });
  });
});
