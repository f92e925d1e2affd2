/**
 * npm run bench:rewrap -- --wdeks 100000
 *
 * Rotates a root key and rewraps N WDEKs end to end (real dev server, real worker, local KMS
 * and SQLite registry), and prints its throughput next to the raw single-process AES-256-GCM
 * unwrap+rewrap rate measured in the same run, plus the history events each run used.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { DefaultLogger, Runtime, Worker, bundleWorkflowCode } from '@temporalio/worker';
import { createActivities } from '../activities';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { rotateRootKey } from '../workflows';
import { keyEntityWorkflowId, rewrapWorkflowId } from '../workflows/root-key-messages';
import { keyopsSearchAttributes } from '../workflows/search-attributes';

const ROOT = resolve(__dirname, '..');
const positive = (v: string) => {
  const n = Number(v.replace(/_/g, ''));
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive whole number');
  return n;
};

const opts = new Command('bench:rewrap')
  .option('--wdeks <n>', 'WDEKs registered under the key', positive, 100_000)
  .option('--chunk <n>', 'WDEKs per rewrap activity', positive, 50_000)
  .option('--batch <n>', 'WDEKs per registry transaction', positive, 500)
  .parse()
  .opts<{ wdeks: number; chunk: number; batch: number }>();

const rate = (n: number, ms: number) => Math.round((n / ms) * 1000);

/** The ceiling: decrypt a 32-byte DEK and encrypt it again with AES-256-GCM, nothing else. */
function rawRate(samples: number): number {
  const key = randomBytes(32);
  const wrapped = Array.from({ length: 1000 }, () => {
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', key, iv);
    return { iv, ct: Buffer.concat([c.update(randomBytes(32)), c.final()]), tag: c.getAuthTag() };
  });
  const started = performance.now();
  for (let i = 0; i < samples; i++) {
    const w = wrapped[i % wrapped.length]!;
    const d = createDecipheriv('aes-256-gcm', key, w.iv);
    d.setAuthTag(w.tag);
    const dek = Buffer.concat([d.update(w.ct), d.final()]);
    const c = createCipheriv('aes-256-gcm', key, randomBytes(12));
    Buffer.concat([c.update(dek), c.final()]);
    c.getAuthTag();
  }
  return rate(samples, performance.now() - started);
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'keyops-bench-'));
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const cli = execFileSync(join(ROOT, 'temporal-dev.sh'), ['cli-path'], { encoding: 'utf8' }).trim();
  const env = await TestWorkflowEnvironment.createLocal({
    server: { executable: { type: 'existing-path', path: cli }, searchAttributes: [...keyopsSearchAttributes] },
  });
  try {
    const kms = LocalKms.open({ path: join(dir, 'kms.sqlite'), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(dir, 'wdeks.sqlite'));
    const { keyId } = await kms.createKey({ name: 'bench' });
    let started = performance.now();
    const seedBatch = 10_000;
    for (let i = 0; i < opts.wdeks; i += seedBatch) {
      const records = [];
      for (let j = i; j < Math.min(opts.wdeks, i + seedBatch); j++) {
        const { wdek, keyVersion } = await kms.wrap(keyId);
        records.push({ id: `wdek-${String(j).padStart(8, '0')}`, keyId, keyVersion, wdek, owner: 'bench' });
      }
      registry.registerMany(records);
    }
    console.log(`seeded ${opts.wdeks} WDEKs in ${((performance.now() - started) / 1000).toFixed(1)} s`);

    const raw = rawRate(Math.min(opts.wdeks, 200_000));
    const bundle = await bundleWorkflowCode({ workflowsPath: require.resolve('../workflows'), logger: new DefaultLogger('WARN') });
    const taskQueue = 'bench-rewrap';
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowBundle: bundle,
      activities: createActivities({ dataDir: dir, keyopsVersion: 'bench', kms, registry }),
    });
    const workflowId = rewrapWorkflowId(keyId, 2);
    started = performance.now();
    const result = await worker.runUntil(async () => {
      const handle = await env.client.workflow.start(rotateRootKey, {
        taskQueue,
        workflowId,
        args: [{ keyId, targetVersion: 2, rotate: true, chunkSize: opts.chunk, batchSize: opts.batch }],
      });
      return handle.result();
    });
    const elapsed = performance.now() - started;

    // Walk the continue-as-new chain back from the last run, counting each run's events.
    const events: number[] = [];
    let runId: string | undefined = (await env.client.workflow.getHandle(workflowId).describe()).runId;
    while (runId) {
      const history = await env.client.workflow.getHandle(workflowId, runId).fetchHistory();
      events.unshift(history.events?.length ?? 0);
      runId = history.events?.[0]?.workflowExecutionStartedEventAttributes?.continuedExecutionRunId || undefined;
    }
    await env.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('benchmark finished');

    const e2e = rate(result.verified, elapsed);
    console.log(`WDEKs                 ${result.verified} rewrapped and verified, key rotated: ${result.rotated}`);
    console.log(`end to end            ${(elapsed / 1000).toFixed(1)} s, ${e2e} WDEKs/s (rotate + rewrap + verify + record)`);
    console.log(`raw AES-GCM           ${raw} unwrap+rewrap/s (one process, no I/O)`);
    console.log(`ratio                 ${((e2e / raw) * 100).toFixed(1)} % of raw`);
    console.log(`history events        ${events.join(', ')} per run (${events.length} run(s), max ${Math.max(...events)})`);
    registry.close();
    kms.close();
  } finally {
    await env.teardown();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
