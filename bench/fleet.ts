/**
 * npm run bench:fleet -- --databases 1000 --keys 50 --workers 3 [--rotate 10] [--cluster]
 *
 * A platform team's night: N small, real, encrypted databases under K root keys, their nightly
 * schedules declared in one file and applied (twice: the second apply must change nothing), every
 * schedule triggered at once as the night window opens, with R of the keys rotated in the KMS
 * just before, so that their databases' backups wait for the rewrap the watcher then starts.
 * Runs on the dev server, or with --cluster on ./temporal-cluster.sh's cluster on PostgreSQL.
 *
 * Prints: the time until every backup is catalogued and verified, p50/p99 per backup, the release
 * latency of each waiting backup after its key's rewrap-complete, KMS calls (the workers'
 * keyops_kms_calls), each worker's peak RSS, history events per run, and with --cluster the
 * growth of the cluster's PostgreSQL databases; and the CPU the night used, per backup, in the
 * workers and in the server, which bounds what 2 cores can do.
 *
 * Diagnostics: BENCH_TIMELINE=1 prints the slowest run's events; BENCH_SCHEDULER_TIMELINE=1 the
 * history of the schedule whose run started last; BENCH_SERVER_METRICS=PORT (dev server) the
 * server's persistence and scheduler-worker metrics; BENCH_WORKER_PROF=DIR CPU-profiles the workers;
 * BENCH_RELEASE_TIMELINE=1 the slowest release hop by hop; BENCH_WORKER_NODE_ARGS gives the workers Node flags (e.g. --max-old-space-size=256).
 */
