import type Database from 'better-sqlite3-multiple-ciphers';

const pause = new Int32Array(new SharedArrayBuffer(4));

/**
 * Puts a database file in WAL mode, waiting out other processes that open it at the same time.
 * SQLite answers SQLITE_BUSY at once, without calling the busy handler, when connections switch
 * the same new file to WAL together: workers starting together on a new data directory then
 * failed to start with "database is locked". Retried here for up to `timeoutMs` (synchronously:
 * the adapters open before the worker runs anything).
 */
export function enableWal(db: Database.Database, timeoutMs = 10_000): void {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      db.pragma('journal_mode = WAL');
      return;
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (typeof code !== 'string' || !code.startsWith('SQLITE_BUSY') || Date.now() >= deadline) throw err;
      Atomics.wait(pause, 0, 0, 5 + Math.random() * 20);
    }
  }
}
