/**
 * npm run bench:rewrap -- --kms openbao --wdeks 100000 [--quota R] [--kms-own-cpu]
 *
 * keyops' rewrap against a real OpenBao (installed by scripts/install-openbao.sh, run as
 * `bao server -dev` on a free port), next to a direct loop measured in the same run: the same
 * `transit/rewrap` batch_input requests of 250 WDEKs to the same server from one process, without
 * Temporal, at its best concurrency. With --quota R a rate-limit quota of R requests/s is set on
 * transit/ for keyops' run, which must keep close to R and fail no WDEK.
 *
 * It also prints the CPU seconds OpenBao, each worker and everything else used in each run: on a
 * small machine they share the cores, and that is what bounds the ratio. --kms-own-cpu gives
 * OpenBao CPU 0 alone and everything else the other CPUs, so that keyops and the KMS do not
 * compete for CPU (as with a KMS on another host; on 2 cores OpenBao then has one core, not two).
 * Diagnostics: BENCH_TIMELINE=1 prints the measured run's history events with their times;
 * BENCH_WORKER_PROF=<dir> writes a CPU profile of each worker process there.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { temporal } from '@temporalio/proto';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { rotateRootKey } from '../workflows';
import { keyEntityWorkflowId, rewrapWorkflowId } from '../workflows/root-key-messages';
import { startOpenBao, type OpenBao } from '../test/helpers/openbao';

const ROOT = resolve(__dirname, '..');
const BATCH = 250;

export interface OpenBaoBenchOptions {
  wdeks: number;
  workers: number;
  quota: number | undefined;
  /** WDEKs of another key rewrapped first, unmeasured: long-running workers, as in production. */
  warmup: number;
  /** OpenBao alone on CPU 0; the caller has already moved itself (and so its children) off it. */
  kmsOwnCpu: boolean;
  waitForPollers: (taskQueue: string, count: number) => Promise<void>;
}

/** Pins every thread of a process to the given CPUs (util-linux taskset); its children inherit it. */
export function pinToCpus(pid: number, cpus: string): void {
  execFileSync('taskset', ['--all-tasks', '--pid', '--cpu-list', cpus, String(pid)], { stdio: 'ignore' });
}

/** CPU seconds a process has used (user + system), from /proc: where a run's cores went. */
function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    // Fields 14 and 15 (utime, stime) in clock ticks of 1/100 s; the name (field 2) may hold spaces.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

/** CPU seconds the whole machine was busy (all cores, everything but idle and iowait). */
function machineBusySeconds(): number {
  const [, ...ticks] = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = ticks;
  return (user! + nice! + system! + irq! + softirq! + steal!) / 100;
}

/** Samples CPU seconds of the given processes and of the machine, and reports the difference. */
function cpuMeter(pids: Record<string, number | undefined>): () => string {
  const start = Object.fromEntries(Object.entries(pids).map(([name, pid]) => [name, cpuSeconds(pid)]));
  const busy = machineBusySeconds();
  return () => {
    const used = Object.entries(pids).map(([name, pid]) => [name, cpuSeconds(pid) - start[name]!] as const);
    const total = machineBusySeconds() - busy;
    const named = used.reduce((sum, [, s]) => sum + s, 0);
    return `${used.map(([name, s]) => `${name} ${s.toFixed(2)}`).join(', ')}, everything else ${Math.max(0, total - named).toFixed(2)} (CPU s)`;
  };
}

/** Seeds `count` v1 ciphertexts of a new transit key with transit's own batch encrypt. */
async function seed(bao: OpenBao, name: string, count: number): Promise<{ id: string; wdek: Buffer }[]> {
  const created = await bao.api('POST', `transit/keys/${name}`, { type: 'aes256-gcm96' });
  if (created.status >= 300) throw new Error(`creating transit key ${name}: ${created.status} ${JSON.stringify(created.body)}`);
  const out: { id: string; wdek: Buffer }[] = [];
  const parts: number[] = [];
  for (let start = 0; start < count; start += BATCH) parts.push(start);
  // Eight requests at a time: seeding is not what is measured.
  for (let i = 0; i < parts.length; i += 8) {
    const answers = await Promise.all(
      parts.slice(i, i + 8).map(async (start) => {
        const n = Math.min(BATCH, count - start);
        const answer = await bao.api('POST', `transit/encrypt/${name}`, { batch_input: Array.from({ length: n }, () => ({ plaintext: randomBytes(32).toString('base64') })) });
        if (answer.status !== 200) throw new Error(`seeding: ${answer.status} ${JSON.stringify(answer.body)}`);
        return { start, results: (answer.body as { data: { batch_results: { ciphertext: string }[] } }).data.batch_results };
      }),
    );
    for (const { start, results } of answers) results.forEach((r, j) => out.push({ id: `${name}/${String(start + j).padStart(8, '0')}`, wdek: Buffer.from(r.ciphertext) }));
  }
  return out;
}

