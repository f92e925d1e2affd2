/**
 * Re-encrypting an embedded database under a new DEK: a copy of its file under the new key is
 * checked, then renamed over the original, with no other process able to write into (or keep
 * using) the file being replaced.
 *
 * Why a raw copy of the file plus `PRAGMA rekey` of the copy, measured with SQLite3 Multiple
 * Ciphers 2.3.3 (SQLite 3.53) on 2 cores, 340 MiB, 1.5 M rows and an index:
 * - `db.backup()` refuses ("backup is not supported with incompatible source and target
 *   databases"): better-sqlite3 opens the destination itself, unkeyed, and is built with
 *   SQLITE_USE_URI=0, so no key can ride in its name.
 * - `VACUUM INTO` writes a plain target under the source's own key, and does not parse a URI
 *   target (it creates a file named after the URI, key included). One blocking statement.
 * - The logical copy (ATTACH … KEY, INSERT … SELECT in batches; 4.4 s) rebuilds each index in one
 *   blocking statement (2 s of the 4.4 here, no heartbeat), needs every virtual-table module,
 *   collation and function the schema names, and drops what is not a row of a table it copies.
 * - Copying the file's bytes under the write lock (0.4 s, async, in chunks) and rekeying the
 *   copy on a worker thread (4.9 s; one synchronous call, so off the event loop) keeps every
 *   page: any schema, FTS indexes, sqlite_sequence, user_version, application_id, loaded modules
 *   or not. The rekey journals each page before rewriting it, so the copy's journal growing is
 *   its progress. Peak disk: the copy and its journal, twice the database beside it.
 */
