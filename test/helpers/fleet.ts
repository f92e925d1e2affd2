/**
 * A platform team's night at fleet scale, as both the benchmark (bench/fleet.ts) and the fault
 * test (test/fleet/fleet-faults.test.ts) build it: N small, real, encrypted SQLite databases
 * under K root keys of the local KMS, their nightly schedules in one file applied through the
 * CLI, R keys rotated in the KMS just before the window, every schedule triggered at once, and
 * the watcher's run that finds the rotated keys and starts their rewraps.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { EncryptedSqliteEngine } from '../../activities/engines/encrypted-sqlite-engine';
import { LocalKms } from '../../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../../activities/wdek-registry/sqlite-wdek-registry';
import { backupScheduleId } from '../../client/schedules/nightly-backup-schedule';
import { watchRootKeys } from '../../workflows';
import { ROOT, runToEnd } from './child-process';

/** Runs `fn` over `items`, `width` at a time. */
export async function pool<T>(items: readonly T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

export interface Fleet {
  /** The workers' KEYOPS_DATA_DIR: KMS, registry, databases (and, once they run, catalog and backups). */
  readonly dataDir: string;
  /** The same KMS and registry the workers open: to rotate keys and to read versions back. */
  readonly kms: LocalKms;
  readonly registry: SqliteWdekRegistry;
  readonly keyIds: string[];
  readonly databases: string[];
  readonly keyOf: ReadonlyMap<string, string>;
  /** What a keyops worker of this fleet needs in its environment (logging and metrics aside), the KMS's master secret included. */
  workerEnv(address: string, taskQueue: string): NodeJS.ProcessEnv;
  close(): void;
}

/**
 * The fleet's databases, each with a table of `rows` rows, spread round-robin over `keys` new
 * root keys (database i under key i mod K), written under `dataDir` as a worker would.
 */
export async function createFleet(options: { dataDir: string; databases: number; keys: number; rows: number }): Promise<Fleet> {
  const { dataDir } = options;
  const secret = randomBytes(32);
  const kms = LocalKms.open({ path: join(dataDir, 'kms', 'keys.sqlite'), masterSecret: secret });
  const registry = SqliteWdekRegistry.open(join(dataDir, 'registry', 'wdeks.sqlite'));
  const engine = EncryptedSqliteEngine.open({ dir: join(dataDir, 'databases'), kms, registry });
  try {
    const keyIds: string[] = [];
    for (let k = 0; k < options.keys; k++) keyIds.push((await kms.createKey({ name: `fleet-key-${String(k).padStart(3, '0')}` })).keyId);
    const databases = Array.from({ length: options.databases }, (_, i) => `fleet-${String(i).padStart(5, '0')}`);
    const keyOf = new Map(databases.map((d, i) => [d, keyIds[i % options.keys]!]));
    for (const databaseId of databases) {
      await engine.createDatabase(databaseId, keyOf.get(databaseId)!);
      await engine.withDatabase(databaseId, (db) => {
        db.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, amount_cents INTEGER NOT NULL)');
        const insert = db.prepare('INSERT INTO orders (customer, amount_cents) VALUES (?, ?)');
        db.transaction(() => {
          for (let r = 0; r < options.rows; r++) insert.run(`customer-${r}`, r * 100);
        })();
      });
    }
    return {
      dataDir,
      kms,
      registry,
      keyIds,
      databases,
      keyOf,
      workerEnv: (address, taskQueue) => ({ TEMPORAL_ADDRESS: address, KEYOPS_TASK_QUEUE: taskQueue, KEYOPS_DATA_DIR: dataDir, KEYOPS_KMS_MASTER_SECRET: secret.toString('base64') }),
      close: () => {
        registry.close();
        kms.close();
      },
    };
  } catch (err) {
    registry.close();
    kms.close();
    throw err;
  } finally {
    // The workers own the databases from here on.
    engine.close();
  }
}

/** One schedule file for the whole fleet, with 30 minutes of jitter spreading the nights over the window. */
export function writeScheduleFile(path: string, databases: readonly string[]): void {
  // The night window is put 12 hours from now: a run that began at 01:59 UTC saw 30 of its
  // schedules fire on their own at 02:00, on top of the triggered night.
  const at = `${String((new Date().getUTCHours() + 12) % 24).padStart(2, '0')}:00`;
  writeFileSync(path, ['timeZone: UTC', 'backups:', ...databases.map((d) => `  - { database: ${d}, at: "${at}", jitter: 30m }`), ''].join('\n'));
}

/** `keyops schedule apply -f FILE` as an operator runs it; returns how many schedules it created or updated. */
export async function applySchedules(file: string, address: string, taskQueue: string): Promise<number> {
  const args = ['--import', 'tsx', join(ROOT, 'client', 'main.ts'), 'schedule', 'apply', '-f', file, '--task-queue', taskQueue, '--json'];
  // A thousand schedules on a busy cluster take tens of seconds: far more than a usual command.
  const r = await runToEnd(process.execPath, args, { env: { TEMPORAL_ADDRESS: address }, timeoutMs: 10 * 60_000 });
  if (r.code !== 0) throw new Error(`keyops schedule apply exited ${r.code ?? r.signal}: ${r.stderr}`);
  return (r.stdout.match(/"change": "(created|updated)"/g) ?? []).length;
}

/** Rotates each key in the KMS only, as a rotation policy would: keyops learns of it from the watcher. */
export async function rotateInKms(kms: LocalKms, keyIds: readonly string[]): Promise<void> {
  for (const keyId of keyIds) await kms.rotateKey(keyId, `fleet-${keyId}`);
}

/** Every database's schedule triggered at once, as the night window opens. */
export async function triggerAll(client: Client, databases: readonly string[]): Promise<void> {
  await pool(databases, 32, async (d) => {
    await client.schedule.getHandle(backupScheduleId(d)).trigger();
  });
}

/** The hourly watcher's run, now: it finds the keys rotated behind keyops' back and starts their rewraps. */
export function startWatcher(client: Client, taskQueue: string, workflowId: string): Promise<WorkflowHandle<typeof watchRootKeys>> {
  return client.workflow.start(watchRootKeys, { taskQueue, workflowId });
}

/** The visibility query for the night's backup runs (every run, whoever started it). */
export const backupRunsQuery = (taskQueue: string): string => `WorkflowType = 'nightlyBackup' AND TaskQueue = '${taskQueue}'`;

/** How many of the night's backup runs have closed, however they ended. */
export async function closedBackups(client: Client, taskQueue: string): Promise<number> {
  return (await client.workflow.count(`${backupRunsQuery(taskQueue)} AND ExecutionStatus != 'Running'`)).count;
}

export interface BackupRun {
  workflowId: string;
  runId: string;
  start: number;
  close: number;
  status: string;
  events: number;
}

/** Every backup run of the night, from visibility (all runs, each listed once). */
export async function listBackupRuns(client: Client, taskQueue: string): Promise<BackupRun[]> {
  const runs: BackupRun[] = [];
  for await (const w of client.workflow.list({ query: backupRunsQuery(taskQueue) })) {
    runs.push({ workflowId: w.workflowId, runId: w.runId, start: w.startTime.getTime(), close: w.closeTime?.getTime() ?? NaN, status: w.status.name, events: w.historyLength });
  }
  return runs;
}
