import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { KmsError } from '../activities/kms/kms-error';
import { VaultTransitKms } from '../activities/kms/vault-transit-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { rotateRootKey } from '../workflows';
import { keyEntityWorkflowId, rewrapWorkflowId } from '../workflows/root-key-messages';
import { localActivities } from './helpers/local-activities';
import { type OpenBao, startOpenBao } from './helpers/openbao';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';

const COUNT = 20_000;
const QUOTA_PER_SECOND = 10;

/**
 * Issue 14 §3 against the real thing: OpenBao with a rate-limit quota on transit/, and a rewrap
 * of 20,000 WDEKs that must adapt to it (429 with Retry-After) instead of failing WDEKs.
 */
describe('rewrap against a real OpenBao with a rate-limit quota', () => {
  const suite = useSuiteFixture('rewrap-openbao-quota');
  let bao: OpenBao;
  let kms: VaultTransitKms;
  before(async () => {
    bao = await startOpenBao({ dir: join(suite.dir, 'bao') });
    kms = VaultTransitKms.open({ address: bao.address, tokenFile: bao.tokenFile });
  });
  after(async () => {
    kms?.close();
    await bao?.stop();
  });

  it(`rewraps ${COUNT} WDEKs under a quota of ${QUOTA_PER_SECOND} requests/s: every WDEK verified, the throttling shown in the run's details`, async () => {
    const name = `quota-${randomUUID().slice(0, 8)}`;
    const { keyId } = await kms.createKey({ name });
    // Seeded with transit's own batch encrypt (250 per request), before the quota exists.
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'wdeks.sqlite'));
    const deks = new Map<string, Buffer>();
    for (let start = 0; start < COUNT; start += 250) {
      const part = Array.from({ length: Math.min(250, COUNT - start) }, (_, i) => ({ id: `q-${String(start + i).padStart(6, '0')}`, dek: randomBytes(32) }));
      const answer = await bao.api('POST', `transit/encrypt/${name}`, { batch_input: part.map((p) => ({ plaintext: p.dek.toString('base64') })) });
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      const results = (answer.body as { data: { batch_results: { ciphertext: string }[] } }).data.batch_results;
      registry.registerMany(part.map((p, i) => ({ id: p.id, keyId, keyVersion: 1, wdek: Buffer.from(results[i]!.ciphertext), owner: 'quota-test' })));
      for (const p of part) deks.set(p.id, p.dek);
    }
    const quota = `keyops-quota-${randomUUID().slice(0, 8)}`;
    assert.equal((await bao.api('POST', 'sys/quotas/config', { enable_rate_limit_response_headers: true })).status, 204);
    assert.equal((await bao.api('POST', `sys/quotas/rate-limit/${quota}`, { rate: QUOTA_PER_SECOND, interval: '1s', path: 'transit/' })).status, 204);

    const taskQueue = uniqueTaskQueue('openbao-quota');
    const worker = await createTestWorker(suite.env, { taskQueue, activities: localActivities({ dataDir: suite.dir, kms, registry }).activities });
    const started = Date.now();
    const result = await worker.runUntil(async () => {
      const handle = await suite.client.workflow.start(rotateRootKey, { taskQueue, workflowId: rewrapWorkflowId(keyId, 2), args: [{ keyId, targetVersion: 2, rotate: true }] });
      const details = await waitUntil(
        "the run's details to show the throttling",
        async () => {
          const { currentDetails } = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
          return /KMS throttling: \d+ call\(s\) refused and retried, \d+ s waited; \d+ batch call\(s\) in flight/.test(currentDetails ?? '') ? currentDetails : undefined;
        },
        300_000,
      );
      process.stdout.write(`# details while throttled: ${details?.split('\n').pop() ?? ''}\n`);
      const done = await handle.result();
      await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished');
      return done;
    });
    const seconds = (Date.now() - started) / 1000;
    // Each 500-WDEK batch call is two batch_input requests of 250, rewrap and verify alike.
    const requests = (2 * COUNT) / 250;
    process.stdout.write(`# ${COUNT} WDEKs rewrapped and verified in ${seconds.toFixed(1)} s: ${(requests / seconds).toFixed(1)} requests/s under a quota of ${QUOTA_PER_SECOND}/s; ${result.kms?.throttled ?? 0} throttled calls retried\n`);
    assert.deepEqual({ total: result.total, rewrapped: result.rewrapped, verified: result.verified }, { total: COUNT, rewrapped: COUNT, verified: COUNT });
    assert.ok((result.kms?.throttled ?? 0) > 0, 'OpenBao really throttled the rewrap');
    assert.deepEqual(registry.countBelowVersion(keyId, 2), { total: COUNT, below: 0 }, 'no WDEK failed because of throttling');

    await bao.api('DELETE', `sys/quotas/rate-limit/${quota}`);
    const listed = registry.list(keyId, {}, COUNT + 1);
    for (let i = 0; i < listed.length; i += 500) {
      const part = listed.slice(i, i + 500);
      const unwrapped = await kms.unwrapBatch(keyId, part.map((r) => r.wdek));
      part.forEach((r, j) => {
        const u = unwrapped[j]!;
        assert.ok(!(u instanceof KmsError) && u.keyVersion === 2 && u.dek.equals(deks.get(r.id)!), `${r.id} unwraps to its DEK under v2`);
      });
    }
    registry.close();
  });
});
