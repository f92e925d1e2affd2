/**
 * npm run bench:restore -- --size 1GiB [--runs 3] [--without-sha-ni]
 *
 * How long a restore takes next to the backup that made it, in one run on one database: `cp` of
 * the database file; the backup (encrypt, integrity value, fsync); the restore itself (decrypt,
 * authenticate, write, fsync), and the check after it, timed apart: `authenticated` (open with
 * the DEK, count rows) and `full` (SQLite quick_check over every page, then the counts).
 * Backups of format 2 (whole-file SHA-256, before) and format 4 (hash of the chunk tags, after)
 * are measured side by side. `--without-sha-ni` runs the same with OpenSSL told that the CPU has
 * no SHA instructions (OPENSSL_ia32cap), as on the Xeons issue 18 was measured on.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { parseSize } from './size-option';
import type { BackupImage } from '../activities/engines/database-engine';
import { EncryptedSqliteEngine } from '../activities/engines/encrypted-sqlite-engine';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';

// CPUID(7).EBX bit 29, the SHA extensions, in OpenSSL's second capability word.
const MASK_SHA_NI = ':~0x20000000';

const opts = new Command('bench:restore')
  .option('--size <size>', 'database size (B, KB, MB, GB, KiB, MiB, GiB)', parseSize, 1024 ** 3)
  .option('--runs <n>', 'runs of each step; the best is shown, every run in parentheses', (v) => Number(v), 3)
  .option('--without-sha-ni', 'run with OpenSSL told the CPU has no SHA instructions (OPENSSL_ia32cap)')
  .parse()
  .opts<{ size: number; runs: number; withoutShaNi?: boolean }>();

if (opts.withoutShaNi && process.env.OPENSSL_ia32cap !== MASK_SHA_NI) {
  // OpenSSL reads the mask when it starts: only a new process gets it.
  const child = spawnSync(process.execPath, [...process.execArgv, ...process.argv.slice(1)], { stdio: 'inherit', env: { ...process.env, OPENSSL_ia32cap: MASK_SHA_NI } });
  process.exit(child.status ?? 1);
}

const mibps = (bytes: number, ms: number) => `${((bytes / 1024 ** 2 / ms) * 1000).toFixed(0)} MiB/s`;
const secs = (ms: number) => (ms / 1000).toFixed(2);

/** Runs `step` `runs` times after a sync each (no write-back of earlier work underneath); all times, in ms. */
async function timed(runs: number, step: (run: number) => Promise<void> | void, after?: (run: number) => Promise<void> | void): Promise<number[]> {
  const times: number[] = [];
  for (let run = 0; run < runs; run++) {
    execFileSync('sync');
    const t = performance.now();
    await step(run);
    times.push(performance.now() - t);
    await after?.(run);
  }
  return times;
}

