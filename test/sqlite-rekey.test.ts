import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, linkSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3-multiple-ciphers';
import { inspectInThread } from '../activities/engines/inspect-thread';
import { copyUnderNewKey } from '../activities/engines/sqlite-rekey';
import { EngineError } from '../activities/engines/engine-error';
import { rejectsWith } from './helpers/engine-errors';

function openKeyed(path: string, dek: Buffer): Database.Database {
  const db = new Database(path);
  db.pragma(`cipher='sqlcipher'`);
  db.pragma('legacy=4');
  db.pragma(`key="x'${dek.toString('hex')}'"`);
  db.prepare('SELECT count(*) FROM sqlite_master').get();
  return db;
}

function withDb<T>(path: string, dek: Buffer, fn: (db: Database.Database) => T): T {
  const db = openKeyed(path, dek);
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

/** Everything a database holds: its schema, every table's rows (SQLite's own and FTS storage included), its header fields. */
function everything(db: Database.Database) {
  const quoted = (name: string) => `"${name.replace(/"/g, '""')}"`;
  const tables = db
    .prepare<[], { name: string }>(`SELECT name FROM pragma_table_list WHERE schema = 'main' AND type IN ('table', 'shadow') AND name <> 'sqlite_schema' ORDER BY name`)
    .all()
    .map(({ name }) => [name, db.prepare(`SELECT * FROM ${quoted(name)} ORDER BY 1, 2`).raw().all()]);
  return {
    schema: db.prepare('SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name').all(),
    tables: Object.fromEntries(tables) as Record<string, unknown[]>,
    userVersion: db.pragma('user_version', { simple: true }) as number,
    applicationId: db.pragma('application_id', { simple: true }) as number,
  };
}

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

/** Waits, synchronously (inside a progress callback), for a file another process writes. */
function waitForFileSync(path: string, timeoutMs = 30_000): void {
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  for (const deadline = Date.now() + timeoutMs; !existsSync(path); ) {
    if (Date.now() > deadline) throw new Error(`no ${path} after ${timeoutMs} ms`);
    Atomics.wait(sleeper, 0, 0, 5);
  }
}

// Another process using the database as an application would: keyed the same way, rollback
// journal, waiting on locks. It says what it did with marker files in SIGNALS. The key comes in
// the environment, never on the command line (which the refusal quotes).
const CHILD_SCRIPT = `
const fs = require('node:fs');
const { join } = require('node:path');
const Database = require(process.env.SQLITE_MODULE);
const { DB_PATH, DB_KEY, SIGNALS, ROLE } = process.env;
const sleeper = new Int32Array(new SharedArrayBuffer(4));
if (ROLE === 'late-writer') while (!fs.existsSync(join(SIGNALS, 'go'))) Atomics.wait(sleeper, 0, 0, 5);
const db = new Database(DB_PATH, { fileMustExist: true });
db.pragma("cipher='sqlcipher'");
db.pragma('legacy=4');
db.pragma('key="x\\'' + DB_KEY + '\\'"');
db.pragma('busy_timeout = 60000');
db.prepare('SELECT count(*) FROM sqlite_master').get();
fs.writeFileSync(join(SIGNALS, 'opened'), String(process.pid));
if (ROLE === 'late-writer') {
  db.prepare('INSERT INTO orders (payload) VALUES (?)').run('written by the late writer');
  db.close();
  fs.writeFileSync(join(SIGNALS, 'inserted'), '');
} else {
  setInterval(() => {}, 60_000);
}
`;

describe('re-encrypting an embedded database under a new DEK (real SQLCipher files, real processes)', () => {
  let dir: string;
  const children: ChildProcess[] = [];

  let script: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keyops-rekey-'));
    script = join(dir, 'app.js');
    writeFileSync(script, CHILD_SCRIPT);
  });
  after(async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  let n = 0;
  /** A database of its own directory, with `orders` and whatever `setup` adds. */
  const seed = async (rows: number, setup: (db: Database.Database) => void = () => undefined) => {
    const home = join(dir, `case-${++n}`);
    await mkdir(home);
    const path = join(home, 'orders.db');
    const oldDek = randomBytes(32);
    withDb(path, oldDek, (db) => {
      db.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)');
      const insert = db.prepare('INSERT INTO orders (payload) VALUES (?)');
      db.transaction(() => {
        for (let i = 0; i < rows; i++) insert.run(`secret order ${i} ${'x'.repeat(100)}`);
      })();
      setup(db);
    });
    return { home, path, oldDek, newDek: randomBytes(32) };
  };
  const leftovers = async (home: string) => (await readdir(home)).filter((name) => name.includes('.rekey-'));

  const spawnChild = (role: 'holder' | 'late-writer', path: string, dek: Buffer, signals: string) => {
    const child = spawn(process.execPath, ['-e', 'require(process.env.CHILD_SCRIPT)', role], {
      env: { ...process.env, CHILD_SCRIPT: script, SQLITE_MODULE: require.resolve('better-sqlite3-multiple-ciphers'), DB_PATH: path, DB_KEY: dek.toString('hex'), SIGNALS: signals, ROLE: role },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    children.push(child);
    return child;
  };

  it('carries every schema object and row: look-alike sqlite names, FTS5 with its index, WITHOUT ROWID, STRICT, AUTOINCREMENT, generated columns, indexes, views, triggers, header fields', async () => {
    const { path, oldDek, newDek } = await seed(0, (db) => {
      db.exec(`
        PRAGMA user_version = 42;
        PRAGMA application_id = 1263488595;
        CREATE TABLE ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, item TEXT NOT NULL, price REAL NOT NULL,
          gross REAL GENERATED ALWAYS AS (price * 1.2) STORED, label TEXT AS (upper(item)) VIRTUAL);
        CREATE INDEX ledger_price ON ledger (price);
        CREATE TABLE sqliteXdata (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID;
        CREATE TABLE sqlite1 (id INTEGER PRIMARY KEY, n INTEGER NOT NULL) STRICT;
        CREATE UNIQUE INDEX sqlite1_n ON sqlite1 (n);
        CREATE TABLE audit (ledger_id INTEGER NOT NULL, what TEXT NOT NULL);
        CREATE TRIGGER ledger_audit AFTER INSERT ON ledger BEGIN INSERT INTO audit VALUES (new.id, 'added'); END;
        CREATE VIEW dear AS SELECT id, item FROM ledger WHERE price > 50;
        CREATE VIRTUAL TABLE notes USING fts5(title, body);
      `);
      const words = ['alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta'];
      db.transaction(() => {
        for (let i = 1; i <= 300; i++) db.prepare('INSERT INTO ledger (item, price) VALUES (?, ?)').run(`item ${i}`, i % 100);
        db.exec('DELETE FROM ledger WHERE id > 290'); // AUTOINCREMENT remembers 300
        for (let i = 0; i < 40; i++) db.prepare('INSERT INTO sqliteXdata VALUES (?, ?)').run(`key ${i}`, randomBytes(16));
        for (let i = 0; i < 30; i++) db.prepare('INSERT INTO sqlite1 (n) VALUES (?)').run(i * 7);
        for (let i = 0; i < 500; i++) db.prepare('INSERT INTO notes VALUES (?, ?)').run(`note ${i}`, `${words[i % 6]!} ${words[Math.floor(i / 6) % 6]!} text ${i}`);
        db.exec(`INSERT INTO notes (rowid, title, body) VALUES (9000, 'last', 'omega alpha')`);
      })();
    });
    const search = (db: Database.Database) => ({
      dear: db.prepare('SELECT id FROM dear ORDER BY id').pluck().all(),
      both: db.prepare(`SELECT rowid FROM notes WHERE notes MATCH 'alpha AND gamma' ORDER BY rowid`).pluck().all(),
      ranked: db.prepare(`SELECT rowid, title FROM notes WHERE notes MATCH 'omega OR zeta' ORDER BY bm25(notes), rowid LIMIT 5`).all(),
      phrase: db.prepare(`SELECT count(*) FROM notes WHERE notes MATCH '"beta delta"'`).pluck().get(),
    });
    const before = withDb(path, oldDek, (db) => ({ all: everything(db), search: search(db) }));
    assert.ok(before.search.both.length > 0 && before.search.ranked.length > 0);
    const counted = await inspectInThread(path, oldDek);
    // Every user table, whatever its name; not FTS storage (its rows are index segments).
    assert.deepEqual(counted, { tables: 5, rows: 290 + 40 + 30 + 300 });

    const result = await copyUnderNewKey({ path, oldDek, newDek });
    assert.equal(result.rows, counted.rows);
    assert.throws(() => openKeyed(path, oldDek), /file is not a database/);
    assert.deepEqual(await inspectInThread(path, newDek), counted, 'the copy counts as the original did');
    withDb(path, newDek, (db) => {
      assert.deepEqual(everything(db), before.all, 'schema, rows of every table (sqliteXdata, sqlite1, sqlite_sequence, FTS storage), user_version, application_id');
      assert.deepEqual(search(db), before.search, 'MATCH and the view answer as before');
      assert.equal(db.pragma('integrity_check', { simple: true }), 'ok');
      const added = db.prepare(`INSERT INTO ledger (item, price) VALUES ('after', 99) RETURNING id, gross, label`).get();
      assert.deepEqual(added, { id: 301, gross: 99 * 1.2, label: 'AFTER' }, 'AUTOINCREMENT continues after 300; generated columns compute');
      assert.deepEqual(db.prepare('SELECT what FROM audit WHERE ledger_id = 301').pluck().all(), ['added'], 'the trigger fires');
      assert.throws(() => db.prepare('INSERT INTO sqlite1 (n) VALUES (7)').run(), /UNIQUE constraint failed/, 'the unique index holds');
      assert.throws(() => db.prepare(`INSERT INTO sqlite1 (n) VALUES ('seven')`).run(), /cannot store TEXT value in INTEGER column/, 'still STRICT');
      assert.match(JSON.stringify(db.prepare('EXPLAIN QUERY PLAN SELECT * FROM ledger WHERE price = 3').all()), /ledger_price/);
    });
  });

  it('carries a virtual table whose module this process does not have, and refuses a database it cannot copy (WAL) with the original untouched', async () => {
    // A module only the application registers: the re-encryption never loads it. A factory, so
    // that CREATE VIRTUAL TABLE can use it (better-sqlite3's typings know only the eponymous form).
    const module = (() => ({
      columns: ['name', 'value'],
      *rows() {
        yield { name: 'mode', value: 'strict' };
      },
    })) as unknown as Parameters<Database.Database['table']>[1];
    const { path, oldDek, newDek } = await seed(100, (db) => {
      db.table('app_settings', module);
      db.exec('CREATE VIRTUAL TABLE settings USING app_settings(scope)');
    });
    const schema = withDb(path, oldDek, (db) => db.prepare('SELECT * FROM sqlite_schema ORDER BY name').all());
    await copyUnderNewKey({ path, oldDek, newDek });
    withDb(path, newDek, (db) => {
      assert.deepEqual(db.prepare('SELECT * FROM sqlite_schema ORDER BY name').all(), schema);
      assert.throws(() => db.prepare('SELECT * FROM settings').all(), /no such module: app_settings/);
      assert.equal(db.prepare('SELECT count(*) FROM orders').pluck().get(), 100);
    });
    const app = openKeyed(path, newDek);
    app.table('app_settings', module);
    assert.deepEqual(app.prepare('SELECT name, value FROM settings').all(), [{ name: 'mode', value: 'strict' }], 'with its module, it answers');
    app.close();

    const wal = await seed(100, (db) => db.pragma('journal_mode = WAL'));
    const bytes = sha256(wal.path);
    await rejectsWith(copyUnderNewKey(wal), 'INVALID_CONFIGURATION', /orders\.db is in WAL journal mode.*the database keeps its old file and DEK/);
    assert.equal(sha256(wal.path), bytes);
    assert.equal(withDb(wal.path, wal.oldDek, (db) => db.prepare('SELECT count(*) FROM orders').pluck().get()), 100);
    assert.deepEqual(await leftovers(wal.home), []);
  });

  it('refuses, changing nothing, while another process has the database open', async () => {
    const { home, path, oldDek, newDek } = await seed(1000);
    const signals = await mkdtemp(join(dir, 'signals-'));
    const holder = spawnChild('holder', path, oldDek, signals);
    waitForFileSync(join(signals, 'opened'));
    const bytes = sha256(path);
    await rejectsWith(copyUnderNewKey({ path, oldDek, newDek }), 'DATABASE_BUSY', new RegExp(`orders\\.db is open in pid ${holder.pid} \\(\\S*node -e require\\(process\\.env\\.CHILD_SCRIPT\\) holder\\): stop them`));
    assert.equal(sha256(path), bytes);
    assert.deepEqual(await leftovers(home), []);
    holder.kill();
    await once(holder, 'exit');
    await copyUnderNewKey({ path, oldDek, newDek });
    assert.equal(withDb(path, newDek, (db) => db.prepare('SELECT count(*) FROM orders').pluck().get()), 1000, 'once it is gone');
  });

  it('never loses the rows of a process that opens the database during the copy and writes', async () => {
    const { home, path, oldDek, newDek } = await seed(12_000);
    const signals = await mkdtemp(join(dir, 'signals-'));
    const writer = spawnChild('late-writer', path, oldDek, signals);
    const exited = once(writer, 'exit');
    let told = false;
    const outcome = await copyUnderNewKey({
      path,
      oldDek,
      newDek,
      // Mid-copy: the writer opens the file, then its INSERT waits for the lock.
      progress: () => {
        if (told) return;
        told = true;
        writeFileSync(join(signals, 'go'), '');
        waitForFileSync(join(signals, 'opened'));
      },
    }).catch((err: unknown) => err);
    assert.ok(told, 'the writer opened the file during the copy');
    assert.deepEqual(await exited, [0, null]);
    assert.ok(existsSync(join(signals, 'inserted')));
    // Whatever the outcome, the row is in the database: under whichever DEK it now opens with.
    const dek = [newDek, oldDek].find((k) => {
      try {
        openKeyed(path, k).close();
        return true;
      } catch {
        return false;
      }
    })!;
    withDb(path, dek, (db) => {
      assert.equal(db.prepare(`SELECT count(*) FROM orders WHERE payload = 'written by the late writer'`).pluck().get(), 1, 'the late writer kept its row');
      assert.equal(db.prepare('SELECT count(*) FROM orders').pluck().get(), 12_001);
    });
    // Here: the swap was undone, the writer named, nothing left behind.
    assert.ok(outcome instanceof EngineError, String(outcome));
    assert.equal(outcome.code, 'DATABASE_BUSY');
    assert.match(outcome.message, new RegExp(`opened during its re-encryption by pid ${writer.pid} \\(\\S*node -e \\S+ late-writer\\): the swap is undone`));
    assert.equal(dek, oldDek);
    assert.deepEqual(await leftovers(home), []);
  });

  it("removes earlier attempts' files at the start, and leaves none when an attempt fails", async () => {
    const { home, path, oldDek, newDek } = await seed(12_000);
    writeFileSync(join(home, 'orders.db.rekey-0badf00d.new'), 'a copy a dead worker left');
    writeFileSync(join(home, 'orders.db.rekey-0badf00d.new-journal'), 'its journal');
    linkSync(path, join(home, 'orders.db.rekey-0badf00d.old')); // the database's own second name
    const unrelated = ['orders.db.keys.json', 'other.db.rekey-0badf00d.new', 'orders.dbx.rekey-1.new'];
    for (const name of unrelated) writeFileSync(join(home, name), 'not ours');
    const bytes = sha256(path);

    // A worker lost mid-copy (its heartbeat throws): the original stays, as it was and writable.
    await assert.rejects(
      copyUnderNewKey({
        path,
        oldDek,
        newDek,
        progress: () => {
          throw new Error('worker lost');
        },
      }),
      /worker lost/,
    );
    assert.equal(sha256(path), bytes);
    assert.deepEqual((await readdir(home)).sort(), ['orders.db', ...unrelated].sort(), 'nothing of this attempt or earlier ones is left');
    withDb(path, oldDek, (db) => {
      db.pragma('busy_timeout = 0');
      db.prepare(`INSERT INTO orders (payload) VALUES ('after the failed attempt')`).run();
    });

    await copyUnderNewKey({ path, oldDek, newDek });
    assert.equal(withDb(path, newDek, (db) => db.prepare('SELECT count(*) FROM orders').pluck().get()), 12_001);
    assert.deepEqual((await readdir(home)).sort(), ['orders.db', ...unrelated].sort());
  });

  it('reports progress in rows, in batches, keeping the event loop turning (heartbeats)', async () => {
    const rows = 300_000;
    const { path, oldDek, newDek } = await seed(0, (db) => {
      db.exec('CREATE TABLE lines (id INTEGER PRIMARY KEY, sku TEXT NOT NULL)');
      const insert = db.prepare('INSERT INTO lines (sku) VALUES (?)');
      db.transaction(() => {
        for (let i = 0; i < rows; i++) insert.run(randomBytes(24).toString('hex'));
      })();
      db.exec('CREATE INDEX lines_sku ON lines (sku)');
    });
    const reports: [number, number][] = [];
    let longest = 0;
    let last = performance.now();
    const ticker = setInterval(() => {
      const now = performance.now();
      longest = Math.max(longest, now - last);
      last = now;
    }, 5);
    const started = performance.now();
    let result;
    try {
      result = await copyUnderNewKey({ path, oldDek, newDek, progress: (done, total) => reports.push([done, total]) });
    } finally {
      clearInterval(ticker);
    }
    const took = performance.now() - started;
    assert.deepEqual(result, { rows });
    // While the old file is inspected, before its rows are counted, progress is (0, 0): alive,
    // total not yet known (how many such beats come depends on the machine's load).
    const counted = reports.filter(([, total]) => total !== 0);
    assert.ok(reports.slice(0, reports.length - counted.length).every(([done, total]) => done === 0 && total === 0), JSON.stringify(reports.slice(0, 5)));
    assert.ok(counted.length >= 4, `progress in batches: ${counted.length} reports`);
    assert.ok(
      counted.every(([done, total], i) => total === rows && done <= total && (i === 0 || done >= counted[i - 1]![0])),
      `rows of the database, never going back: ${JSON.stringify(counted.slice(0, 10))}`,
    );
    assert.deepEqual(reports.at(-1), [rows, rows]);
    // No single step holds the thread for a good share of the copy (an index rebuilt in one
    // statement did, for seconds per GiB): the activity heartbeats throughout.
    assert.ok(longest < took / 4, `the event loop stood still for ${longest.toFixed(0)} ms of ${took.toFixed(0)} ms`);
  });
});
