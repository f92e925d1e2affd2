import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3-multiple-ciphers';
import { EncryptedSqliteEngine, backupKeyWdekId } from '../activities/engines/encrypted-sqlite-engine';
import { readBackupFile, readBackupHeader, writeBackupFile } from '../activities/engines/backup-file-format';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { rejectsWith } from './helpers/engine-errors';

const rowsOf = (engine: EncryptedSqliteEngine, databaseId: string) =>
  engine.withDatabase(databaseId, (db) => db.prepare('SELECT id, payload FROM orders ORDER BY id').all());

describe('encrypted SQLite engine (real SQLCipher files, real KMS files)', () => {
  let dir: string;
  let now = new Date('2026-01-01T00:00:00Z');
  let kms: LocalKms;
  let registry: SqliteWdekRegistry;
  let engine: EncryptedSqliteEngine;
  let keyId: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keyops-engine-'));
    kms = LocalKms.open({ path: join(dir, 'kms.sqlite'), masterSecret: randomBytes(32), now: () => now });
    registry = SqliteWdekRegistry.open(join(dir, 'wdeks.sqlite'));
    engine = EncryptedSqliteEngine.open({ dir: join(dir, 'databases'), kms, registry });
    keyId = (await kms.createKey({ name: 'engine-root' })).keyId;
  });
  after(async () => {
    engine.close();
    registry.close();
    kms.close();
    await rm(dir, { recursive: true, force: true });
  });

  const seed = async (databaseId: string, rows: number) => {
    await engine.createDatabase(databaseId, keyId);
    await engine.withDatabase(databaseId, (db) => {
      db.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)');
      const insert = db.prepare('INSERT INTO orders (payload) VALUES (?)');
      db.transaction(() => {
        for (let i = 0; i < rows; i++) insert.run(`secret order ${i} ${'x'.repeat(100)}`);
      })();
    });
  };
  const rotate = async () => {
    now = new Date(now.getTime() + 2 * 3600_000);
    await kms.rotateKey(keyId, `rotate-${now.toISOString()}`);
  };

  it('keeps the database and its backups encrypted; a backup verifies and restores to the same rows', async () => {
    await seed('shop', 2000);
    const file = readFileSync(engine.databasePath('shop'));
    assert.ok(!file.subarray(0, 16).toString('latin1').startsWith('SQLite format 3'), 'the database file has no plaintext header');
    assert.ok(!file.includes('secret order'), 'no row is readable in the database file');

    const path = join(dir, 'backups', 'shop-1.kob');
    const image = await engine.backup('shop', path);
    assert.equal(image.bytes, statSync(path).size);
    assert.deepEqual({ keyId: image.keyId, keyVersion: image.keyVersion }, { keyId, keyVersion: 1 });
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.ok(!readFileSync(path).includes('secret order'));
    assert.deepEqual(await readdir(join(dir, 'backups')), ['shop-1.kob'], 'no partial or scratch file is left');
    const header = await readBackupHeader(path);
    assert.equal(header.backupKeyHash, (await engine.keyState('shop')).backupKeyHash);

    assert.deepEqual(await engine.verifyBackup(image), { tables: 1, rows: 2000 });
    const restored = join(dir, 'restored-shop.db');
    assert.deepEqual(await engine.restore(image, restored), { tables: 1, rows: 2000 });
    // A retry of a restore whose worker died after publishing finds its own bytes: done.
    assert.deepEqual(await engine.restore(image, restored), { tables: 1, rows: 2000 });
    // A different backup never replaces what is there.
    await engine.withDatabase('shop', (db) => db.prepare('INSERT INTO orders (payload) VALUES (?)').run('one more'));
    const later = await engine.backup('shop', join(dir, 'backups', 'shop-later.kob'));
    await rejectsWith(engine.restore(later, restored), 'INVALID_CONFIGURATION', /restore target .*restored-shop\.db exists; restore never overwrites/);
    assert.deepEqual(await engine.restore(later, join(dir, 'restored-shop-later.db')), { tables: 1, rows: 2001 });
    assert.deepEqual((await readdir(dir)).filter((f) => f.includes('partial')), [], 'no partial restore is left');
    // A restore killed earlier (its process is gone) left a partial file: the next restore to the
    // same target removes it; a live process's partial stays.
    const dead = spawnSync(process.execPath, ['-e', '']).pid;
    writeFileSync(join(dir, `restored-again.db.partial-${dead}-0badc0de`), 'half a database');
    writeFileSync(join(dir, `restored-again.db.partial-${process.ppid}-0badc0de`), 'someone else, still running');
    assert.deepEqual(await engine.restore(later, join(dir, 'restored-again.db')), { tables: 1, rows: 2001 });
    assert.deepEqual((await readdir(dir)).filter((f) => f.includes('partial')), [`restored-again.db.partial-${process.ppid}-0badc0de`]);
    await rm(join(dir, `restored-again.db.partial-${process.ppid}-0badc0de`));
    await rm(later.path);
  });

  it('refuses a backup while the root key is between versions, and backs up once the WDEKs are rewrapped', async () => {
    await seed('ledger', 50);
    await rotate();
    const err = await rejectsWith(engine.backup('ledger', join(dir, 'backups', 'ledger-1.kob')), 'KEY_IN_TRANSITION', /at version \d+ but 2 of its WDEKs are still on version/);
    assert.equal(err.retryable, true);
    const state = await engine.reprotect('ledger');
    const current = (await kms.getKeyMetadata(keyId)).currentVersion;
    assert.deepEqual(state.wdekVersions, [current, current], 'DEK and backup key rewrapped, pages untouched');
    const image = await engine.backup('ledger', join(dir, 'backups', 'ledger-1.kob'));
    assert.equal(image.keyVersion, current);
  });

  it('restores a backup taken before two rotations to identical rows', async () => {
    await seed('archive', 300);
    const before = await rowsOf(engine, 'archive');
    await engine.reprotect('archive');
    const old = await engine.backup('archive', join(dir, 'backups', 'archive-old.kob'));
    for (let i = 0; i < 2; i++) {
      await rotate();
      await engine.reprotect('archive');
      for (const db of ['shop', 'ledger']) await engine.reprotect(db);
    }
    assert.ok((await kms.getKeyMetadata(keyId)).currentVersion >= old.keyVersion + 2);
    const target = join(dir, 'archive-restored.db');
    assert.deepEqual(await engine.restore(old, target), { tables: 1, rows: 300 });
    // The restored file opens with the DEK its backup recorded (under a now retired version).
    const header = await readBackupHeader(old.path);
    const { dek, keyVersion } = await kms.unwrap(header.keyId, Buffer.from(header.wdek, 'base64'));
    assert.equal(keyVersion, old.keyVersion);
    const db = new Database(target);
    try {
      db.pragma(`cipher='sqlcipher'`);
      db.pragma('legacy=4');
      db.pragma(`key="x'${dek.toString('hex')}'"`);
      assert.deepEqual(db.prepare('SELECT id, payload FROM orders ORDER BY id').all(), before);
    } finally {
      db.close();
    }
  });

  it('records the hash of the chunk tags for a new backup; one written before format 4 keeps its whole-file SHA-256 and still verifies and restores', async () => {
    await seed('ledger-f4', 300);
    const image = await engine.backup('ledger-f4', join(dir, 'backups', 'ledger-f4.kob'));
    assert.match(image.sha256, /^tags-sha256:[0-9a-f]{64}$/);
    assert.equal(readFileSync(image.path)[4], 4, 'format 4');
    // The same database backed up as keyops did before format 4.
    const before = EncryptedSqliteEngine.open({ dir: join(dir, 'databases'), kms, registry, backupFormat: 2 });
    try {
      const old = await before.backup('ledger-f4', join(dir, 'backups', 'ledger-f2.kob'));
      assert.equal(readFileSync(old.path)[4], 2, 'format 2');
      assert.equal(old.sha256, createHash('sha256').update(readFileSync(old.path)).digest('hex'), 'what sha256sum prints');
      for (const backup of [image, old]) {
        for (const check of ['authenticated', 'full'] as const) assert.deepEqual(await engine.verifyBackup({ ...backup, check }), { tables: 1, rows: 300 }, `${backup.path} at ${check}`);
        const verified = await engine.verifyBackupFile(backup);
        assert.equal(verified.sha256, backup.sha256, 'a catalog rebuilt from the file records the same value');
        const target = join(dir, 'restored', `${backup.sha256.slice(0, 20).replace(':', '-')}.db`);
        assert.deepEqual(await engine.restore(backup, target), { tables: 1, rows: 300 });
      }
      // Each value belongs to its own file.
      await rejectsWith(engine.verifyBackup({ path: old.path, sha256: image.sha256 }), 'BACKUP_INVALID', /ledger-f2\.kob is not valid: its integrity value differs .*\(its SHA-256\)/);
    } finally {
      before.close();
    }
  });

  it('the authenticated check proves the bytes, not the database: one already damaged when it was backed up passes it and fails the full check', async () => {
    await seed('damaged', 500);
    // An index dropped from the schema by hand, its pages left behind: every row still reads,
    // but SQLite's own check finds pages that no b-tree uses.
    await engine.withDatabase('damaged', (db) => {
      db.exec('CREATE INDEX orders_payload ON orders (payload)');
      db.unsafeMode(true);
      db.pragma('writable_schema = ON');
      db.prepare("DELETE FROM sqlite_schema WHERE name = 'orders_payload'").run();
      db.pragma('writable_schema = OFF');
    });
    const image = await engine.backup('damaged', join(dir, 'backups', 'damaged.kob'));
    assert.deepEqual(await engine.verifyBackup({ ...image, check: 'authenticated' }), { tables: 1, rows: 500 });
    await rejectsWith(engine.verifyBackup({ ...image, check: 'full' }), 'BACKUP_INVALID', /damaged\.kob fails SQLite's quick_check: .*\n?Page \d+: never used/);
    // The full check is the default.
    await rejectsWith(engine.verifyBackup(image), 'BACKUP_INVALID', /fails SQLite's quick_check/);
  });

  it('rejects a tampered, truncated or foreign backup file with BACKUP_INVALID naming it', async () => {
    const image = await engine.backup('shop', join(dir, 'backups', 'shop-2.kob'));
    const bytes = readFileSync(image.path);
    const flipped = Buffer.from(bytes);
    flipped[Math.floor(bytes.length / 2)]! ^= 0x01;
    const tamperedPath = join(dir, 'backups', 'shop-2-tampered.kob');
    writeFileSync(tamperedPath, flipped);
    await rejectsWith(engine.verifyBackup({ path: tamperedPath, sha256: image.sha256 }), 'BACKUP_INVALID', /shop-2-tampered\.kob is not valid: chunk \d+ fails authentication/);

    const truncatedPath = join(dir, 'backups', 'shop-2-truncated.kob');
    writeFileSync(truncatedPath, bytes.subarray(0, bytes.length - 1000));
    await rejectsWith(engine.verifyBackup({ path: truncatedPath, sha256: image.sha256 }), 'BACKUP_INVALID', /ends inside chunk/);

    await rejectsWith(engine.verifyBackup({ path: image.path, sha256: '0'.repeat(64) }), 'BACKUP_INVALID', /integrity value differs/);
    const notBackup = join(dir, 'backups', 'not-a-backup.kob');
    writeFileSync(notBackup, 'hello');
    await rejectsWith(engine.verifyBackup({ path: notBackup, sha256: image.sha256 }), 'BACKUP_INVALID', /not a keyops backup file/);
    assert.deepEqual((await readdir(join(dir, 'backups'))).filter((f) => f.includes('.verify-')), [], 'scratch files are removed');
  });

  it('restores a backup from its file and the KMS alone; a format 1 file names its missing backup key until the key export is imported', async () => {
    await seed('lost-key', 5);
    const image = await engine.backup('lost-key', join(dir, 'backups', 'lost-key.kob'));
    const { backupKeyHash } = await engine.keyState('lost-key');
    const header = await readBackupHeader(image.path);
    assert.equal(header.backupKey?.keyId, keyId, 'the file carries its backup key, wrapped under the root key');
    assert.equal(header.backupId, `backup/lost-key/${header.createdAt.slice(0, 10)}`);

    // A worker that lost everything but the KMS: no registry, no engine metadata, no key files.
    const bare = join(dir, 'bare');
    const bareRegistry = SqliteWdekRegistry.open(join(bare, 'wdeks.sqlite'));
    const bareEngine = EncryptedSqliteEngine.open({ dir: join(bare, 'databases'), kms, registry: bareRegistry });
    try {
      assert.deepEqual(await bareEngine.verifyBackup({ path: image.path }), { tables: 1, rows: 5 }, 'no recorded checksum needed: every chunk authenticates');
      assert.deepEqual(await bareEngine.restore({ path: image.path }, join(bare, 'restored.db')), { tables: 1, rows: 5 });

      // Format 1 (written before backups carried their backup key): the same bytes, re-encrypted
      // here with the backup key the registry holds, and a header without it.
      const record = registry.get(backupKeyWdekId('lost-key', backupKeyHash))!;
      const { dek: backupKey } = await kms.unwrap(keyId, record.wdek);
      const plain: Buffer[] = [];
      const { header: v2 } = await readBackupFile({ path: image.path, keyFor: () => Promise.resolve(Buffer.from(backupKey)), write: (data) => Promise.resolve(void plain.push(Buffer.from(data))) });
      const bytes = Buffer.concat(plain);
      const v1Path = join(dir, 'backups', 'lost-key-format1.kob');
      const { sha256 } = await writeBackupFile({
        path: v1Path,
        header: v2 as Parameters<typeof writeBackupFile>[0]['header'],
        plainBytes: bytes.length,
        read: (buffer, length, position) => Promise.resolve(bytes.copy(buffer, 0, position, position + length)),
        key: backupKey,
        format: 1,
      });
      assert.equal((await readBackupHeader(v1Path)).backupKey, undefined);
      await rejectsWith(bareEngine.verifyBackup({ path: v1Path, sha256 }), 'BACKUP_KEY_MISSING', new RegExp(`backup key ${backupKeyHash.slice(0, 12)}… of database lost-key is not in the key registry: import its key backup first \\(keyops backup key import FILE\\)`));
      assert.equal(bareEngine.hasBackupKey('lost-key', backupKeyHash), false);
      // What `keyops backup key import` does with the export of that key.
      await rejectsWith(bareEngine.importBackupKey('lost-key', backupKey), 'DATABASE_NOT_FOUND', /name the root key to wrap its backup key under \(--key\)/);
      const imported = await bareEngine.importBackupKey('lost-key', backupKey, keyId);
      assert.deepEqual({ hash: imported.hash, alreadyRegistered: imported.alreadyRegistered }, { hash: backupKeyHash, alreadyRegistered: false });
      assert.equal((await bareEngine.importBackupKey('lost-key', backupKey, keyId)).alreadyRegistered, true, 'importing twice changes nothing');
      backupKey.fill(0);
      assert.deepEqual(await bareEngine.verifyBackup({ path: v1Path, sha256 }), { tables: 1, rows: 5 });
      // The engine that holds the database finds the key in the database's key file even when
      // its registry lost the record.
      assert.equal(registry.remove(record.id), true);
      assert.deepEqual(await engine.verifyBackup({ path: v1Path, sha256 }), { tables: 1, rows: 5 });
      assert.ok(registry.get(record.id), 'and registers it again');
    } finally {
      bareEngine.close();
      bareRegistry.close();
    }

    await rejectsWith(engine.createDatabase('Bad Id!', keyId), 'INVALID_CONFIGURATION', /database id "Bad Id!" must be/);
    await rejectsWith(engine.createDatabase('shop', keyId), 'DATABASE_EXISTS');
    await rejectsWith(engine.backup('nope', join(dir, 'x.kob')), 'DATABASE_NOT_FOUND', /no database nope/);
  });

  it('regenerates the DEK: every page re-encrypted under a new key, rows identical, old backups still restore', async () => {
    await seed('rekeyed', 12_000);
    await engine.withDatabase('rekeyed', (db) => db.exec('CREATE INDEX orders_payload ON orders (payload); CREATE VIEW first_orders AS SELECT * FROM orders WHERE id < 10;'));
    const before = await rowsOf(engine, 'rekeyed');
    const oldWdek = registry.get('db/rekeyed/dek')!;
    const { dek: oldDek } = await kms.unwrap(keyId, oldWdek.wdek);
    const earlier = await engine.backup('rekeyed', join(dir, 'backups', 'rekeyed-before.kob'));

    const reports: number[] = [];
    const state = await engine.regenerate('rekeyed', (done, total) => reports.push(done / total));
    assert.equal(state.keyChangeInProgress, false);
    assert.ok(reports.length >= 2 && reports[reports.length - 1] === 1, `progress reported while copying and rekeying: ${reports.join(', ')}`);
    assert.ok(!registry.get('db/rekeyed/dek')!.wdek.equals(oldWdek.wdek), 'a new DEK is registered');
    assert.equal(registry.get('db/rekeyed/dek-next'), undefined);
    assert.deepEqual(await rowsOf(engine, 'rekeyed'), before);
    assert.deepEqual(await engine.withDatabase('rekeyed', (db) => db.prepare('SELECT count(*) AS n FROM first_orders').get()), { n: 9 }, 'views come along');
    const old = new Database(engine.databasePath('rekeyed'));
    try {
      old.pragma(`cipher='sqlcipher'`);
      old.pragma('legacy=4');
      old.pragma(`key="x'${oldDek.toString('hex')}'"`);
      assert.throws(() => old.prepare('SELECT count(*) FROM orders').get(), /file is not a database/, 'the old DEK no longer opens the file');
    } finally {
      old.close();
    }
    assert.deepEqual(await engine.verifyBackup(earlier), { tables: 1, rows: 12_000 }, 'a backup from before carries its own DEK');
    const after = await engine.backup('rekeyed', join(dir, 'backups', 'rekeyed-after.kob'));
    assert.deepEqual(await engine.verifyBackup(after), { tables: 1, rows: 12_000 });
  });
});
