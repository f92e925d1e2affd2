/**
 * npm run bench:rewrap-chunk -- [--wdeks 50000] [--rounds 3]
 *
 * Where a rewrap's client CPU goes, without Temporal: one `rewrapChunk` activity (run in
 * @temporalio/testing's MockActivityEnvironment, real SQLite registry, real Vault Transit adapter)
 * against a real OpenBao, next to the direct loop of bench:rewrap --kms openbao (the same
 * batch_input requests of 250, 16 at a time) on a fresh key of the same size, in the same process.
 * It prints each one's rate and the CPU seconds this process spent, and the time the chunk spent
 * in each registry call. On a machine where OpenBao shares the cores with the workers, the
 * difference in client CPU is what bounds keyops' ratio to the direct loop. The first round runs
 * on a cold JIT.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { MockActivityEnvironment } from '@temporalio/testing';
import { VaultTransitKms } from '../activities/kms/vault-transit-kms';
import { type ChunkInput, type ChunkResult, createRootKeyActivities } from '../activities/root-key-rotation';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import type { WdekRegistry } from '../activities/wdek-registry/wdek-registry';
import { startOpenBao, type OpenBao } from '../test/helpers/openbao';

const BATCH = 250;
const positive = (v: string) => {
  const n = Number(v.replace(/_/g, ''));
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive whole number');
  return n;
};
const opts = new Command('bench:rewrap-chunk')
  .option('--wdeks <n>', 'WDEKs per key (one chunk)', positive, 50_000)
  .option('--rounds <n>', 'rounds, each on fresh keys', positive, 3)
  .parse()
  .opts<{ wdeks: number; rounds: number }>();

const cpuSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

/** `count` v1 ciphertexts of a new transit key, which is then rotated to v2. */
async function seed(bao: OpenBao, name: string, count: number): Promise<Buffer[]> {
  await bao.api('POST', `transit/keys/${name}`, { type: 'aes256-gcm96' });
  const out: Buffer[] = [];
  for (let i = 0; i < count; i += BATCH) {
    const n = Math.min(BATCH, count - i);
    const r = await bao.api('POST', `transit/encrypt/${name}`, { batch_input: Array.from({ length: n }, () => ({ plaintext: randomBytes(32).toString('base64') })) });
    if (r.status !== 200) throw new Error(`seeding: ${r.status} ${JSON.stringify(r.body)}`);
    for (const x of (r.body as { data: { batch_results: { ciphertext: string }[] } }).data.batch_results) out.push(Buffer.from(x.ciphertext));
  }
  await bao.api('POST', `transit/keys/${name}/rotate`);
  return out;
}

/** The registry, with the time spent in each method counted. */
function timed(registry: WdekRegistry, spent: Map<string, number>): WdekRegistry {
  return new Proxy(registry, {
    get(target, prop, receiver) {
      const value: unknown = Reflect.get(target, prop, receiver);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        const started = performance.now();
        try {
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        } finally {
          spent.set(String(prop), (spent.get(String(prop)) ?? 0) + performance.now() - started);
        }
      };
    },
  });
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'keyops-bench-chunk-'));
  const bao = await startOpenBao({ dir: join(dir, 'bao') });
  const kms = VaultTransitKms.open({ address: bao.address, tokenFile: bao.tokenFile });
  const registry = SqliteWdekRegistry.open(join(dir, 'registry', 'wdeks.sqlite'));
  const spent = new Map<string, number>();
  const activities = createRootKeyActivities({ kms, registry: timed(registry, spent) });
  const n = opts.wdeks;
  try {
    for (let round = 1; round <= opts.rounds; round++) {
      const keyId = `chunk-${round}`;
      const directKey = `direct-${round}`;
      const wdeks = await seed(bao, keyId, n);
      registry.registerMany(wdeks.map((wdek, i) => ({ id: `${keyId}/${String(i).padStart(8, '0')}`, keyId, keyVersion: 1, wdek, owner: 'bench' })));
      const direct = await seed(bao, directKey, n);

      const parts: Buffer[][] = [];
      for (let i = 0; i < n; i += BATCH) parts.push(direct.slice(i, i + BATCH));
      let next = 0;
      let cpu = cpuSeconds();
      let started = performance.now();
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          for (let i = next++; i < parts.length; i = next++) {
            const r = await bao.api('POST', `transit/rewrap/${directKey}`, { batch_input: parts[i]!.map((w) => ({ ciphertext: w.toString() })) });
            if (r.status !== 200) throw new Error(`direct rewrap: ${r.status}`);
          }
        }),
      );
      const directRate = n / ((performance.now() - started) / 1000);
      const directCpu = cpuSeconds() - cpu;

      spent.clear();
      cpu = cpuSeconds();
      started = performance.now();
      const result: ChunkResult = await new MockActivityEnvironment().run((input: ChunkInput) => activities.rewrapChunk(input), { keyId, version: 2, afterId: undefined, maxItems: n, batchSize: 500 });
      const chunkRate = n / ((performance.now() - started) / 1000);
      const chunkCpu = cpuSeconds() - cpu;
      if (result.processed !== n || result.stale !== 0) throw new Error(`the chunk rewrapped ${result.processed} of ${n} (${String(result.stale)} left)`);
      const registryMs = [...spent].map(([name, ms]) => `${name} ${(ms / 1000).toFixed(2)}`).join(', ');
      console.log(`round ${round}: direct loop ${Math.round(directRate)} WDEKs/s, client CPU ${directCpu.toFixed(2)} s | rewrapChunk ${Math.round(chunkRate)} WDEKs/s, CPU ${chunkCpu.toFixed(2)} s (registry: ${registryMs} s) for ${n} WDEKs`);
    }
  } finally {
    kms.close();
    registry.close();
    await bao.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

void main();
