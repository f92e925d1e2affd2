import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { backupKeyWdekId } from '../activities/engines/encrypted-sqlite-engine';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { backupScheduleId } from '../client/schedules/nightly-backup-schedule';
import { keyops } from './helpers/child-process';
import { localActivities } from './helpers/local-activities';
import { createTestWorker, testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

describe('keyops backup commands', () => {
  const suite = useSuiteFixture('backup-cli');

  it('runs, lists and restores backups, refuses what cannot be restored, and manages the nightly schedule', async () => {
    const kms = LocalKms.open({ path: join(suite.dir, 'kms.sqlite'), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'wdeks.sqlite'));
    const { activities, engine } = localActivities({ dataDir: suite.dir, kms, registry });
    const { keyId } = await kms.createKey({ name: 'cli-backups' });
    const databaseId = `shop-${randomBytes(3).toString('hex')}`;
    await engine.createDatabase(databaseId, keyId);
    await engine.withDatabase(databaseId, (db) => {
      db.exec('CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)');
      for (let i = 0; i < 42; i++) db.prepare('INSERT INTO items (name) VALUES (?)').run(`item ${i}`);
    });
    const taskQueue = uniqueTaskQueue('backup-cli');
    const worker = await createTestWorker(suite.env, { taskQueue, activities });
    const run = (...args: string[]) => keyops([...args, '--task-queue', taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });
    const backupId = `backup/${databaseId}/2026-12-01`;

    await worker.runUntil(async () => {
      const took = await run('backup', 'run', databaseId, '--night', '2026-12-01', '--wait', '--json');
      assert.equal(took.code, 0, took.stderr);
      const tookRun = JSON.parse(took.stdout) as { workflowId: string; phase: string };
      assert.equal(tookRun.phase, 'done');
      // The Web UI shows what the run is and how to follow it.
      const described = await suite.client.workflow.getHandle(tookRun.workflowId).describe();
      assert.equal(await described.staticSummary(), `Backup of database ${databaseId} for 2026-12-01`);
      assert.match((await described.staticDetails()) ?? '', new RegExp(`^Started by \`keyops backup run\`\\.[\\s\\S]*awaiting-rewrap[\\s\\S]*\`keyops backup list --database ${databaseId}\``));

      const listed = await run('backup', 'list', '--database', databaseId, '--json');
      assert.equal(listed.code, 0, listed.stderr);
      const entries = JSON.parse(listed.stdout) as { backupId: string; status: string; keyVersion: number; verification: { rows: number } }[];
      assert.deepEqual(
        entries.map((e) => ({ backupId: e.backupId, status: e.status, keyVersion: e.keyVersion, rows: e.verification.rows })),
        [{ backupId, status: 'good', keyVersion: 1, rows: 42 }],
      );
      const text = await run('backup', 'list', '--database', databaseId);
      assert.match(text.stdout, new RegExp(`${backupId}  good  .*verified 42 rows`));

      // After a rotation and rewrap the old backup still restores (the retired version unwraps).
      await kms.rotateKey(keyId, 'cli-rotation');
      await engine.reprotect(databaseId);
      const target = join(suite.dir, 'restored', `${databaseId}.db`);
      const restored = await run('backup', 'restore', backupId, '--to', target);
      assert.equal(restored.code, 0, restored.stderr);
      assert.match(restored.stdout, /: 42 rows in 1 table\(s\) \(root key .* version 1\)/);
      const again = await run('backup', 'restore', backupId, '--to', target);
      assert.equal(again.code, 1);
      assert.match(again.stderr, /exists; restore never overwrites a file/);

      const verified = await run('backup', 'verify', backupId);
      assert.equal(verified.code, 0, verified.stderr);
      assert.match(verified.stdout, /restores: 42 rows in 1 table\(s\), root key .* version 1/);
      const file = entries[0] as unknown as { path: string };
      const original = readFileSync(file.path);
      const tampered = Buffer.from(original);
      tampered.writeUInt8(tampered.readUInt8(tampered.length - 100) ^ 0xff, tampered.length - 100);
      writeFileSync(file.path, tampered);
      const broken = await run('backup', 'verify', backupId);
      assert.equal(broken.code, 1);
      assert.match(broken.stderr, /is not valid: chunk \d+ fails authentication/);
      writeFileSync(file.path, original);

      const unknown = await run('backup', 'restore', `backup/${databaseId}/1999-01-01`, '--to', join(suite.dir, 'x.db'));
      assert.equal(unknown.code, 2);
      assert.match(unknown.stderr, /no backup backup\/.*\/1999-01-01 in the catalog/);
      const relative = await run('backup', 'restore', backupId, '--to', 'relative.db');
      assert.equal(relative.code, 2);

      // The registry losing the backup key no longer matters: the backup file carries it.
      const { backupKeyHash } = await engine.keyState(databaseId);
      assert.equal(registry.remove(backupKeyWdekId(databaseId, backupKeyHash)), true);
      const lost = await run('backup', 'restore', backupId, '--to', join(suite.dir, 'lost.db'));
      assert.equal(lost.code, 0, lost.stderr);
      assert.match(lost.stdout, /42 rows in 1 table/);
      const neither = await run('backup', 'restore', 'payroll.kob', '--to', join(suite.dir, 'neither.db'));
      assert.equal(neither.code, 2);
      assert.match(neither.stderr, /"payroll\.kob" is neither a backup id \(backup\/DATABASE\/NIGHT, see keyops backup list\) nor the absolute path of a backup file/);

      const created = await run('backup', 'schedule', databaseId, '--at', '02:00', '--time-zone', 'Europe/Berlin', '--json');
      assert.equal(created.code, 0, created.stderr);
      assert.equal((JSON.parse(created.stdout) as { change: string }).change, 'created');
      assert.match((await run('backup', 'schedule', databaseId, '--at', '02:00', '--time-zone', 'Europe/Berlin')).stdout, /unchanged/);
      assert.match((await run('backup', 'schedule', databaseId, '--at', '3:30', '--time-zone', 'UTC')).stdout, /updated: nightlyBackup of .* at 3:30 UTC/);
      const schedule = await suite.client.schedule.getHandle(backupScheduleId(databaseId)).describe();
      assert.equal(schedule.spec.timezone, 'UTC');
      assert.deepEqual(schedule.spec.calendars?.[0]?.hour, [{ start: 3, end: 3, step: 1 }]);
      await suite.client.schedule.getHandle(backupScheduleId(databaseId)).delete();

      for (const [args, message] of [
        [['backup', 'schedule', databaseId, '--time-zone', 'Mars/Olympus'], /not an IANA time zone/],
        [['backup', 'schedule', databaseId, '--at', '25:00'], /not a time of day/],
        [['backup', 'run', 'Bad Id'], /database id "Bad Id" is malformed/],
        [['backup', 'run', databaseId, '--night', '2026-13-45'], /not a date/],
      ] as const) {
        const bad = await run(...args);
        assert.equal(bad.code, 2, `${args.join(' ')}: ${bad.stderr}`);
        assert.match(bad.stderr, message);
      }
      const missing = await run('backup', 'run', 'no-such-db', '--wait');
      assert.equal(missing.code, 2);
      assert.match(missing.stderr, /no database no-such-db/);
    });
  });
});
