/**
 * The test-restore check (open with the DEK, `quick_check`, count rows) on a worker thread.
 *
 * `quick_check` reads and decrypts every page synchronously: about 2 s per 300 MiB here. On the
 * activity's thread it would stop heartbeats (a multi-GiB database would time out on every
 * attempt) and every other activity of the worker with them.
 */
import { Worker } from 'node:worker_threads';
import type { RestoreCheck } from './database-engine';

/**
 * The tables whose rows are counted: every ordinary table of the application, whatever its name
 * (a bare `NOT LIKE 'sqlite_%'` took "_" for any character and skipped sqliteXdata or sqlite1;
 * only names starting with "sqlite_" are SQLite's own). Not the virtual tables: counting one
 * needs its module, which the reader may not have loaded, and an external-content FTS table
 * would count another table's rows again. Not their shadow tables either: those are a virtual
 * table's storage (FTS5 segments, say), not rows of the application; quick_check reads them.
 */
const USER_TABLES = "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY name";

// Plain JavaScript evaluated in the worker, so it loads the same way under tsx and from dist/.
const SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.module);
const db = new Database(workerData.path);
try {
  db.pragma("cipher='sqlcipher'");
  db.pragma('legacy=4');
  db.pragma('key="x\\'' + Buffer.from(workerData.dek).toString('hex') + '\\'"');
  const check = workerData.quickCheck ? db.pragma('quick_check', { simple: true }) : 'ok';
  if (check !== 'ok') {
    parentPort.postMessage({ problem: String(check) });
  } else {
    const tables = db.prepare(${JSON.stringify(USER_TABLES)}).all();
    let rows = 0;
    for (const { name } of tables) rows += db.prepare('SELECT count(*) AS n FROM "' + name.replace(/"/g, '""') + '"').get().n;
    parentPort.postMessage({ tables: tables.length, rows });
  }
} finally {
  db.close();
}
`;

export class InspectError extends Error {}

/**
 * Resolves with the tables and rows of the database at `path`; rejects with InspectError when
 * SQLite finds it damaged, or with SQLite's own error when it does not open with `dek`.
 * `whileWaiting` runs every few seconds meanwhile (heartbeats). `quickCheck: false` only counts:
 * a re-encryption counts the original that way, to compare with its checked copy.
 */
export function inspectInThread(path: string, dek: Buffer, whileWaiting?: () => void, options: { quickCheck?: boolean } = {}): Promise<RestoreCheck> {
  // A copy for the thread; the caller still zeroes its own DEK.
  const key = new Uint8Array(dek);
  const worker = new Worker(SOURCE, { eval: true, workerData: { path, dek: key, quickCheck: options.quickCheck ?? true, module: require.resolve('better-sqlite3-multiple-ciphers') } });
  key.fill(0);
  const tick = whileWaiting ? setInterval(whileWaiting, 5000) : undefined;
  return new Promise<RestoreCheck>((resolve, reject) => {
    worker.once('message', (result: { problem?: string; tables?: number; rows?: number }) => {
      if (result.problem !== undefined) reject(new InspectError(result.problem));
      else resolve({ tables: result.tables ?? 0, rows: result.rows ?? 0 });
    });
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`the check thread ended with code ${code}`)));
  }).finally(() => {
    clearInterval(tick);
    void worker.terminate();
  });
}
