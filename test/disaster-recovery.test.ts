import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { cpSync, existsSync, readdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import Database from 'better-sqlite3-multiple-ciphers';
import { readBackupHeader } from '../activities/engines/backup-file-format';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { nightlyBackup, rotateBackupKey, rotateRootKey } from '../workflows';
import { keyEntityWorkflowId } from '../workflows/root-key-messages';
import { keyops } from './helpers/child-process';
import { recordHistory } from './helpers/record-history';
import { localActivities } from './helpers/local-activities';
import { createTestWorker, testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

const PASSPHRASE = 'drill passphrase, long enough';

type Rows = unknown[];

/** Reads a restored database with the DEK its backup recorded (unwrapped by the KMS alone). */
async function rowsOfRestored(kms: LocalKms, backupPath: string, restored: string): Promise<Rows> {
  const header = await readBackupHeader(backupPath);
  const { dek } = await kms.unwrap(header.keyId, Buffer.from(header.wdek, 'base64'));
  const db = new Database(restored, { readonly: true, fileMustExist: true });
  try {
    db.pragma(`cipher='sqlcipher'`);
    db.pragma('legacy=4');
    db.pragma(`key="x'${dek.toString('hex')}'"`);
    return db.prepare('SELECT id, customer, amount FROM orders ORDER BY id').all();
  } finally {
    db.close();
    dek.fill(0);
  }
}

describe('disaster-recovery drill: every backup and the live database survive losing the registry and the catalog', () => {
  const suite = useSuiteFixture('disaster-recovery');

  it('takes backups across 3 root-key rotations and a backup-key rotation, deletes registry and catalog, and restores every backup from its file alone', async (t) => {
    const started = Date.now();
    const dataDir = join(suite.dir, 'data');
    const masterSecret = randomBytes(32);
    // The KMS allows one rotation per key per hour: its clock moves 2 h before each rotation.
    let now = new Date('2026-11-01T00:00:00Z');
    const kmsPath = join(dataDir, 'kms', 'keys.sqlite');
    const openSite = (dir: string) => {
      const kms = LocalKms.open({ path: join(dir, 'kms', 'keys.sqlite'), masterSecret, now: () => now });
      const registry = SqliteWdekRegistry.open(join(dir, 'registry', 'wdeks.sqlite'));
      const local = localActivities({ dataDir: dir, kms, registry, backupKeyPassphrase: () => PASSPHRASE });
      const close = () => {
        local.unitSets.close();
        local.catalog.close();
        local.engine.close();
        registry.close();
        kms.close();
      };
      return { kms, registry, ...local, close };
    };
    const databaseId = `drill-${randomBytes(3).toString('hex')}`;
    const taskQueue = uniqueTaskQueue('disaster-recovery');
    const run = (...args: string[]) => keyops([...args, '--task-queue', taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });

    // 1. A working site: backups across rotations, each night with different rows.
    let site = openSite(dataDir);
    const { keyId } = await site.kms.createKey({ name: 'drill' });
    await site.engine.createDatabase(databaseId, keyId);
    let nextRow = 0;
    const addRows = (n: number) =>
      site.engine.withDatabase(databaseId, (db) => {
        db.exec('CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, amount INTEGER NOT NULL)');
        const insert = db.prepare('INSERT INTO orders (customer, amount) VALUES (?, ?)');
        db.transaction(() => {
          for (let i = 0; i < n; i++, nextRow++) insert.run(`customer ${nextRow % 13}`, nextRow * 7);
        })();
        db.prepare('UPDATE orders SET amount = amount + 1 WHERE id % 5 = 0').run();
      });
    const liveRows = () => site.engine.withDatabase(databaseId, (db) => db.prepare('SELECT id, customer, amount FROM orders ORDER BY id').all());
    const expected = new Map<string, { rows: Rows; keyVersion: number; backupKeyHash: string }>();
    let worker = await createTestWorker(suite.env, { taskQueue, activities: site.activities });
    let rotations = 0;
    let exportPath = '';
    await worker.runUntil(async () => {
      let night = 0;
      const backup = async () => {
        night++;
        const nightId = `2026-11-0${night}`;
        const result = await suite.client.workflow.execute(nightlyBackup, { taskQueue, workflowId: `backup/${databaseId}/${nightId}`, args: [{ databaseId, night: nightId }] });
        assert.equal(result.phase, 'done');
        const header = await readBackupHeader(result.path!);
        expected.set(result.path!, { rows: await liveRows(), keyVersion: header.keyVersion, backupKeyHash: header.backupKeyHash });
      };
      const rotate = async () => {
        now = new Date(now.getTime() + 2 * 3600_000);
        const targetVersion = (await site.kms.getKeyMetadata(keyId)).currentVersion + 1;
        const result = await suite.client.workflow.execute(rotateRootKey, { taskQueue, workflowId: `rewrap/${keyId}/v${targetVersion}`, args: [{ keyId, targetVersion, rotate: true }] });
        assert.equal(result.phase, 'done');
        rotations++;
      };
      await addRows(300);
      await backup();
      await addRows(50);
      await rotate();
      await backup();
      await addRows(50);
      exportPath = (await suite.client.workflow.execute(rotateBackupKey, { taskQueue, workflowId: `backup-key/${databaseId}/${taskQueue}`, args: [{ databaseId }] })).exportPath;
      await backup();
      await addRows(50);
      await rotate();
      await backup();
      await addRows(50);
      await rotate();
      await backup();
      await addRows(7);
      // A last rotation with no backup after it: nothing but the rewrap itself brings the
      // database's key file to version 5 before the registry is lost.
      await rotate();
      await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('drill: first site stops');
    });
    const finalRows = await liveRows();
    site.close();
    const backups = [...expected.keys()];
    assert.equal(backups.length, 5);
    assert.deepEqual(
      [...expected.values()].map((e) => e.keyVersion),
      [1, 2, 2, 3, 4],
      'backups under root-key versions 1 to 4',
    );
    assert.equal(new Set([...expected.values()].map((e) => e.backupKeyHash)).size, 2, 'and under two backup keys');

    // 2. The disaster: the worker's registry and catalog are gone. The KMS and the files remain.
    for (const store of ['registry/wdeks.sqlite', 'catalog/backups.sqlite']) {
      for (const suffix of ['', '-wal', '-shm']) await rm(join(dataDir, `${store}${suffix}`), { force: true });
    }
    assert.deepEqual(readdirSync(join(dataDir, 'registry')), []);
    // A second, bare data directory: only a copy of the KMS store (and its master secret).
    const bareDir = join(suite.dir, 'bare');
    cpSync(join(dataDir, 'kms'), join(bareDir, 'kms'), { recursive: true });

    site = openSite(dataDir);
    const bare = openSite(bareDir);
    const bareQueue = uniqueTaskQueue('disaster-recovery-bare');
    const restoreStarted = Date.now();
    worker = await createTestWorker(suite.env, { taskQueue, activities: site.activities });
    const bareWorker = await createTestWorker(suite.env, { taskQueue: bareQueue, activities: bare.activities });
    try {
      await worker.runUntil(
        bareWorker.runUntil(async () => {
          assert.deepEqual(site.engine.recovered.databases, [], 'the engine metadata survived; only WDEKs were missing');
          assert.equal(site.engine.recovered.wdeks, 3, 'the DEK and both backup keys registered again from the key file');
          assert.deepEqual(await liveRows(), finalRows, 'the live database still opens, rows identical');
          assert.deepEqual((await site.engine.keyState(databaseId)).wdekVersions, [5, 5, 5], 'rebuilt at the version the last rewrap reached: no backup waits');

          // Every backup restores from its file, on the recovered site and on the bare directory.
          const bareRun = (...args: string[]) => keyops([...args, '--task-queue', bareQueue], { TEMPORAL_ADDRESS: testServerAddress() });
          for (const [index, path] of backups.entries()) {
            for (const [where, runOn, kms] of [
              ['site', run, site.kms],
              ['bare', bareRun, bare.kms],
            ] as const) {
              const target = join(suite.dir, 'restored', where, `${index}.db`);
              const restored = await runOn('backup', 'restore', path, '--to', target, '--json');
              assert.equal(restored.code, 0, `${where} ${path}: ${restored.stderr}`);
              assert.deepEqual(await rowsOfRestored(kms, path, target), expected.get(path)!.rows, `${where}: backup ${index} restores to identical rows`);
              if (process.env.KEYOPS_RECORD_HISTORIES && where === 'bare') await recordHistory((JSON.parse(restored.stdout) as { workflowId: string }).workflowId, 'restore-backup-file-checked-input.json');
            }
          }

          // The catalog is rebuilt from the files' headers; every entry verified by a test restore.
          const imported = await run('backup', 'import', join(dataDir, 'backups'), '--json');
          assert.equal(imported.code, 0, imported.stderr);
          const report = JSON.parse(imported.stdout) as { imported: { backupId: string; path: string; keyVersion: number; rows: number }[]; known: string[]; refused: unknown[] };
          assert.deepEqual(report.refused, []);
          assert.deepEqual(
            report.imported.map((b) => ({ path: b.path, keyVersion: b.keyVersion, rows: b.rows })).sort((a, b) => a.path.localeCompare(b.path)),
            backups.map((path) => ({ path, keyVersion: expected.get(path)!.keyVersion, rows: expected.get(path)!.rows.length })).sort((a, b) => a.path.localeCompare(b.path)),
          );
          const { workflowId: importId } = JSON.parse(imported.stdout) as { workflowId: string };
          const again = JSON.parse((await run('backup', 'import', join(dataDir, 'backups'), '--json')).stdout) as { imported: unknown[]; known: string[] };
          assert.deepEqual({ imported: again.imported.length, known: again.known.length }, { imported: 0, known: 5 }, 'a second import changes nothing');
          const listed = JSON.parse((await run('backup', 'list', '--database', databaseId, '--json')).stdout) as { backupId: string; night: string; status: string }[];
          assert.deepEqual(
            listed.map((e) => `${e.backupId} ${e.status}`).sort(),
            ['01', '02', '03', '04', '05'].map((d) => `backup/${databaseId}/2026-11-${d} good`),
          );
          const byId = await run('backup', 'restore', `backup/${databaseId}/2026-11-01`, '--to', join(suite.dir, 'restored', 'by-id.db'));
          assert.equal(byId.code, 0, byId.stderr);

          // The key export of the backup-key rotation imports on the bare site (its engine does
          // not hold the database: the root key is named).
          const noKey = await bareRun('backup', 'key', 'import', exportPath);
          assert.equal(noKey.code, 2, noKey.stderr);
          assert.match(noKey.stderr, /no database .* in this engine: name the root key to wrap its backup key under \(--key\)/);
          const keyImport = await bareRun('backup', 'key', 'import', exportPath, '--key', keyId, '--json');
          assert.equal(keyImport.code, 0, keyImport.stderr);
          const key = JSON.parse(keyImport.stdout) as { databaseId: string; hash: string; keyId: string; alreadyRegistered: boolean };
          assert.deepEqual(
            { databaseId: key.databaseId, hash: key.hash, keyId: key.keyId, alreadyRegistered: key.alreadyRegistered },
            { databaseId, hash: [...expected.values()][4]!.backupKeyHash, keyId, alreadyRegistered: false },
          );
          if (process.env.KEYOPS_RECORD_HISTORIES) {
            await recordHistory(importId, 'import-backups-checked-input.json');
            await recordHistory((JSON.parse(keyImport.stdout) as { workflowId: string }).workflowId, 'import-backup-key-checked-input.json');
          }
          const onSite = JSON.parse((await run('backup', 'key', 'import', exportPath, '--json')).stdout) as { alreadyRegistered: boolean };
          assert.equal(onSite.alreadyRegistered, true, 'the recovered site has it from the key file');

          // The next nightly backup runs on the recovered site.
          const next = await suite.client.workflow.execute(nightlyBackup, { taskQueue, workflowId: `backup/${databaseId}/2026-11-06`, args: [{ databaseId, night: '2026-11-06' }] });
          assert.equal(next.phase, 'done');
          const target = join(suite.dir, 'restored', 'next.db');
          assert.equal((await run('backup', 'restore', next.path!, '--to', target)).code, 0);
          assert.deepEqual(await rowsOfRestored(site.kms, next.path!, target), finalRows);
          const entity = suite.client.workflow.getHandle(keyEntityWorkflowId(keyId));
          await entity.terminate('drill finished').catch(() => undefined);
        }),
      );
    } finally {
      site.close();
      bare.close();
    }
    assert.ok(existsSync(kmsPath));
    t.diagnostic(
      `drill: ${backups.length} backups restored on 2 sites (recovered and bare), ${rotations} root-key rotations (${rotations - 1} between backups) and 1 backup-key rotation; ` +
        `whole drill ${((Date.now() - started) / 1000).toFixed(1)} s, recovery part ${((Date.now() - restoreStarted) / 1000).toFixed(1)} s`,
    );
  });
});