import { spawn, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { freePort } from '../test/helpers/child-process';
import { backupScheduleId } from '../client/schedules/nightly-backup-schedule';
import { type Fleet, applySchedules, closedBackups, createFleet, listBackupRuns, pool, rotateInKms, startWatcher, triggerAll, writeScheduleFile } from '../test/helpers/fleet';
import { startCluster } from '../test/helpers/temporal-cluster';
import type { BackupProgress } from '../workflows/backup-messages';
import { keyEntityWorkflowId } from '../workflows/root-key-messages';
import { keyopsSearchAttributes } from '../workflows/search-attributes';

const ROOT = resolve(__dirname, '..');
const positive = (v: string) => {
  const n = Number(v.replace(/_/g, ''));
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive whole number');
  return n;
};
const opts = new Command('bench:fleet')
  .option('--databases <n>', 'databases, each with its nightly schedule', positive, 1000)
  .option('--keys <n>', 'root keys the databases are spread over', positive, 50)
  .option('--rotate <n>', 'keys rotated in the KMS just before the night (their backups wait for the rewrap)', (v) => (v === '0' ? 0 : positive(v)), 10)
  .option('--workers <n>', 'keyops worker processes', positive, 3)
  .option('--rows <n>', 'rows per database', positive, 100)
  .option('--cluster', "run on ./temporal-cluster.sh's cluster on PostgreSQL instead of the dev server")
  .parse()
  .opts<{ databases: number; keys: number; rotate: number; workers: number; rows: number; cluster?: boolean }>();
if (opts.rotate > opts.keys) {
  console.error(`bench:fleet: --rotate ${opts.rotate} is more than --keys ${opts.keys}`);
  process.exit(2);
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
const ms = (t: { seconds?: unknown; nanos?: number | null } | null | undefined) => Number(t?.seconds ?? 0) * 1000 + Math.round((t?.nanos ?? 0) / 1e6);

interface Server {
  address: string;
  client: Client;
  /** Bytes of the cluster's PostgreSQL databases (undefined on the dev server). */
  storageBytes(): number | undefined;
  stop(): Promise<void>;
}

async function devServer(dir: string): Promise<Server> {
  const cli = execFileSync(join(ROOT, 'temporal-dev.sh'), ['cli-path'], { encoding: 'utf8' }).trim();
  // As ./temporal-dev.sh runs it: state in a SQLite file, not in memory, and its tuning.
  const tuning = execFileSync(join(ROOT, 'temporal-dev.sh'), ['server-flags'], { encoding: 'utf8' }).trim().split('\n');
  const env = await TestWorkflowEnvironment.createLocal({
    server: { executable: { type: 'existing-path', path: cli }, searchAttributes: [...keyopsSearchAttributes], dbFilename: join(dir, 'temporal.sqlite'), extraArgs: [...tuning, ...(process.env.BENCH_SERVER_METRICS ? ['--metrics-port', process.env.BENCH_SERVER_METRICS] : [])] },
  });
  return { address: env.address, client: env.client, storageBytes: () => undefined, stop: () => env.teardown() };
}

async function clusterServer(dir: string): Promise<Server> {
  const dataDir = join(dir, 'cluster-data');
  const started = performance.now();
  const cluster = await startCluster(dataDir);
  console.log(`cluster up            ${seconds(performance.now() - started)}`);
  let pgBin: string;
  let password: string;
  try {
    pgBin = execFileSync(join(ROOT, 'scripts', 'install-postgresql.sh'), { encoding: 'utf8' }).trim().split('\n').pop()!.replace(/^bin=/, '');
    password = readFileSync(join(dataDir, 'cluster', 'postgres.password'), 'utf8').trim();
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  const pgPort = String(Number(cluster.env.KEYOPS_TEMPORAL_PORT) + 9);
  return {
    address: cluster.address,
    client: cluster.client,
    storageBytes: () =>
      Number(
        execFileSync(join(pgBin, 'psql'), ['-h', '127.0.0.1', '-p', pgPort, '-U', 'temporal', '-d', 'temporal', '-Atc', "SELECT sum(pg_database_size(datname)) FROM pg_database WHERE datname LIKE 'temporal%'"], {
          env: { ...process.env, PGPASSWORD: password },
          encoding: 'utf8',
        }).trim(),
      ),
    stop: () => cluster.stop(),
  };
}

/** A worker's peak resident set (VmHWM), in MB. */
function peakRssMb(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmHWM:'));
  return Math.round(Number(/(\d+)/.exec(line ?? '')?.[1] ?? 0) / 1024);
}

/** CPU seconds: of the whole machine (busy time of every core, from /proc/stat), and of one process. */
const TICKS_PER_SECOND = 100;
function machineCpuSeconds(): number {
  const [, ...fields] = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).map(Number);
  // user nice system idle iowait irq softirq steal: all but idle and iowait were busy.
  return fields.slice(0, 8).reduce((sum, v, i) => (i === 3 || i === 4 ? sum : sum + v), 0) / TICKS_PER_SECOND;
}
function processCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

async function kmsCalls(metricsPort: number): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  const calls = new Map<string, number>();
  for (const m of text.matchAll(/^keyops_kms_calls(?:_total)?\{[^}]*operation="(\w+)"[^}]*\} (\d+)/gm)) calls.set(m[1]!, (calls.get(m[1]!) ?? 0) + Number(m[2]));
  return calls;
}