import { randomBytes } from 'node:crypto';
import { type FileHandle, link, open, readFile, readdir, rename, rm, stat, statfs } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { basename, dirname, join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { syncDirectory } from './backup-file-format';
import { EngineError } from './engine-error';
import { inspectInThread } from './inspect-thread';
import { openKeyed } from './open-keyed';

const COPY_CHUNK_BYTES = 4 * 1024 * 1024;
const POLL_MS = 250;
/**
 * `<file>.rekey-<random>.new` (the copy, and SQLite's `-journal` of it) and `.old` (a second name
 * of the original while the swap can still be undone). Database files are `<id>.db` with no dot
 * in the id, so this prefix is never another database's file, nor its key file.
 */
const LEFTOVER = '.rekey-';

export interface FileHolder {
  pid: number;
  /** Its command line, shortened: what the operator needs to find and stop it. */
  command: string;
}

/**
 * The other processes (not this one) that have `path`'s file open, matched by device and inode in
 * /proc/<pid>/fd (Linux): a process that opened it under another name, or before a rename, counts.
 * Processes of other users are invisible to a non-root worker; the database files are 0600.
 */
export async function processesHolding(path: string): Promise<FileHolder[]> {
  const target = await stat(path, { bigint: true });
  let pids: string[];
  try {
    pids = (await readdir('/proc')).filter((name) => /^\d+$/.test(name) && Number(name) !== process.pid);
  } catch (err) {
    throw new EngineError('INVALID_CONFIGURATION', `cannot tell which processes have ${path} open without /proc (${String(err)}); the database keeps its old file and DEK`);
  }
  const holders: FileHolder[] = [];
  for (const pid of pids) {
    // A process that ended meanwhile, or one whose descriptors this user may not read.
    const fds = await readdir(`/proc/${pid}/fd`).catch(() => []);
    for (const fd of fds) {
      const file = await stat(`/proc/${pid}/fd/${fd}`, { bigint: true }).catch(() => undefined);
      if (file?.dev === target.dev && file.ino === target.ino) {
        holders.push({ pid: Number(pid), command: await commandOf(pid) });
        break;
      }
    }
  }
  return holders;
}

async function commandOf(pid: string): Promise<string> {
  const line = (await readFile(`/proc/${pid}/cmdline`).catch(() => Buffer.alloc(0))).toString('utf8').replace(/[\0\s]+/g, ' ').trim();
  return line.length > 200 ? `${line.slice(0, 199)}…` : line || '?';
}

const listed = (holders: FileHolder[]) => holders.map((h) => `pid ${h.pid} (${h.command})`).join(', ');

/**
 * Removes what earlier attempts left beside `path` (their worker died): never reused. An `.old`
 * is either a second name of the database itself or, after a crash between swap and cleanup, the
 * replaced file under the old DEK: nothing the database still needs.
 */
export async function removeRekeyLeftovers(path: string): Promise<void> {
  const prefix = `${basename(path)}${LEFTOVER}`;
  for (const name of await readdir(dirname(path))) if (name.startsWith(prefix)) await rm(join(dirname(path), name), { force: true });
}

/**
 * Replaces the database at `path` (rollback journal, keyed with `oldDek`) by a copy of every page
 * under `newDek`. Refuses with DATABASE_BUSY, changing nothing, while another process has the file
 * open, or opens it meanwhile (the swap is then undone); with INVALID_CONFIGURATION (and the
 * database on its old file and DEK) what it cannot copy. `progress` counts rows: those of the
 * database, in proportion to the pages copied and re-encrypted.
 */
export async function copyUnderNewKey(options: { path: string; oldDek: Buffer; newDek: Buffer; progress?: (done: number, total: number) => void }): Promise<{ rows: number }> {
  const { path, oldDek, newDek, progress } = options;
  // The copy replaces this file: what another process writes into the old one after that is lost,
  // and one that keeps it open goes on writing into a file that is no longer the database.
  const holders = await processesHolding(path);
  if (holders.length > 0) {
    throw new EngineError('DATABASE_BUSY', `database file ${path} is open in ${listed(holders)}: stop them, then retry the re-encryption (nothing was changed)`);
  }
  // Only now: a process still re-encrypting this file would have had it open.
  await removeRekeyLeftovers(path);
  const tag = randomBytes(4).toString('hex');
  const fresh = `${path}${LEFTOVER}${tag}.new`;
  const previous = `${path}${LEFTOVER}${tag}.old`;
  const lock = openKeyed(path, oldDek, { fileMustExist: true });
  let source: FileHandle | undefined;
  // The copy is at `path` and the original only at `previous`: undone unless confirmed.
  let swapped = false;
  try {
    if (lock.pragma('journal_mode', { simple: true }) === 'wal') {
      throw new EngineError('INVALID_CONFIGURATION', `database file ${path} is in WAL journal mode, whose pages a file copy misses and which rekey refuses (the engine's databases use a rollback journal); the database keeps its old file and DEK`);
    }
    // From here to the swap no one commits into the file (they wait, then write into whichever
    // file is the database then); readers go on. Held in a connection of its own: the copy reads
    // the bytes, and the counting and checking threads open their own connections.
    try {
      lock.exec('BEGIN IMMEDIATE');
    } catch (err) {
      throw new EngineError('DATABASE_BUSY', `database file ${path} stayed locked by a writer: ${String(err)}`);
    }
    // Heartbeats while counting say 0 of a total not known yet.
    const original = await inspectInThread(path, oldDek, () => progress?.(0, 0), { quickCheck: false });
    const total = original.rows;
    // Never backwards: the re-encryption's progress comes from stat() calls that may resolve out
    // of order on a loaded machine.
    let reported = 0;
    const report = (fraction: number) => {
      const done = Math.min(total, Math.floor(total * fraction));
      if (done < reported) return;
      reported = done;
      progress?.(done, total);
    };
    // Closed only after the lock is released: closing any descriptor of a file drops every POSIX
    // lock this process holds on it, SQLite's included.
    source = await open(path, 'r');
    const { size } = await source.stat();
    await requireSpace(path, size);
    // Half the work copying pages, half re-encrypting them.
    await copyBytes(source, fresh, size, (bytes) => report(bytes / size / 2));
    await rekeyInThread(fresh, oldDek, newDek, async () => {
      const journaled = (await stat(`${fresh}-journal`).catch(() => undefined))?.size ?? 0;
      report(0.5 + Math.min(1, journaled / Math.max(1, size)) / 2);
    });
    progress?.(total, total);
    // The copy becomes the only file of the database: it must open with the new DEK, pass
    // SQLite's check and hold every row first.
    const check = await inspectInThread(fresh, newDek, () => progress?.(total, total)).catch((err: unknown) => {
      throw new EngineError('ENGINE_COMMAND_FAILED', `the re-encrypted copy of ${path} fails its check (${String(err)}); the database keeps its old file and DEK`);
    });
    if (check.rows !== original.rows || check.tables !== original.tables) {
      throw new EngineError(
        'ENGINE_COMMAND_FAILED',
        `the re-encrypted copy of ${path} holds ${check.tables} tables and ${check.rows} rows, the database ${original.tables} and ${original.rows}; the database keeps its old file and DEK`,
      );
    }
    const copy = await open(fresh, 'r');
    try {
      await copy.sync();
    } finally {
      await copy.close();
    }
    await link(path, previous);
    await rename(fresh, path);
    swapped = true;
    await syncDirectory(path);
    // Nobody can open the old file by its name any more: whoever has it open now opened it after
    // the first look, and waits for the lock to write into it. Undone, it is the database again.
    const late = await processesHolding(previous);
    if (late.length > 0) {
      throw new EngineError(
        'DATABASE_BUSY',
        `database file ${path} was opened during its re-encryption by ${listed(late)}: the swap is undone, so what they write stays in the database, which keeps its old file and DEK; stop them, then retry`,
      );
    }
    swapped = false;
    return { rows: total };
  } finally {
    try {
      if (swapped) {
        await rename(previous, path);
        swapped = false;
        await syncDirectory(path);
      }
    } finally {
      if (lock.inTransaction) lock.exec('ROLLBACK');
      lock.close();
      await source?.close();
      await rm(fresh, { force: true });
      await rm(`${fresh}-journal`, { force: true });
      // Kept only if the undo failed: then it is the file others may still be writing into.
      if (!swapped) await rm(previous, { force: true });
    }
  }
}

async function requireSpace(path: string, size: number): Promise<void> {
  const fs = await statfs(dirname(path));
  const free = fs.bavail * fs.bsize;
  if (free < 2 * size + COPY_CHUNK_BYTES) {
    const mib = (n: number) => `${Math.ceil(n / 2 ** 20)} MiB`;
    throw new EngineError('INVALID_CONFIGURATION', `re-encrypting ${path} needs ${mib(2 * size)} free beside it (the copy and its journal), ${mib(free)} are; the database keeps its old file and DEK`);
  }
}

/** The file's bytes as they are (the write lock holds them still), in chunks: the event loop turns between them. */
async function copyBytes(source: FileHandle, target: string, size: number, copied: (bytes: number) => void): Promise<void> {
  const out = await open(target, 'wx', 0o600);
  try {
    const buffer = Buffer.allocUnsafe(COPY_CHUNK_BYTES);
    for (let at = 0; at < size; ) {
      const { bytesRead } = await source.read(buffer, 0, Math.min(buffer.length, size - at), at);
      if (bytesRead === 0) throw new EngineError('ENGINE_COMMAND_FAILED', `the database file ended at byte ${at} of ${size} while being copied`);
      for (let written = 0; written < bytesRead; ) written += (await out.write(buffer, written, bytesRead - written, at + written)).bytesWritten;
      at += bytesRead;
      copied(at);
    }
  } finally {
    await out.close();
  }
}

// Plain JavaScript evaluated in the worker, so it loads the same way under tsx and from dist/.
const REKEY_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.module);
const db = new Database(workerData.path, { fileMustExist: true });
try {
  db.pragma("cipher='sqlcipher'");
  db.pragma('legacy=4');
  db.pragma('key="x\\'' + Buffer.from(workerData.oldDek).toString('hex') + '\\'"');
  db.prepare('SELECT count(*) FROM sqlite_master').get();
  db.pragma('rekey="x\\'' + Buffer.from(workerData.newDek).toString('hex') + '\\'"');
  parentPort.postMessage('rekeyed');
} finally {
  db.close();
}
`;

/**
 * PRAGMA rekey of the copy at `path` (every page rewritten under `newDek`, in one transaction) on
 * a worker thread; `whileWaiting` runs a few times a second meanwhile.
 */
async function rekeyInThread(path: string, oldDek: Buffer, newDek: Buffer, whileWaiting: () => Promise<void>): Promise<void> {
  // Copies for the thread; the caller still zeroes its own DEKs.
  const keys = { oldDek: new Uint8Array(oldDek), newDek: new Uint8Array(newDek) };
  const worker = new Worker(REKEY_SOURCE, { eval: true, workerData: { path, ...keys, module: require.resolve('better-sqlite3-multiple-ciphers') } });
  keys.oldDek.fill(0);
  keys.newDek.fill(0);
  const rekeyed = new Promise<true>((resolve, reject) => {
    worker.once('message', () => resolve(true));
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`the rekey thread ended with code ${code}`)));
  }).catch((err: unknown) => {
    throw new EngineError('ENGINE_COMMAND_FAILED', `re-encrypting the copy ${path} failed (${String(err)}); the database keeps its old file and DEK`);
  });
  try {
    while (!(await Promise.race([rekeyed, delay(POLL_MS, false)]))) await whileWaiting();
  } finally {
    // Waits for the thread: the copy must not be removed under it.
    await worker.terminate();
  }
}