function cpuMsPerGiB(runs: number, work: (chunk: Buffer) => void): number {
  const chunk = randomBytes(4 * 1024 ** 2);
  return Math.min(
    ...Array.from({ length: runs }, () => {
      const t = performance.now();
      for (let i = 0; i < 256; i++) work(chunk);
      return performance.now() - t;
    }),
  );
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'keyops-bench-restore-'));
  const kms = LocalKms.open({ path: join(dir, 'kms', 'keys.sqlite'), masterSecret: randomBytes(32) });
  const registry = SqliteWdekRegistry.open(join(dir, 'registry', 'wdeks.sqlite'));
  const engines = { 2: EncryptedSqliteEngine.open({ dir: join(dir, 'databases'), kms, registry, backupFormat: 2 }) } as Record<2 | 4, EncryptedSqliteEngine>;
  try {
    const { keyId } = await kms.createKey({ name: 'bench-restore' });
    const seeded = performance.now();
    await engines[2].createDatabase('bench', keyId);
    await engines[2].withDatabase('bench', (db) => {
      db.exec('CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)');
      const insert = db.prepare('INSERT INTO blobs (data) VALUES (?)');
      const rows = Math.ceil(opts.size / 1024 ** 2);
      for (let i = 0; i < rows; i += 64) {
        db.transaction(() => {
          for (let j = i; j < Math.min(rows, i + 64); j++) insert.run(randomBytes(1024 ** 2));
        })();
      }
    });
    engines[2].close();
    engines[2] = EncryptedSqliteEngine.open({ dir: join(dir, 'databases'), kms, registry, backupFormat: 2 });
    engines[4] = EncryptedSqliteEngine.open({ dir: join(dir, 'databases'), kms, registry });
    const dbPath = engines[4].databasePath('bench');
    const dbBytes = statSync(dbPath).size;
    console.log(`seeded a ${(dbBytes / 1024 ** 3).toFixed(2)} GiB encrypted database in ${secs(performance.now() - seeded)} s`);
    const shaNi = /\bsha_ni\b/.test(readFileSync('/proc/cpuinfo', 'utf8'));
    const masked = process.env.OPENSSL_ia32cap === MASK_SHA_NI;
    console.log(`CPU: ${availableParallelism()} cores, sha_ni ${shaNi ? 'present' : 'absent'}${masked ? ', masked from OpenSSL (OPENSSL_ia32cap)' : ''}`);

    // With the file in the page cache, as a backup finds it.
    execFileSync('cat', [dbPath], { stdio: ['ignore', 'ignore', 'inherit'], maxBuffer: 0 });
    const copy = join(dir, 'cp-copy.db');
    const cpRuns = await timed(opts.runs, () => void execFileSync('cp', [dbPath, copy]), () => rmSync(copy));
    const cpSyncRuns = await timed(opts.runs, () => void execFileSync('sh', ['-c', 'cp "$0" "$1" && sync "$1"', dbPath, copy]), () => rmSync(copy));

    const aesMs = cpuMsPerGiB(opts.runs, (chunk) => {
      const cipher = createCipheriv('aes-256-gcm', randomBytes(32), randomBytes(12));
      cipher.update(chunk);
      cipher.final();
    });
    const gcmOpenMs = cpuMsPerGiB(opts.runs, (chunk) => {
      const decipher = createDecipheriv('aes-256-gcm', randomBytes(32), randomBytes(12));
      decipher.update(chunk); // the tag is not set: the decryption's cost without its (tiny) check
    });
    const shaMs = cpuMsPerGiB(opts.runs, (chunk) => createHash('sha256').update(chunk).digest());

    const rows: string[] = [];
    const line = (what: string, runs: number[], bytes: number, note: string) =>
      rows.push(`${what.padEnd(34)} ${secs(Math.min(...runs)).padStart(6)} s  ${mibps(bytes, Math.min(...runs)).padStart(10)}  (${runs.map(secs).join(', ')}) ${note}`);
    line('cp', cpRuns, dbBytes, '');
    line('cp + sync', cpSyncRuns, dbBytes, 'the copy made durable');
    const restored: Record<number, { restore: number; authenticated: number; full: number }> = {};
    for (const format of [2, 4] as const) {
      const engine = engines[format];
      const backups: BackupImage[] = [];
      const backupRuns = await timed(
        opts.runs,
        async (run) => void backups.push(await engine.backup('bench', join(dir, 'backups', `f${format}-${run}.kob`))),
        (run) => (run < opts.runs - 1 ? rmSync(backups[run]!.path) : undefined),
      );
      const image = backups[backups.length - 1]!;
      line(`backup, format ${format}`, backupRuns, dbBytes, format === 2 ? 'encrypt + whole-file SHA-256 + fsync (before)' : 'encrypt + hash of the chunk tags + fsync (after)');
      // Each run restores to a fresh file, checks it both ways, and removes it: later runs find
      // the same free memory and disk as the first.
      execFileSync('mkdir', ['-p', join(dir, 'restored')]);
      const restoreRuns: number[] = [];
      const checks: Record<'authenticated' | 'full', number[]> = { authenticated: [], full: [] };
      for (let run = 0; run < opts.runs; run++) {
        const target = join(dir, 'restored', `f${format}-${run}.db`);
        let read: Awaited<ReturnType<EncryptedSqliteEngine['restoreFile']>> | undefined;
        restoreRuns.push(...(await timed(1, async () => void (read = await engine.restoreFile(image, target)))));
        for (const level of ['authenticated', 'full'] as const) {
          checks[level].push(
            ...(await timed(1, async () => {
              const check = await engine.checkRestored(target, read!.header, level, image.path);
              if (check.rows !== Math.ceil(opts.size / 1024 ** 2)) throw new Error(`the restored database has ${check.rows} rows`);
            })),
          );
        }
        rmSync(target);
      }
      line(`restore, format ${format}`, restoreRuns, dbBytes, 'decrypt + authenticate + integrity value + write + fsync');
      line(`  check: authenticated`, checks.authenticated, dbBytes, 'open with the DEK, count rows (the nightly test restore)');
      line(`  check: full`, checks.full, dbBytes, 'quick_check over every page, then the counts (drills, backup verify, restore)');
      restored[format] = { restore: Math.min(...restoreRuns), authenticated: Math.min(...checks.authenticated), full: Math.min(...checks.full) };
      rows.push(`  ratio: restore ${(Math.min(...backupRuns) / restored[format].restore).toFixed(2)}x the backup's speed; backup ${(Math.min(...backupRuns) / Math.min(...cpRuns)).toFixed(2)}x the time of cp`);
      rmSync(image.path);
    }
    console.log(`${opts.size >= 1024 ** 3 ? (opts.size / 1024 ** 3).toFixed(1) + ' GiB' : (opts.size / 1024 ** 2).toFixed(0) + ' MiB'} database, best of ${opts.runs} runs (every run in parentheses, s)`);
    for (const r of rows) console.log(r);
    console.log(`CPU per GiB, one core: AES-256-GCM seal ${secs(aesMs)} s, open ${secs(gcmOpenMs)} s, SHA-256 ${secs(shaMs)} s`);
    // What no backup of this design beats: the bytes copied once (cp), encrypted once and, before
    // format 4, hashed once, spread perfectly over the cores.
    const gib = dbBytes / 1024 ** 3;
    const cores = availableParallelism();
    const floorBefore = (Math.min(...cpRuns) + (aesMs + shaMs) * gib) / cores;
    const floorAfter = (Math.min(...cpRuns) + aesMs * gib) / cores;
    console.log(`backup floor: before ${secs(floorBefore)} s (cp + AES-256-GCM + SHA-256 over ${cores} cores), after ${secs(floorAfter)} s (cp + AES-256-GCM): ${(floorBefore / floorAfter).toFixed(2)}x lower`);
    console.log(`nightly test restore (restore + authenticated check), format 4: ${secs(restored[4]!.restore + restored[4]!.authenticated)} s; before (format 2, full check): ${secs(restored[2]!.restore + restored[2]!.full)} s`);
  } finally {
    for (const engine of Object.values(engines)) engine.close();
    registry.close();
    kms.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