async function main() {
  Runtime.install({ logger: new DefaultLogger('WARN') });
  execFileSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, stdio: 'inherit' });
  const dir = mkdtempSync(join(tmpdir(), 'keyops-fleet-'));
  const dataDir = join(dir, 'keyops');
  const server = opts.cluster ? await clusterServer(dir) : await devServer(dir);
  const { client } = server;
  const workers: { child: ReturnType<typeof spawn>; metricsPort: number }[] = [];
  let fleet: Fleet | undefined;
  try {
    // The fleet: real encrypted databases, their DEKs wrapped under K root keys of the local KMS.
    let started = performance.now();
    fleet = await createFleet({ dataDir, databases: opts.databases, keys: opts.keys, rows: opts.rows });
    const { databases, keyIds, keyOf } = fleet;
    console.log(`fleet                 ${opts.databases} databases (${opts.rows} rows each) under ${opts.keys} keys, created in ${seconds(performance.now() - started)}`);

    const taskQueue = 'fleet';
    for (let w = 0; w < opts.workers; w++) {
      const metricsPort = await freePort();
      // As production runs it: the compiled worker (npm run build), not TypeScript loaded on the fly.
      const prof = process.env.BENCH_WORKER_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_WORKER_PROF}`] : [];
      const child = spawn(process.execPath, [...prof, ...(process.env.BENCH_WORKER_NODE_ARGS?.split(/\s+/).filter(Boolean) ?? []), join(ROOT, 'dist', 'workers', 'main.js')], {
        cwd: ROOT,
        env: {
          ...process.env,
          ...fleet.workerEnv(server.address, taskQueue),
          KEYOPS_LOG_FORMAT: 'json',
          KEYOPS_LOG_LEVEL: 'warn',
          KEYOPS_METRICS_ADDRESS: `127.0.0.1:${metricsPort}`,
        },
        stdio: ['ignore', 'ignore', 'inherit'],
      });
      workers.push({ child, metricsPort });
    }
    for (let i = 0; ; i++) {
      const { pollers } = await client.workflowService.describeTaskQueue({ namespace: 'default', taskQueue: { name: taskQueue }, taskQueueType: temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY });
      if ((pollers?.length ?? 0) >= opts.workers) break;
      if (i > 600) throw new Error('the workers did not poll within 120 s');
      await new Promise((r) => setTimeout(r, 200));
    }

    // One schedule file for the fleet, applied twice: the second apply must change nothing.
    const file = join(dir, 'fleet-schedules.yaml');
    writeScheduleFile(file, databases);
    started = performance.now();
    const first = await applySchedules(file, server.address, taskQueue);
    const applyMs = performance.now() - started;
    started = performance.now();
    const again = await applySchedules(file, server.address, taskQueue);
    console.log(`schedules             ${opts.databases} applied from one file in ${seconds(applyMs)} (${first} created or updated); applied again in ${seconds(performance.now() - started)}: ${again} changed`);

    const storageBefore = server.storageBytes();
    // Just before the window: R keys rotated in the KMS, as a rotation policy would.
    const rotated = keyIds.slice(0, opts.rotate);
    await rotateInKms(fleet.kms, rotated);
    const waiting = new Set(databases.filter((d) => rotated.includes(keyOf.get(d)!)));

    const cpuBefore = { machine: machineCpuSeconds(), workers: workers.map((w) => processCpuSeconds(w.child.pid!)), bench: process.cpuUsage() };
    const t0 = Date.now();
    await triggerAll(client, databases);
    const triggeredMs = Date.now() - t0;
    // The hourly watcher's run, now: it finds the rotated keys and starts their rewraps.
    const watch = await (await startWatcher(client, taskQueue, `fleet-watch-${t0}`)).result();

    for (let i = 0; ; i++) {
      const closed = await closedBackups(client, taskQueue);
      if (closed >= opts.databases) break;
      if (i > 14_400) throw new Error(`only ${closed} of ${opts.databases} backups ended within an hour`);
      await new Promise((r) => setTimeout(r, 250));
    }
    // Read as soon as the night ends: what the report below costs is not the night's.
    const cpu = {
      machine: machineCpuSeconds() - cpuBefore.machine,
      workers: workers.reduce((sum, w, i) => sum + processCpuSeconds(w.child.pid!) - cpuBefore.workers[i]!, 0),
      bench: (({ user, system }) => (user + system) / 1e6)(process.cpuUsage(cpuBefore.bench)),
      available: ((Date.now() - t0) / 1000) * cpus().length,
    };
    const runs = await listBackupRuns(client, taskQueue);
    if (process.env.BENCH_TIMELINE) {
      // Diagnostics: the slowest run's events, with their times.
      const slowest = [...runs].sort((a, b) => b.close - b.start - (a.close - a.start))[0]!;
      const history = await client.workflow.getHandle(slowest.workflowId, slowest.runId).fetchHistory();
      const first = ms(history.events?.[0]?.eventTime);
      for (const e of history.events ?? []) console.log(String(ms(e.eventTime) - first).padStart(7), temporal.api.enums.v1.EventType[e.eventType ?? 0], e.activityTaskScheduledEventAttributes?.activityType?.name ?? '');
    }
    if (process.env.BENCH_SCHEDULER_TIMELINE) {
      // Diagnostics: the history of the schedule whose run started last (why did it start late?).
      const latest = [...runs].sort((a, b) => b.start - a.start)[0]!;
      const db = latest.workflowId.slice('backup/'.length).replace(/-\d{4}-.*$/, '');
      console.log('latest run', latest.workflowId, 'started', latest.start - t0);
      const history = await client.workflow.getHandle(`temporal-sys-scheduler:${backupScheduleId(db)}`).fetchHistory();
      for (const e of history.events ?? []) console.log(String(ms(e.eventTime) - t0).padStart(7), temporal.api.enums.v1.EventType[e.eventType ?? 0], e.markerRecordedEventAttributes?.markerName ?? '', e.activityTaskScheduledEventAttributes?.activityType?.name ?? '', e.workflowExecutionSignaledEventAttributes?.signalName ?? '');
    }
    const allDone = Math.max(...runs.map((r) => r.close)) - t0;
    const latencies = runs.map((r) => r.close - r.start).sort((a, b) => a - b);
    const failed = runs.filter((r) => r.status !== 'COMPLETED');

    // Release latency: from each key's "rewrap complete" (its announce activity) to the night's release.
    const announced = new Map<string, number>();
    for (const id of watch.started) {
      const history = await client.workflow.getHandle(id).fetchHistory();
      const scheduled = new Map<string, string>();
      for (const e of history.events ?? []) {
        const s = e.activityTaskScheduledEventAttributes;
        if (s) scheduled.set(String(e.eventId), s.activityType?.name ?? '');
        const c = e.activityTaskCompletedEventAttributes;
        if (c && scheduled.get(String(c.scheduledEventId)) === 'announceRewrapComplete') announced.set(id.split('/')[1]!, ms(e.eventTime));
      }
    }
    const releases: number[] = [];
    let released = 0;
    let slowestRelease: { workflowId: string; backupId: string; keyId: string; at: number; latency: number } | undefined;
    await pool(runs.filter((r) => r.status === 'COMPLETED'), 32, async (r) => {
      const result = (await client.workflow.getHandle(r.workflowId, r.runId).result()) as BackupProgress;
      if (result.releasedAt === undefined) return;
      released++;
      const keyId = keyOf.get(result.databaseId)!;
      const at = announced.get(keyId);
      if (at === undefined) return;
      const latency = result.releasedAt - at;
      releases.push(latency);
      if (!slowestRelease || latency > slowestRelease.latency) slowestRelease = { workflowId: r.workflowId, backupId: result.backupId, keyId, at, latency };
    });
    releases.sort((a, b) => a - b);
    if (process.env.BENCH_RELEASE_TIMELINE && slowestRelease) {
      // Diagnostics: the slowest release, hop by hop (key entity -> its await-rewrap child -> the backup run).
      const { at, latency } = slowestRelease;
      console.log(`slowest release ${slowestRelease.workflowId}: ${latency} ms after rewrap-complete`);
      const hops: [number, string][] = [];
      for (const [who, id] of [['entity', keyEntityWorkflowId(slowestRelease.keyId)], ['child', `${slowestRelease.backupId}/await-rewrap`], ['backup', slowestRelease.workflowId]] as const) {
        for (const e of (await client.workflow.getHandle(id).fetchHistory()).events ?? []) {
          const t = ms(e.eventTime) - at;
          if (t >= -50 && t <= latency + 50) hops.push([t, `${who.padEnd(7)} ${temporal.api.enums.v1.EventType[e.eventType ?? 0]}`]);
        }
      }
      for (const [t, what] of hops.sort((a, b) => a[0] - b[0])) console.log(String(t).padStart(7), what);
    }

    const calls = new Map<string, number>();
    for (const w of workers) for (const [op, n] of await kmsCalls(w.metricsPort)) calls.set(op, (calls.get(op) ?? 0) + n);
    const rss = workers.map((w) => peakRssMb(w.child.pid!));
    const events = runs.map((r) => r.events).sort((a, b) => a - b);
    const storageAfter = server.storageBytes();
    if (process.env.BENCH_SERVER_METRICS) {
      // Diagnostics: the dev server's persistence calls, and how its schedulers' worker fared.
      const text = await (await fetch(`http://127.0.0.1:${process.env.BENCH_SERVER_METRICS}/metrics`)).text();
      const agg = new Map<string, number>();
      for (const m of text.matchAll(/^(persistence_requests|persistence_latency_sum|visibility_persistence_requests|visibility_persistence_latency_sum)\{([^}]*)\} ([0-9.e+]+)/gm)) {
        const op = /operation="([^"]+)"/.exec(m[2]!)?.[1] ?? '?';
        const k = `${m[1]} ${op}`;
        agg.set(k, (agg.get(k) ?? 0) + Number(m[3]));
      }
      for (const [k, v] of [...agg].sort((a, b) => b[1] - a[1]).slice(0, 30)) console.log(k.padEnd(70), v.toFixed(2));
      for (const line of text.split('\n')) if (/per-ns|schedule_|scheduler|local_activity|sticky/.test(line) && /(_sum|_count|_total)\{|^temporal_[a-z_]+\{/.test(line) && !/_bucket/.test(line)) console.log(line.slice(0, 300));
    }

    console.log(`night                 ${opts.databases} schedules triggered in ${seconds(triggeredMs)}; ${rotated.length} keys rotated just before (${waiting.size} backups must wait), ${watch.started.length} rewraps started by the watcher`);
    const starts = runs.map((r) => r.start - t0).sort((a, b) => a - b);
    console.log(`all backups done      ${seconds(allDone)} after the first trigger (catalogued and verified)`);
    console.log(`runs started          by their schedules ${seconds(starts[0]!)} to ${seconds(starts.at(-1)!)} after the first trigger (p50 ${seconds(percentile(starts, 50))})`);
    console.log(`failed backups        ${failed.length}${failed.length ? ` (${failed.slice(0, 5).map((f) => `${f.workflowId} ${f.status}`).join(', ')})` : ''}`);
    console.log(`per backup            p50 ${seconds(percentile(latencies, 50))}, p99 ${seconds(percentile(latencies, 99))}, max ${seconds(latencies.at(-1)!)} (start to close)`);
    console.log(`waiting backups       ${released} of the ${waiting.size} under rotated keys waited (the rest started after their rewrap); released after rewrap-complete: p50 ${releases.length ? `${percentile(releases, 50)} ms` : '-'}, p99 ${releases.length ? `${percentile(releases, 99)} ms` : '-'}, max ${releases.length ? `${releases.at(-1)} ms` : '-'}`);
    console.log(`KMS calls             ${[...calls].map(([op, n]) => `${op} ${n}`).join(', ') || 'none counted'}`);
    const perBackup = (seconds: number) => `${Math.round((seconds * 1000) / opts.databases)} ms`;
    console.log(
      `CPU in the night      ${cpu.machine.toFixed(0)} core-s of the ${cpu.available.toFixed(0)} its ${cpus().length} cores had; per backup: keyops workers ${perBackup(cpu.workers)}, ${opts.cluster ? 'cluster and PostgreSQL' : 'dev server'} ${perBackup(cpu.machine - cpu.workers - cpu.bench)}, this benchmark ${perBackup(cpu.bench)}`,
    );
    console.log(`worker peak RSS       ${rss.map((r) => `${r} MB`).join(', ')}`);
    console.log(`history events        per backup run: p50 ${percentile(events, 50)}, max ${events.at(-1)}`);
    if (storageBefore !== undefined && storageAfter !== undefined) console.log(`PostgreSQL            ${(storageBefore / 2 ** 20).toFixed(1)} MB before the night, ${(storageAfter / 2 ** 20).toFixed(1)} MB after: +${((storageAfter - storageBefore) / 2 ** 20).toFixed(1)} MB`);
  } finally {
    fleet?.close();
    for (const w of workers) w.child.kill('SIGTERM');
    await Promise.all(workers.filter((w) => w.child.exitCode === null && w.child.signalCode === null).map((w) => once(w.child, 'exit')));
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
