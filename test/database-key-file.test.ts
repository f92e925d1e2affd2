import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3-multiple-ciphers';
import { SqliteBackupCatalog } from '../activities/catalog/sqlite-backup-catalog';
import { RotationLedger } from '../activities/crypto-units/rotation-ledger';
import { readBackupHeader } from '../activities/engines/backup-file-format';
import { readKeyFile } from '../activities/engines/database-key-file';
import { EngineError } from '../activities/engines/engine-error';
import { EncryptedSqliteEngine, dekWdekId } from '../activities/engines/encrypted-sqlite-engine';
import type { KeyManagementService } from '../activities/kms/key-management-service';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import type { WdekRegistry, WdekUpdate } from '../activities/wdek-registry/wdek-registry';

const rowsOf = (engine: EncryptedSqliteEngine, databaseId: string) => engine.withDatabase(databaseId, (db) => db.prepare('SELECT id, payload FROM orders ORDER BY id').all());

/** SQLite files and their WAL and shared-memory companions. */
async function removeSqlite(path: string): Promise<void> {
  for (const suffix of ['', '-wal', '-shm']) await rm(`${path}${suffix}`, { force: true });
}

describe('database key files: a database survives losing the registry and the engine metadata', () => {
  let dir: string;
  let now = new Date('2026-01-01T00:00:00Z');
  let kms: LocalKms;
  let keyId: string;
  const masterSecret = randomBytes(32);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keyops-key-file-'));
    kms = LocalKms.open({ path: join(dir, 'kms.sqlite'), masterSecret, now: () => now });
    keyId = (await kms.createKey({ name: 'key-file-root' })).keyId;
  });
  after(async () => {
    kms.close();
    await rm(dir, { recursive: true, force: true });
  });

  const rotate = async () => {
    now = new Date(now.getTime() + 2 * 3600_000);
    await kms.rotateKey(keyId, `rotate-${now.toISOString()}`);
  };
  const open = (name: string, registryPath = join(dir, name, 'wdeks.sqlite'), withKms: KeyManagementService = kms) => {
    const registry = SqliteWdekRegistry.open(registryPath);
    const engine = EncryptedSqliteEngine.open({ dir: join(dir, name, 'databases'), kms: withKms, registry });
    return { registry, engine, close: () => (engine.close(), registry.close()) };
  };
  const seed = async (engine: EncryptedSqliteEngine, databaseId: string, rows: number) => {
    await engine.createDatabase(databaseId, keyId);
    await engine.withDatabase(databaseId, (db) => {
      db.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)');
      const insert = db.prepare('INSERT INTO orders (payload) VALUES (?)');
      db.transaction(() => {
        for (let i = 0; i < rows; i++) insert.run(`order ${i}`);
      })();
    });
  };

  it('opens the database from its file, its key file and the KMS after the registry and engine metadata are deleted; backups go on', async () => {
    let site = open('lost');
    await seed(site.engine, 'payroll', 400);
    const before = await rowsOf(site.engine, 'payroll');
    const first = await site.engine.backup('payroll', join(dir, 'lost', 'backups', 'first.kob'));
    // Three rotations with rewraps and a backup-key rotation: the key file must follow each.
    for (let i = 0; i < 3; i++) {
      await rotate();
      await site.engine.reprotect('payroll');
    }
    const pending = await site.engine.createPendingBackupKey('payroll');
    await site.engine.activateBackupKey('payroll', pending);
    const state = await site.engine.keyState('payroll');
    const keyFilePath = site.engine.keyFilePath('payroll');
    assert.equal(statSync(keyFilePath).mode & 0o777, 0o600);
    const keyFile = readKeyFile(keyFilePath)!;
    assert.deepEqual(
      keyFile.wdeks.map((w) => w.keyVersion),
      state.wdekVersions,
      'the key file holds every WDEK at the version the registry holds',
    );
    assert.ok(!readFileSync(keyFilePath, 'utf8').includes('order '), 'no data in the key file');
    site.close();

    await removeSqlite(join(dir, 'lost', 'wdeks.sqlite'));
    await removeSqlite(join(dir, 'lost', 'databases', 'engine.sqlite'));
    site = open('lost');
    try {
      assert.deepEqual(site.engine.recovered, { databases: ['payroll'], wdeks: 3, problems: [] }, 'the database adopted from its key file; DEK and two backup keys registered again');
      assert.deepEqual(await rowsOf(site.engine, 'payroll'), before);
      const again = await site.engine.keyState('payroll');
      assert.deepEqual(again, state, 'same root key, versions and active backup key');
      const after = await site.engine.backup('payroll', join(dir, 'lost', 'backups', 'after.kob'));
      assert.equal(after.backupKeyHash, pending);
      assert.deepEqual(await site.engine.verifyBackup(after), { tables: 1, rows: 400 });
      assert.deepEqual(await site.engine.verifyBackup(first), { tables: 1, rows: 400 }, 'a backup from before the loss and 3 rotations');
    } finally {
      site.close();
    }
  });

  it('restores a backup taken 10 rotations ago from its file, on a bare data directory with only the KMS', async () => {
    const site = open('ten');
    const bare = open('ten-bare');
    try {
      await seed(site.engine, 'ledger', 120);
      const rows = await rowsOf(site.engine, 'ledger');
      const old = await site.engine.backup('ledger', join(dir, 'ten', 'backups', 'old.kob'));
      for (let i = 0; i < 10; i++) {
        await rotate();
        await site.engine.reprotect('ledger');
      }
      assert.ok((await kms.getKeyMetadata(keyId)).currentVersion >= old.keyVersion + 10);
      const target = join(dir, 'ten-bare', 'restored.db');
      assert.deepEqual(await bare.engine.restore({ path: old.path }, target), { tables: 1, rows: 120 });
      const header = await bare.engine.describeBackup(old.path);
      assert.equal(header.keyVersion, old.keyVersion);
      const { dek } = await kms.unwrap(keyId, Buffer.from((await readBackupHeader(old.path)).wdek, 'base64'));
      const db = new Database(target);
      try {
        db.pragma(`cipher='sqlcipher'`);
        db.pragma('legacy=4');
        db.pragma(`key="x'${dek.toString('hex')}'"`);
        assert.deepEqual(db.prepare('SELECT id, payload FROM orders ORDER BY id').all(), rows);
      } finally {
        db.close();
        dek.fill(0);
      }
    } finally {
      site.close();
      bare.close();
    }
  });

  it('two concurrent creations of one database never replace the WDEK that encrypts its data', async () => {
    // Engine B's KMS answers its wraps only once engine A has created the database and written
    // rows into it: B passed its "does it exist?" check long before.
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const slow = new Proxy(kms, {
      get(target, property) {
        if (property === 'wrap') return async (...args: Parameters<LocalKms['wrap']>) => (await gate, target.wrap(...args));
        const value = Reflect.get(target, property) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    const registryPath = join(dir, 'twin', 'wdeks.sqlite');
    const a = open('twin', registryPath);
    const b = open('twin', registryPath, slow);
    try {
      const second = b.engine.createDatabase('twin', keyId).then(
        () => undefined,
        (err: unknown) => err,
      );
      await seed(a.engine, 'twin', 50);
      const rows = await rowsOf(a.engine, 'twin');
      const registered = a.registry.get(dekWdekId('twin'))!;
      release();
      const err = await second;
      assert.ok(err instanceof EngineError && err.code === 'DATABASE_EXISTS', `the second creation fails DATABASE_EXISTS: ${String(err)}`);
      assert.ok(a.registry.get(dekWdekId('twin'))!.wdek.equals(registered.wdek), 'the WDEK that encrypts the data is still registered');
      assert.ok(readKeyFile(a.engine.keyFilePath('twin'))!.wdeks.some((w) => w.id === dekWdekId('twin') && Buffer.from(w.wdek, 'base64').equals(registered.wdek)));
      assert.deepEqual(await rowsOf(a.engine, 'twin'), rows);
      assert.deepEqual(await rowsOf(b.engine, 'twin'), rows, 'the loser opens the winner\'s database');
    } finally {
      release();
      a.close();
      b.close();
    }
  });

  it('regenerate stops when its compare-and-set misses: dek-next is kept and the database still opens; a retry finishes', async () => {
    const registryPath = join(dir, 'cas', 'wdeks.sqlite');
    const plain = SqliteWdekRegistry.open(registryPath);
    // Another process rewraps the DEK record just before the regeneration swaps it.
    let race: WdekUpdate | undefined;
    const racing: WdekRegistry = new Proxy(plain, {
      get(target, property) {
        if (property === 'update') {
          return (updates: readonly WdekUpdate[]) => {
            if (race && updates.some((u) => u.id === race!.id)) {
              assert.equal(target.update([race]), 1);
              race = undefined;
            }
            return target.update(updates);
          };
        }
        const value = Reflect.get(target, property) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    const engine = EncryptedSqliteEngine.open({ dir: join(dir, 'cas', 'databases'), kms, registry: racing });
    try {
      await seed(engine, 'cas', 3000);
      const rows = await rowsOf(engine, 'cas');
      const current = plain.get(dekWdekId('cas'))!;
      const moved = await kms.rewrap(keyId, current.wdek);
      race = { id: current.id, wdek: moved.wdek, keyVersion: moved.keyVersion, expectedVersion: current.keyVersion, expectedWdek: current.wdek };

      await assert.rejects(engine.regenerate('cas'), (err: unknown) => err instanceof EngineError && err.code === 'KEY_IN_TRANSITION' && /changed while its regeneration swapped it/.test(err.message));
      assert.equal(race, undefined, 'the race happened');
      assert.ok(plain.get('db/cas/dek-next'), 'dek-next is kept');
      assert.ok(readKeyFile(engine.keyFilePath('cas'))!.wdeks.some((w) => w.id === 'db/cas/dek-next'), 'and stays in the key file');
      assert.equal((await engine.keyState('cas')).keyChangeInProgress, true, 'backups keep waiting: the change is not finished');
      assert.deepEqual(await rowsOf(engine, 'cas'), rows, 'the database opens (with dek-next)');

      // The retry (the activity's next attempt) finds the file under dek-next and swaps again.
      const state = await engine.regenerate('cas');
      assert.equal(state.keyChangeInProgress, false);
      assert.equal(plain.get('db/cas/dek-next'), undefined);
      assert.ok(!readKeyFile(engine.keyFilePath('cas'))!.wdeks.some((w) => w.id === 'db/cas/dek-next'));
      assert.deepEqual(await rowsOf(engine, 'cas'), rows);
      const image = await engine.backup('cas', join(dir, 'cas', 'after.kob'));
      assert.deepEqual(await engine.verifyBackup(image), { tables: 1, rows: 3000 });
    } finally {
      engine.close();
      plain.close();
    }
  });

  it('a registry restored from an older copy never takes the key file\'s DEK: the one that opens the data wins, the other is kept as superseded', async () => {
    let site = open('stale');
    const registryPath = join(dir, 'stale', 'wdeks.sqlite');
    await seed(site.engine, 'hr', 500);
    site.close();
    const { copyFileSync } = await import('node:fs');
    copyFileSync(registryPath, `${registryPath}.old`);
    site = open('stale');
    await site.engine.regenerate('hr');
    const rows = await rowsOf(site.engine, 'hr');
    const current = site.registry.get(dekWdekId('hr'))!;
    site.close();
    await removeSqlite(registryPath);
    copyFileSync(`${registryPath}.old`, registryPath);
    site = open('stale');
    try {
      assert.ok(!site.registry.get(dekWdekId('hr'))!.wdek.equals(current.wdek), 'the registry holds the DEK from before the regeneration');
      assert.deepEqual(await rowsOf(site.engine, 'hr'), rows, 'the database opens with the DEK that encrypts it');
      await site.engine.keyState('hr');
      assert.ok(site.registry.get(dekWdekId('hr'))!.wdek.equals(current.wdek), 'the registry is corrected from the key file');
      const file = readKeyFile(site.engine.keyFilePath('hr'))!;
      assert.ok(file.wdeks.some((w) => w.id === dekWdekId('hr') && Buffer.from(w.wdek, 'base64').equals(current.wdek)));
      assert.equal(file.superseded.length, 1, 'the stale DEK is kept, not lost');
      const image = await site.engine.backup('hr', join(dir, 'stale', 'after.kob'));
      assert.deepEqual(await site.engine.verifyBackup(image), { tables: 1, rows: 500 });
    } finally {
      site.close();
    }
  });

  it('a data directory restored from an older copy beside a newer registry opens with its own DEK, and the registry follows it', async () => {
    const site = open('snapshot');
    const databases = join(dir, 'snapshot', 'databases');
    const { cpSync } = await import('node:fs');
    try {
      await seed(site.engine, 'crm', 300);
      const before = await rowsOf(site.engine, 'crm');
      const original = site.registry.get(dekWdekId('crm'))!;
      site.engine.close();
      cpSync(databases, `${databases}.snapshot`, { recursive: true });
      const engine = EncryptedSqliteEngine.open({ dir: databases, kms, registry: site.registry });
      await engine.withDatabase('crm', (db) => db.prepare('INSERT INTO orders (payload) VALUES (?)').run('after the snapshot'));
      await engine.regenerate('crm');
      engine.close();
      await rm(databases, { recursive: true });
      cpSync(`${databases}.snapshot`, databases, { recursive: true });
      const restored = EncryptedSqliteEngine.open({ dir: databases, kms, registry: site.registry });
      try {
        assert.ok(!site.registry.get(dekWdekId('crm'))!.wdek.equals(original.wdek), 'the registry holds the regenerated DEK');
        assert.deepEqual(await rowsOf(restored, 'crm'), before, 'the snapshot opens with the DEK beside it');
        await restored.keyState('crm');
        assert.ok(site.registry.get(dekWdekId('crm'))!.wdek.equals(original.wdek), 'the registry follows the data it protects');
        assert.equal(readKeyFile(restored.keyFilePath('crm'))!.superseded.length, 1, 'the regenerated DEK is kept as superseded');
      } finally {
        restored.close();
      }
    } finally {
      site.registry.close();
    }
  });

  it('a regeneration refused for good (a database in WAL mode) ends the key change: backups do not wait for nothing', async () => {
    const site = open('refused');
    try {
      await seed(site.engine, 'wal', 200);
      await site.engine.withDatabase('wal', (db) => db.pragma('journal_mode = WAL'));
      const rows = await rowsOf(site.engine, 'wal');
      await assert.rejects(site.engine.regenerate('wal'), (err: unknown) => err instanceof EngineError && err.code === 'INVALID_CONFIGURATION' && !err.retryable && /keeps its old file and DEK/.test(err.message));
      assert.equal((await site.engine.keyState('wal')).keyChangeInProgress, false, 'no key change left behind');
      assert.equal(site.registry.get('db/wal/dek-next'), undefined);
      assert.ok(!readKeyFile(site.engine.keyFilePath('wal'))!.wdeks.some((w) => w.id === 'db/wal/dek-next'));
      assert.deepEqual(await rowsOf(site.engine, 'wal'), rows, 'the database opens with its old DEK');
    } finally {
      site.close();
    }
  });

  it('every local store commits durably (synchronous = FULL): a rename fsynced after a commit never outlives it', () => {
    const site = open('durable');
    const catalog = SqliteBackupCatalog.open(join(dir, 'durable', 'catalog.sqlite'));
    const ledger = RotationLedger.open(join(dir, 'durable', 'ledger.sqlite'));
    try {
      // The connections are private; their setting is per connection, so read it from each.
      const synchronous = (store: object) => (store as { db?: Database.Database; meta?: Database.Database }).db ?? (store as { meta: Database.Database }).meta;
      for (const [name, store] of Object.entries({ registry: site.registry, engine: site.engine, catalog, ledger, kms })) {
        const db = synchronous(store);
        assert.ok(db, `${name} exposes no connection to check`);
        assert.equal(db.pragma('synchronous', { simple: true }), 2, `${name} commits with synchronous = FULL`);
      }
    } finally {
      catalog.close();
      ledger.close();
      site.close();
    }
  });

  it('a database created before key files existed gets one when the engine opens', async () => {
    let site = open('legacy');
    await seed(site.engine, 'old', 10);
    const path = site.engine.keyFilePath('old');
    site.close();
    await rm(path);
    // An operator's stray copy of a key file is named, and stops nothing.
    const { writeFileSync } = await import('node:fs');
    writeFileSync(join(dir, 'legacy', 'databases', 'old-copy.keys.json'), readFileSync(join(dir, 'lost', 'databases', 'payroll.keys.json')));
    site = open('legacy');
    try {
      assert.equal(site.engine.recovered.problems.length, 1);
      assert.match(site.engine.recovered.problems[0]!, /old-copy\.keys\.json names database payroll; it belongs beside payroll\.db/);
      assert.ok(existsSync(path));
      assert.deepEqual(
        readKeyFile(path)!.wdeks.map((w) => w.id).sort(),
        [dekWdekId('old'), `db/old/backup-key/${(await site.engine.keyState('old')).backupKeyHash}`].sort(),
      );
      assert.deepEqual((await readdir(join(dir, 'legacy', 'databases'))).filter((f) => f.includes('partial')), []);
    } finally {
      site.close();
    }
  });
});
