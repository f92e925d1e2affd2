import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { AdaptiveConcurrency } from '../activities/kms/adaptive-concurrency';
import type { KeyManagementService } from '../activities/kms/key-management-service';
import { KmsError } from '../activities/kms/kms-error';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { rotateRootKey } from '../workflows';
import { keyEntityWorkflowId, rewrapProgressQuery, rewrapWorkflowId } from '../workflows/root-key-messages';
import { localActivities } from './helpers/local-activities';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';

/**
 * A rate limit in front of the real local KMS, shaped as Vault's rate-limit quota and Key Protect
 * answer (429 with Retry-After): at most `perSecond` batch calls in any one-second window, and
 * at most `inFlight` at once. Only the refusal is simulated; every call it lets through is real.
 */
function rateLimited(kms: KeyManagementService, perSecond: number, inFlight: number) {
  const starts: number[] = [];
  let active = 0;
  let refused = 0;
  let maxActive = 0;
  const gate = async <T>(call: () => Promise<T>): Promise<T> => {
    const now = Date.now();
    while (starts.length > 0 && starts[0]! <= now - 1000) starts.shift();
    if (starts.length >= perSecond || active >= inFlight) {
      refused++;
      throw new KmsError('KMS_THROTTLED', 'rate limit quota exceeded (429)', undefined, new Date(Math.max(now + 50, (starts[0] ?? now) + 1000)).toISOString());
    }
    starts.push(now);
    active++;
    maxActive = Math.max(maxActive, active);
    try {
      await delay(5); // a remote call takes time: concurrency matters
      return await call();
    } finally {
      active--;
    }
  };
  const limited = new Proxy(kms, {
    get(target, prop, receiver) {
      const value: unknown = Reflect.get(target, prop, receiver);
      if (prop !== 'rewrapBatch' && prop !== 'unwrapBatch') return value;
      return (...args: unknown[]) => gate(() => (value as (...a: unknown[]) => Promise<unknown>).apply(target, args));
    },
  });
  return { kms: limited, stats: () => ({ refused, maxActive }) };
}

describe('rewrap under KMS throttling', () => {
  const suite = useSuiteFixture('rewrap-throttling');

  it('AIMD: halves on a throttle, waits out Retry-After, grows back one call at a time, never fails a call', async () => {
    const window = new AdaptiveConcurrency({ initial: 8, max: 16, sleep: (ms) => delay(ms) });
    const limit = rateLimited({ rewrapBatch: () => Promise.resolve([]) } as unknown as KeyManagementService, 40, 4);
    const results = await Promise.all(Array.from({ length: 120 }, () => window.run(() => limit.kms.rewrapBatch('k', []))));
    assert.equal(results.length, 120, 'every call got through');
    const { refused, maxActive } = limit.stats();
    assert.ok(refused > 0 && window.stats.throttled === refused, `refused ${refused}, counted ${window.stats.throttled}`);
    assert.ok(maxActive <= 4, `never more than the KMS allows in flight at once (${maxActive})`);
    assert.ok(window.concurrency < 8, `adapted down from 8 to ${window.concurrency}`);
    assert.ok(window.stats.waitedMs > 0);
  });

  it('slow start: until the first throttle each success allows one more call; after it, one more per window of successes', async () => {
    const window = new AdaptiveConcurrency({ initial: 2, max: 16, sleep: (ms) => delay(ms) });
    let throttle = false;
    const call = () => window.run(() => (throttle ? ((throttle = false), Promise.reject(new KmsError('KMS_THROTTLED', 'rate limit quota exceeded (429)'))) : Promise.resolve()));
    for (let i = 0; i < 6; i++) await call();
    assert.equal(window.concurrency, 8, 'six successes took the window from 2 to 8');
    for (let i = 0; i < 20; i++) await call();
    assert.equal(window.concurrency, 16, 'and no further than its maximum');
    throttle = true;
    await call(); // refused, then retried after the pause: one success
    assert.equal(window.concurrency, 8, 'a throttle halves it');
    assert.equal(window.stats.throttled, 1);
    for (let i = 0; i < 6; i++) await call();
    assert.equal(window.concurrency, 8, 'seven successes are not yet a window of eight');
    await call();
    assert.equal(window.concurrency, 9, 'a window of successes allows one more call');
  });

  it('a rewrap of 3,000 WDEKs behind a rate limit completes with every WDEK verified, and its details show the throttling', async () => {
    const base = LocalKms.open({ path: join(suite.dir, 'kms.sqlite'), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'wdeks.sqlite'));
    const { keyId } = await base.createKey({ name: 'throttled' });
    const records = [];
    for (let i = 0; i < 3000; i++) {
      const { wdek, keyVersion } = await base.wrap(keyId);
      records.push({ id: `t-${String(i).padStart(5, '0')}`, keyId, keyVersion, wdek, owner: 'throttle-test' });
    }
    registry.registerMany(records);
    const limit = rateLimited(base, 25, 3);
    const taskQueue = uniqueTaskQueue('rewrap-throttling');
    const worker = await createTestWorker(suite.env, { taskQueue, activities: localActivities({ dataDir: suite.dir, kms: limit.kms, registry }).activities });
    await worker.runUntil(async () => {
      const handle = await suite.client.workflow.start(rotateRootKey, {
        taskQueue,
        workflowId: rewrapWorkflowId(keyId, 2),
        args: [{ keyId, targetVersion: 2, rotate: true, batchSize: 50, parallelism: 2 }],
      });
      // While it runs: the Web UI's current details name the throttling and the concurrency.
      const shown = await waitUntil('the details to show the throttling', async () => {
        const { currentDetails } = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
        return /KMS throttling: \d+ call\(s\) refused and retried, \d+ s waited; \d+ batch call\(s\) in flight/.test(currentDetails ?? '') ? currentDetails : undefined;
      });
      assert.match(shown ?? '', /^\*\*(rewrapping|verifying)\*\*/);
      const result = await handle.result();
      assert.deepEqual({ total: result.total, rewrapped: result.rewrapped, verified: result.verified }, { total: 3000, rewrapped: 3000, verified: 3000 });
      assert.ok((result.kms?.throttled ?? 0) > 0, 'the result records the throttling');
      assert.ok((await handle.query(rewrapProgressQuery)).kms);
      await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished');
    });
    assert.ok(limit.stats().refused > 0, 'the KMS really refused calls');
    assert.ok(limit.stats().maxActive <= 3);
    assert.deepEqual(registry.countBelowVersion(keyId, 2), { total: 3000, below: 0 }, 'no WDEK failed because of throttling');
    for (const r of registry.list(keyId, {}, 3001)) assert.equal((await base.unwrap(keyId, r.wdek)).keyVersion, 2);
  });
});