/** The direct loop: every ciphertext rewrapped in batch_input requests of 250, `concurrency` at a time. */
async function directRewrap(bao: OpenBao, name: string, wdeks: Buffer[], concurrency: number): Promise<number> {
  const parts: Buffer[][] = [];
  for (let i = 0; i < wdeks.length; i += BATCH) parts.push(wdeks.slice(i, i + BATCH));
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let i = next++; i < parts.length; i = next++) {
        const answer = await bao.api('POST', `transit/rewrap/${name}`, { batch_input: parts[i]!.map((w) => ({ ciphertext: w.toString() })) });
        if (answer.status !== 200) throw new Error(`direct rewrap: ${answer.status} ${JSON.stringify(answer.body)}`);
      }
    }),
  );
  return (wdeks.length / (performance.now() - started)) * 1000;
}

export async function benchOpenBao(env: TestWorkflowEnvironment, dir: string, opts: OpenBaoBenchOptions): Promise<void> {
  const bao = await startOpenBao({ dir: join(dir, 'bao') });
  if (opts.kmsOwnCpu) {
    pinToCpus(bao.pid, '0');
    console.log('CPUs                  OpenBao on CPU 0; this process, the dev server and the workers on the others');
  }
  try {
    // The direct loop first, on a key of its own, before any quota.
    const directKey = `direct-${randomUUID().slice(0, 8)}`;
    const directWdeks = (await seed(bao, directKey, opts.wdeks)).map((s) => s.wdek);
    await bao.api('POST', `transit/keys/${directKey}/rotate`);
    const rates: [number, number, string][] = [];
    for (const c of [1, 2, 4, 8, 16, 32]) {
      const cpu = cpuMeter({ openbao: bao.pid, 'bench process': process.pid });
      rates.push([c, await directRewrap(bao, directKey, directWdeks, c), cpu()]);
    }
    const [bestC, best, bestCpu] = rates.reduce((a, b) => (b[1] > a[1] ? b : a));
    console.log(`direct loop           ${rates.map(([c, r]) => `${c}: ${Math.round(r)}/s`).join(', ')} (WDEKs/s by concurrency)`);

    const name = `bench-${randomUUID().slice(0, 8)}`;
    let started = performance.now();
    const seeded = await seed(bao, name, opts.wdeks);
    const keyId = `bao:${name}`;
    const warmupName = `warmup-${randomUUID().slice(0, 8)}`;
    const warmupKeyId = `bao:${warmupName}`;
    const registry = SqliteWdekRegistry.open(join(dir, 'registry', 'wdeks.sqlite'));
    const register = (key: string, rows: { id: string; wdek: Buffer }[]) => {
      for (let i = 0; i < rows.length; i += 10_000) {
        registry.registerMany(rows.slice(i, i + 10_000).map((s) => ({ id: s.id, keyId: key, keyVersion: 1, wdek: s.wdek, owner: 'bench' })));
      }
    };
    register(keyId, seeded);
    if (opts.warmup > 0) register(warmupKeyId, await seed(bao, warmupName, opts.warmup));
    registry.close();
    console.log(`seeded                ${opts.wdeks} WDEKs in OpenBao in ${((performance.now() - started) / 1000).toFixed(1)} s`);

    const config = join(dir, 'keyops.yaml');
    writeFileSync(config, `kms:\n  default: bao\n  instances:\n    local: { type: local }\n    bao: { type: vault-transit, address: "${bao.address}", tokenFile: "${bao.tokenFile}" }\n`, { mode: 0o600 });
    const taskQueue = 'bench-rewrap-openbao';
    // The workers share the data directory, and with it the local KMS store and its secret.
    const localSecret = randomBytes(32).toString('base64');
    const workers = Array.from({ length: opts.workers }, () =>
      spawn(process.execPath, [...(process.env.BENCH_WORKER_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_WORKER_PROF}`] : []), '--import', 'tsx', join(ROOT, 'workers', 'main.ts')], {
        cwd: ROOT,
        env: {
          ...process.env,
          TEMPORAL_ADDRESS: env.address,
          KEYOPS_TASK_QUEUE: taskQueue,
          KEYOPS_DATA_DIR: dir,
          KEYOPS_CONFIG: config,
          KEYOPS_LOG_FORMAT: 'json',
          KEYOPS_LOG_LEVEL: 'warn',
          KEYOPS_METRICS_ADDRESS: 'off',
          KEYOPS_KMS_MASTER_SECRET: localSecret,
        },
        // Warnings and errors only (KEYOPS_LOG_LEVEL=warn): a worker that cannot start says why.
        stdio: ['ignore', 'inherit', 'inherit'],
      }),
    );
    try {
      await opts.waitForPollers(taskQueue, opts.workers);
      const rotate = (key: string) =>
        env.client.workflow.start(rotateRootKey, { taskQueue, workflowId: rewrapWorkflowId(key, 2), args: [{ keyId: key, targetVersion: 2, rotate: true, parallelism: opts.workers }] });
      if (opts.warmup > 0) {
        // Long-running workers, as in production: JIT-compiled rewrap path, connections open.
        // The direct loop gets the same: its lower concurrencies run before its best.
        started = performance.now();
        await (await rotate(warmupKeyId)).result();
        await env.client.workflow.getHandle(keyEntityWorkflowId(warmupKeyId)).terminate('benchmark warm-up finished');
        console.log(`warm-up               ${opts.warmup} WDEKs of another key in ${((performance.now() - started) / 1000).toFixed(1)} s (not measured)`);
      }
      if (opts.quota) {
        await bao.api('POST', 'sys/quotas/config', { enable_rate_limit_response_headers: true });
        await bao.api('POST', 'sys/quotas/rate-limit/bench', { rate: opts.quota, interval: '1s', path: 'transit/' });
      }
      started = performance.now();
      const cpu = cpuMeter({ openbao: bao.pid, ...Object.fromEntries(workers.map((w, i) => [`worker ${i + 1}`, w.pid])) });
      const handle = await rotate(keyId);
      const result = await handle.result();
      const elapsed = performance.now() - started;
      const keyopsCpu = cpu();
      // The rewrap phase alone, from the history: first rewrapChunk scheduled to the last completed.
      const events = (await env.client.workflow.getHandle(handle.workflowId).fetchHistory()).events ?? [];
      const at = (e: (typeof events)[number]) => Number(e.eventTime?.seconds ?? 0) * 1000 + Math.round((e.eventTime?.nanos ?? 0) / 1e6);
      const chunks = new Set(events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'rewrapChunk').map((e) => String(e.eventId)));
      const rewrapEvents = events.filter((e) => chunks.has(String(e.eventId)) || chunks.has(String(e.activityTaskCompletedEventAttributes?.scheduledEventId)));
      const rewrapMs = rewrapEvents.length ? at(rewrapEvents.at(-1)!) - at(rewrapEvents[0]!) : elapsed;
      if (process.env.BENCH_TIMELINE) {
        const t0 = at(events[0]!);
        for (const e of events) console.log(String(at(e) - t0).padStart(6), temporal.api.enums.v1.EventType[e.eventType ?? 0], e.activityTaskScheduledEventAttributes?.activityType?.name ?? '');
      }
      await env.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('benchmark finished');
      const rewrapRate = (result.rewrapped / rewrapMs) * 1000;
      console.log(`keyops                ${result.verified} WDEKs rotated, rewrapped and verified in ${(elapsed / 1000).toFixed(1)} s; rewrap phase ${(rewrapMs / 1000).toFixed(1)} s = ${Math.round(rewrapRate)} WDEKs/s`);
      console.log(`direct loop, best     ${Math.round(best)} WDEKs/s at concurrency ${bestC}`);
      console.log(`CPU, direct loop      ${bestCpu}, for ${opts.wdeks} rewraps`);
      console.log(`CPU, keyops           ${keyopsCpu}, for ${opts.wdeks} rotated, rewrapped and verified`);
      console.log(`ratio                 ${((rewrapRate / best) * 100).toFixed(1)} % of the direct loop (rewrap phase)`);
      if (opts.quota) {
        // Rewrap and verify each send one request per 250 WDEKs.
        const requests = (2 * result.verified) / BATCH;
        const sustained = (requests / elapsed) * 1000;
        console.log(`under quota           ${sustained.toFixed(1)} requests/s of ${opts.quota} (${((sustained / opts.quota) * 100).toFixed(1)} %), ${result.kms?.throttled ?? 0} throttled calls retried, ${result.verified - result.rewrapped === 0 ? 'no' : 'some'} WDEK failed`);
      }
    } finally {
      for (const w of workers) w.kill('SIGTERM');
      await Promise.all(workers.filter((w) => w.exitCode === null).map((w) => once(w, 'exit')));
    }
  } finally {
    await bao.stop();
  }
}
