/**
 * npm run bench:backup -- --size 1GiB
 * npm run bench:backup -- --engine mariadb --size 1GiB   (bench/backup-mariadb.ts)
 *
 * Fills an encrypted database (the embedded engine) to the given size, rotates its root key so
 * the nightly backup has to wait for the rewrap, and runs `nightlyBackup` on a real worker
 * process against a local dev server. Prints the backup's throughput next to a plain `cp` of
 * the same database file measured in the same run, their ratio, the whole night's time
 * (backup + test restore + catalogue), and the rewrap-announced-to-backup-started latency.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { parseSize } from './size-option';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { temporal } from '@temporalio/proto';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { EncryptedSqliteEngine } from '../activities/engines/encrypted-sqlite-engine';
import { benchMariaDbBackup } from './backup-mariadb';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { nightlyBackup, rotateRootKey } from '../workflows';
import { backupProgressQuery, backupWorkflowId } from '../workflows/backup-messages';
import { keyEntityWorkflowId, rewrapProgressQuery, rewrapWorkflowId } from '../workflows/root-key-messages';
import { keyopsSearchAttributes } from '../workflows/search-attributes';

const ROOT = resolve(__dirname, '..');

const opts = new Command('bench:backup')
  .option('--size <size>', 'database size (B, KB, MB, GB, KiB, MiB, GiB)', parseSize, 1024 ** 3)
  .option('--wdeks <n>', 'other WDEKs under the root key, so the rewrap takes a while', (v) => Number(v), 200_000)
  .option('--runs <n>', 'nights backed up, and copies made by cp; the best of each is compared', (v) => Number(v), 3)
  .option('--engine <engine>', 'embedded (the encrypted SQLite engine) or mariadb (a real MariaDB server)', (v) => {
    if (v !== 'embedded' && v !== 'mariadb') throw new InvalidArgumentError('expected embedded or mariadb');
    return v;
  }, 'embedded')
  .parse()
  .opts<{ size: number; wdeks: number; runs: number; engine: 'embedded' | 'mariadb' }>();

const mibps = (bytes: number, ms: number) => `${((bytes / 1024 ** 2 / ms) * 1000).toFixed(0)} MiB/s`;
const eventMs = (e: temporal.api.history.v1.IHistoryEvent) => Number(e.eventTime?.seconds ?? 0) * 1000 + Math.round((e.eventTime?.nanos ?? 0) / 1e6);

async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 2400; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting until ${what}`);
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'keyops-bench-backup-'));
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const cli = execFileSync(join(ROOT, 'temporal-dev.sh'), ['cli-path'], { encoding: 'utf8' }).trim();
  const env = await TestWorkflowEnvironment.createLocal({
    server: { executable: { type: 'existing-path', path: cli }, searchAttributes: [...keyopsSearchAttributes] },
  });
  const secret = randomBytes(32);
  const kms = LocalKms.open({ path: join(dir, 'kms', 'keys.sqlite'), masterSecret: secret });
  const registry = SqliteWdekRegistry.open(join(dir, 'registry', 'wdeks.sqlite'));
  const engine = EncryptedSqliteEngine.open({ dir: join(dir, 'databases'), kms, registry });
  try {
    const { keyId } = await kms.createKey({ name: 'bench-backup' });
    const started = performance.now();
    await engine.createDatabase('bench', keyId);
    const blob = 1024 ** 2;
    await engine.withDatabase('bench', (db) => {
      db.exec('CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)');
      const insert = db.prepare('INSERT INTO blobs (data) VALUES (?)');
      const rows = Math.ceil(opts.size / blob);
      for (let i = 0; i < rows; i += 64) {
        db.transaction(() => {
          for (let j = i; j < Math.min(rows, i + 64); j++) insert.run(randomBytes(blob));
        })();
      }
    });
    const dbPath = engine.databasePath('bench');
    const dbBytes = statSync(dbPath).size;
    const filler = [];
    for (let i = 0; i < opts.wdeks; i++) {
      const { wdek, keyVersion } = await kms.wrap(keyId);
      filler.push({ id: `app/${String(i).padStart(8, '0')}`, keyId, keyVersion, wdek, owner: 'bench' });
    }
    registry.registerMany(filler);
    registry.setRewrappedVersion(keyId, 1);
    console.log(`seeded a ${(dbBytes / 1024 ** 3).toFixed(2)} GiB encrypted database and ${opts.wdeks} other WDEKs in ${((performance.now() - started) / 1000).toFixed(1)} s`);

    // The baselines, with the file in the page cache as the backup will find it, and no
    // write-back of earlier work running underneath (each run starts after a sync).
    execFileSync('cat', [dbPath], { stdio: ['ignore', 'ignore', 'inherit'], maxBuffer: 0 });
    const copy = join(dir, 'cp-copy.db');
    const timed = (command: string) => {
      execFileSync('sync');
      const t = performance.now();
      execFileSync('sh', ['-c', command, dbPath, copy]);
      const ms = performance.now() - t;
      rmSync(copy);
      return ms;
    };
    const cpRuns = Array.from({ length: opts.runs }, () => timed('cp "$0" "$1"'));
    // The same, made durable as the backup is (it fsyncs before it is catalogued).
    const cpSyncRuns = Array.from({ length: opts.runs }, () => timed('cp "$0" "$1" && sync "$1"'));

    // What no implementation of this design can beat here: the bytes must pass through user
    // space once (a dd copy) and be encrypted once (since format 4 nothing hashes every byte).
    // Spread perfectly over the cores, that is the floor the backup is compared with.
    const ddRuns = Array.from({ length: opts.runs }, () => timed('dd if="$0" of="$1" bs=4M status=none'));
    const cpuMsPerGiB = (work: (chunk: Buffer) => void) => {
      const chunk = randomBytes(4 * 1024 ** 2);
      const rounds = Array.from({ length: opts.runs }, () => {
        const t = performance.now();
        for (let i = 0; i < 256; i++) work(chunk);
        return performance.now() - t;
      });
      return Math.min(...rounds);
    };
    const aesMs = cpuMsPerGiB((chunk) => {
      const cipher = createCipheriv('aes-256-gcm', randomBytes(32), randomBytes(12));
      cipher.update(chunk);
      cipher.final();
    });
    const shaMs = cpuMsPerGiB((chunk) => createHash('sha256').update(chunk).digest());

    const taskQueue = 'bench-backup';
    const worker = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'workers', 'main.ts')], {
      cwd: ROOT,
      env: {
        ...process.env,
        TEMPORAL_ADDRESS: env.address,
        KEYOPS_TASK_QUEUE: taskQueue,
        KEYOPS_DATA_DIR: dir,
        KEYOPS_LOG_FORMAT: 'json',
        KEYOPS_LOG_LEVEL: 'warn',
        KEYOPS_METRICS_ADDRESS: 'off',
        KEYOPS_KMS_MASTER_SECRET: secret.toString('base64'),
      },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    try {
      await until(async () => {
        const { pollers } = await env.connection.workflowService.describeTaskQueue({
          namespace: 'default',
          taskQueue: { name: taskQueue },
          taskQueueType: temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        });
        return (pollers?.length ?? 0) > 0;
      }, 'the worker polls');

      const rewrap = await env.client.workflow.start(rotateRootKey, {
        taskQueue,
        workflowId: rewrapWorkflowId(keyId, 2),
        args: [{ keyId, targetVersion: 2, rotate: true, parallelism: 1 }],
      });
      await until(async () => (await rewrap.query(rewrapProgressQuery)).phase === 'rewrapping', 'the rewrap runs');
      const activity = (events: temporal.api.history.v1.IHistoryEvent[], name: string) => {
        const scheduled = events.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === name);
        const id = String(scheduled?.eventId);
        return {
          started: events.find((e) => String(e.activityTaskStartedEventAttributes?.scheduledEventId) === id),
          completed: events.find((e) => String(e.activityTaskCompletedEventAttributes?.scheduledEventId) === id),
        };
      };
      const runNight = async (night: string) => {
        execFileSync('sync');
        const t = performance.now();
        const handle = await env.client.workflow.start(nightlyBackup, { taskQueue, workflowId: backupWorkflowId('bench', night), args: [{ databaseId: 'bench', night }] });
        const phase = await handle
          .query(backupProgressQuery)
          .then((p) => p.phase)
          .catch(() => 'unknown');
        const result = await handle.result();
        const nightMs = performance.now() - t;
        const events = (await handle.fetchHistory()).events ?? [];
        const backupRun = activity(events, 'backupDatabase');
        const verifyRun = activity(events, 'verifyBackupImage');
        if (!backupRun.started || !backupRun.completed || !verifyRun.started || !verifyRun.completed) throw new Error(`incomplete history of night ${night}`);
        return {
          result,
          phase,
          nightMs,
          backupStarted: backupRun.started,
          backupMs: eventMs(backupRun.completed) - eventMs(backupRun.started),
          verifyMs: eventMs(verifyRun.completed) - eventMs(verifyRun.started),
        };
      };
      // The first night starts while the rewrap runs, so it has to wait; the others follow it.
      const nights = [await runNight('2026-12-01')];
      await rewrap.result();
      for (let i = 1; i < opts.runs; i++) nights.push(await runNight(`2026-12-${String(i + 1).padStart(2, '0')}`));

      const announced = activity((await rewrap.fetchHistory()).events ?? [], 'announceRewrapComplete').completed;
      if (!announced) throw new Error('the rewrap history lacks announceRewrapComplete');
      const first = nights[0]!;
      const list = (runs: number[]) => runs.map((ms) => (ms / 1000).toFixed(2)).join(', ');
      const backupMs = Math.min(...nights.map((n) => n.backupMs));
      const verifyMs = Math.min(...nights.map((n) => n.verifyMs));
      const cpMs = Math.min(...cpRuns);
      const cpSyncMs = Math.min(...cpSyncRuns);

      console.log(`database              ${(dbBytes / 1024 ** 2).toFixed(0)} MiB, backup file ${((first.result.bytes ?? 0) / 1024 ** 2).toFixed(0)} MiB (key version ${first.result.keyVersion})`);
      console.log(`                      best of ${opts.runs} runs each (every run in parentheses, s)`);
      console.log(`cp                    ${(cpMs / 1000).toFixed(2)} s, ${mibps(dbBytes, cpMs)} (${list(cpRuns)})`);
      console.log(`keyops backup         ${(backupMs / 1000).toFixed(2)} s, ${mibps(dbBytes, backupMs)} (${list(nights.map((n) => n.backupMs))}; encrypt + hash of the chunk tags + fsync, the backupDatabase activity)`);
      console.log(`cp + sync             ${(cpSyncMs / 1000).toFixed(2)} s, ${mibps(dbBytes, cpSyncMs)} (${list(cpSyncRuns)}; the copy made durable, as a backup is)`);
      console.log(`ratio                 ${(backupMs / cpMs).toFixed(2)}x the time of cp, ${(backupMs / cpSyncMs).toFixed(2)}x the time of cp + sync`);
      const gib = dbBytes / 1024 ** 3;
      const floorMs = (Math.min(...ddRuns) + aesMs * gib) / availableParallelism();
      console.log(`floor                 ${(floorMs / 1000).toFixed(2)} s = ${(floorMs / cpMs).toFixed(2)}x cp: (dd copy ${(Math.min(...ddRuns) / 1000).toFixed(2)} s + AES-256-GCM ${((aesMs * gib) / 1000).toFixed(2)} s of CPU) / ${availableParallelism()} cores, with perfect overlap; before format 4 also SHA-256, ${((shaMs * gib) / 1000).toFixed(2)} s`);
      console.log(`test restore          ${(verifyMs / 1000).toFixed(2)} s, ${mibps(dbBytes, verifyMs)} (${list(nights.map((n) => n.verifyMs))}; decrypt + authenticate + open + count rows: the nightly, authenticated check)`);
      console.log(`first night           ${(first.nightMs / 1000).toFixed(2)} s (${first.phase === 'awaiting-rewrap' ? 'waited for the rewrap, ' : ''}backup, verify, catalogue)`);
      console.log(`rewrap -> backup      ${eventMs(first.backupStarted) - eventMs(announced)} ms from "rewrap complete" to the backup starting`);
      await env.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('benchmark finished');
    } finally {
      worker.kill('SIGTERM');
      if (worker.exitCode === null) await once(worker, 'exit');
    }
  } finally {
    engine.close();
    registry.close();
    kms.close();
    await env.teardown();
    rmSync(dir, { recursive: true, force: true });
  }
}

(opts.engine === 'mariadb' ? benchMariaDbBackup(opts) : main()).catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
