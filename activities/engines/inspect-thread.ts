/**
 * The test-restore check (open with the DEK, `quick_check`, count rows), on a worker thread
 * for any but a small database.
 *
 * `quick_check` reads and decrypts every page synchronously: about 2 s per 300 MiB here. On the
 * activity's thread it would stop heartbeats (a multi-GiB database would time out on every
 * attempt) and every other activity of the worker with them.
 */
import { stat } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';
import SqliteDatabase from 'better-sqlite3-multiple-ciphers';
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

interface CheckInput {
  path: string;
  dek: Uint8Array;
  quickCheck: boolean;
  userTables: string;
}
type CheckResult = { problem: string } | { tables: number; rows: number };

/**
 * The check itself, on this thread or in a worker's (its source is sent there as text): plain
 * JavaScript that uses nothing but its arguments.
 */
function check(Database: typeof SqliteDatabase, input: CheckInput): CheckResult {
  const db = new Database(input.path);
  try {
    db.pragma("cipher='sqlcipher'");
    db.pragma('legacy=4');
    db.pragma('key="x\'' + Buffer.from(input.dek).toString('hex') + '\'"');
    const result = input.quickCheck ? db.pragma('quick_check', { simple: true }) : 'ok';
    if (result !== 'ok') return { problem: String(result) };
    const tables = db.prepare<[], { name: string }>(input.userTables).all();
    let rows = 0;
    for (const { name } of tables) rows += db.prepare<[], { n: number }>('SELECT count(*) AS n FROM "' + name.replace(/"/g, '""') + '"').get()!.n;
    return { tables: tables.length, rows };
  } finally {
    db.close();
  }
}

// An error thrown in a thread reaches the parent as a bare object ("[object Object]" in a
// message): the thread sends SQLite's message instead.
const SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
try {
  parentPort.postMessage((${check.toString()})(require(workerData.module), workerData));
} catch (err) {
  parentPort.postMessage({ error: err instanceof Error ? err.message : String(err) });
}
`;

/**
 * Up to this size the check runs on the calling thread: a thread's start-up (about 29 ms of CPU
 * with SQLite loaded) costs more than checking a small database (SQLite's quick_check reads
 * about 150 MiB/s here, so at most about 25 ms), and a fleet of small databases checks hundreds
 * a night.
 */
export const INLINE_CHECK_BYTES = 4 * 1024 * 1024;

export class InspectError extends Error {}

/**
 * Resolves with the tables and rows of the database at `path`; rejects with InspectError when
 * SQLite finds it damaged, or with SQLite's own error when it does not open with `dek`.
 * `whileWaiting` runs every few seconds meanwhile (heartbeats). `quickCheck: false` only counts:
 * a re-encryption counts the original that way, to compare with its checked copy.
 */
export async function inspectInThread(path: string, dek: Buffer, whileWaiting?: () => void, options: { quickCheck?: boolean } = {}): Promise<RestoreCheck> {
  // A copy for the check; the caller still zeroes its own DEK.
  const input: CheckInput = { path, dek: new Uint8Array(dek), quickCheck: options.quickCheck ?? true, userTables: USER_TABLES };
  let result: CheckResult;
  try {
    if ((await stat(path)).size <= INLINE_CHECK_BYTES) {
      result = check(SqliteDatabase, input);
    } else {
      const worker = new Worker(SOURCE, { eval: true, workerData: { ...input, module: require.resolve('better-sqlite3-multiple-ciphers') } });
      const tick = whileWaiting ? setInterval(whileWaiting, 5000) : undefined;
      result = await new Promise<CheckResult>((resolve, reject) => {
        worker.once('message', (message: CheckResult | { error: string }) => ('error' in message ? reject(new Error(message.error)) : resolve(message)));
        worker.once('error', reject);
        worker.once('exit', (code) => reject(new Error(`the check thread ended with code ${code}`)));
      }).finally(() => {
        clearInterval(tick);
        void worker.terminate();
      });
    }
  } finally {
    input.dek.fill(0);
  }
  if ('problem' in result) throw new InspectError(result.problem);
  return result;
}
