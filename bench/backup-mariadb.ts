/**
 * npm run bench:backup -- --engine mariadb --size 1GiB [--runs 3]
 *
 * A real MariaDB 10.11 (Debian's packages, a private server) with its tables encrypted by keys in
 * a real OpenBao, filled to the given size. In one run, best of `runs` each (every run shown):
 * plain `mariadb-backup --backup --stream=xbstream > file` (and the same followed by `sync`, since
 * keyops' backup ends with an fsync), then keyops' backup of the same server (the same stream,
 * encrypted on the fly into keyops' file format and fsynced), their ratio, and keyops' verify
 * (decrypt, mbstream -x, --prepare, a scratch server, CHECK TABLE and row counts) and restore.
 */
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream, mkdtempSync, rmSync, statSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { MariaDbEngine } from '../activities/engines/mariadb-engine';
import { LocalKms } from '../activities/kms/local-kms';
import { startMariaDbWithOpenBao } from '../test/helpers/mariadb';

const mibps = (bytes: number, ms: number) => `${((bytes / 1024 ** 2 / ms) * 1000).toFixed(0)} MiB/s`;

export async function benchMariaDbBackup(opts: { size: number; runs: number }): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'keyops-bench-mariadb-'));
  const stack = await startMariaDbWithOpenBao(dir, 1000);
  const { db, bao } = stack;
  const kms = LocalKms.open({ path: join(dir, 'kms.sqlite'), masterSecret: randomBytes(32) });
  const engine = new MariaDbEngine({ socket: db.socket, keyStore: stack.keys, serverConfig: db.config, vaultTokenFile: bao.tokenFile });
  try {
    const { keyId } = await kms.createKey({ name: 'bench-mariadb' });
    let started = performance.now();
    // Random bytes: the pages are encrypted on disk anyway, and nothing here compresses.
    await db.query('CREATE TABLE shop.blobs (id INT PRIMARY KEY, data LONGBLOB NOT NULL) ENGINE=InnoDB');
    const rows = Math.ceil(opts.size / 1024);
    for (let at = 0; at < rows; at += 100_000) {
      const n = Math.min(100_000, rows - at);
      await db.query(`INSERT INTO shop.blobs SELECT ${at} + seq, RANDOM_BYTES(1024) FROM shop.seq_1_to_${n}`);
    }
    const dataBytes = statSync(join(db.dataDir, 'shop', 'blobs.ibd')).size;
    console.log(`filled                ${(dataBytes / 1024 ** 3).toFixed(2)} GiB table (${rows} rows of 1 KiB) in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    const token = (await import('node:fs')).readFileSync(bao.tokenFile, 'utf8').trim();

    const plain = async (sync: boolean) => {
      const out = join(dir, 'plain.xb');
      const t0 = performance.now();
      const child = spawn('mariadb-backup', [`--defaults-file=${db.config}`, '--backup', '--stream=xbstream', `--target-dir=${join(dir, 'plain-tmp')}`, `--socket=${db.socket}`, '--user=root'], {
        env: { PATH: process.env.PATH, VAULT_TOKEN: token },
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      const exited = once(child, 'close');
      await pipeline(child.stdout, createWriteStream(out));
      const [code] = (await exited) as [number];
      if (code !== 0) throw new Error(`plain mariadb-backup exited ${code}`);
      if (sync) execFileSync('sync', [out]);
      const ms = performance.now() - t0;
      const bytes = statSync(out).size;
      rmSync(out);
      rmSync(join(dir, 'plain-tmp'), { recursive: true, force: true });
      return { ms, bytes };
    };
    const keyops = async (i: number) => {
      const path = join(dir, `keyops-${i}.kob`);
      const t0 = performance.now();
      const b = await engine.backup({ path, databaseId: 'shop', backupId: `backup/shop/bench-${i}`, night: '2026-12-07', kms, rootKeyId: keyId, workDir: dir });
      return { ms: performance.now() - t0, bytes: b.plainBytes, path, sha256: b.sha256 };
    };

    const plainRuns: { ms: number; bytes: number }[] = [];
    const syncedRuns: { ms: number; bytes: number }[] = [];
    const keyopsRuns: { ms: number; bytes: number; path: string; sha256: string }[] = [];
    // Interleaved, so that a noisy moment of the machine does not fall on one side only.
    for (let i = 0; i < opts.runs; i++) {
      plainRuns.push(await plain(false));
      syncedRuns.push(await plain(true));
      const k = await keyops(i);
      keyopsRuns.push(k);
      if (i > 0) rmSync(keyopsRuns[i - 1]!.path);
    }
    const best = <T extends { ms: number }>(runs: T[]) => runs.reduce((a, b) => (b.ms < a.ms ? b : a));
    const show = (runs: { ms: number; bytes: number }[]) => runs.map((r) => mibps(r.bytes, r.ms)).join(', ');
    const p = best(plainRuns);
    const s = best(syncedRuns);
    const k = best(keyopsRuns);
    console.log(`mariadb-backup > file ${mibps(p.bytes, p.ms)} best (${show(plainRuns)}), ${(p.bytes / 1024 ** 3).toFixed(2)} GiB stream in ${(p.ms / 1000).toFixed(1)} s`);
    console.log(`  … then sync          ${mibps(s.bytes, s.ms)} best (${show(syncedRuns)})`);
    console.log(`keyops backup         ${mibps(k.bytes, k.ms)} best (${show(keyopsRuns)}), encrypted and fsynced, in ${(k.ms / 1000).toFixed(1)} s`);
    console.log(`ratio                 keyops takes ${(k.ms / p.ms).toFixed(2)}x plain mariadb-backup > file, ${(k.ms / s.ms).toFixed(2)}x with its sync (target: at most 1.3x)`);

    const last = keyopsRuns.at(-1)!;
    started = performance.now();
    const verified = await engine.verifyBackup({ path: last.path, kms, targetDir: join(dir, 'verify'), expectedSha256: last.sha256 });
    const verifyMs = performance.now() - started;
    console.log(`verify                ${(verifyMs / 1000).toFixed(1)} s (${mibps(last.bytes, verifyMs)}): decrypt, mbstream -x, --prepare, scratch server, CHECK TABLE on ${verified.tables} tables, ${verified.rows} rows`);
    started = performance.now();
    const restored = await engine.verifyBackup({ path: last.path, kms, targetDir: join(dir, 'restored'), keep: true, expectedSha256: last.sha256 });
    const restoreMs = performance.now() - started;
    console.log(`restore               ${(restoreMs / 1000).toFixed(1)} s (${mibps(last.bytes, restoreMs)}) to a checked data directory, ${restored.rows} rows`);
  } finally {
    await engine.close();
    kms.close();
    await stack.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
