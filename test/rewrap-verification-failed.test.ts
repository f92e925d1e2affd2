import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { WorkflowNotFoundError } from '@temporalio/client';
import type { KeyManagementService, RewrapResult } from '../activities/kms/key-management-service';
import { KmsError } from '../activities/kms/kms-error';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import type { WdekRegistry } from '../activities/wdek-registry/wdek-registry';
import { rotateRootKey } from '../workflows';
import { keyEntityWorkflowId, rewrapProgressQuery, rewrapWorkflowId } from '../workflows/root-key-messages';
import { OutcomeAttribute, PhaseAttribute } from '../workflows/search-attributes';
import { localActivities } from './helpers/local-activities';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { failsWith } from './helpers/workflow-failures';

const MASTER_SECRET = randomBytes(32);
const COUNT = 40;
const VICTIM = 'db/verify/dek-000017';

/** A key with COUNT WDEKs on version 1, recorded as rewrapped to 1, and the DEKs they hold. */
async function seed(dir: string) {
  const kms = LocalKms.open({ path: join(dir, 'kms.sqlite'), masterSecret: MASTER_SECRET });
  const registry = SqliteWdekRegistry.open(join(dir, 'wdeks.sqlite'));
  const { keyId } = await kms.createKey({ name: 'verify-key' });
  const deks = new Map<string, Buffer>();
  const records = [];
  for (let i = 0; i < COUNT; i++) {
    const id = `db/verify/dek-${String(i).padStart(6, '0')}`;
    const { wdek, dek, keyVersion } = await kms.wrap(keyId);
    deks.set(id, dek);
    records.push({ id, keyId, keyVersion, wdek, owner: 'verify-test' });
  }
  registry.registerMany(records);
  registry.setRewrappedVersion(keyId, 1);
  return { kms, registry, keyId, deks, original: records.find((r) => r.id === VICTIM)! };
}

/** The KMS, except that its answer for the victim's WDEK in a rewrap batch is replaced by `answer(result, the WDEK sent)`. */
function rewrapAnswerFor(kms: KeyManagementService, victimWdek: Buffer, answer: (result: RewrapResult, sent: Buffer) => RewrapResult): KeyManagementService {
  return new Proxy(kms, {
    get(target, prop, receiver) {
      if (prop !== 'rewrapBatch') return Reflect.get(target, prop, receiver) as unknown;
      return async (keyId: string, wdeks: readonly Buffer[]) => {
        const results = await target.rewrapBatch(keyId, wdeks);
        return results.map((r, i) => (r instanceof KmsError || !wdeks[i]!.equals(victimWdek) ? r : answer(r, wdeks[i]!)));
      };
    },
  });
}

describe('rotateRootKey verification finds a WDEK that is not on the new version or does not unwrap: REWRAP_VERIFICATION_FAILED', () => {
  const suite = useSuiteFixture('rewrap-verification');

  /**
   * Rotates to version 2 and rewraps on a worker with `kms` and `registry`; asserts the run failed
   * in verification, non-retryably, naming the victim alone, and that nothing recorded or announced v2.
   */
  const assertVerificationFails = async (s: Awaited<ReturnType<typeof seed>>, label: string, kms: KeyManagementService, registry: WdekRegistry = s.registry) => {
    const taskQueue = uniqueTaskQueue(label);
    const worker = await createTestWorker(suite.env, { taskQueue, activities: localActivities({ dataDir: join(suite.dir, label), kms, registry }).activities });
    const workflowId = rewrapWorkflowId(s.keyId, 2);
    await worker.runUntil(async () => {
      const handle = await suite.client.workflow.start(rotateRootKey, {
        taskQueue,
        workflowId,
        args: [{ keyId: s.keyId, targetVersion: 2, rotate: true, chunkSize: 10, batchSize: 5 }],
      });
      const failure = await failsWith(handle.result(), 'REWRAP_VERIFICATION_FAILED', 'a rewrap whose verification finds a bad WDEK');
      assert.equal(failure.nonRetryable, true);
      assert.equal(failure.message, `1 WDEK(s) of key ${s.keyId} are not on version 2 or do not unwrap: ${VICTIM}`);
      const description = await handle.describe();
      assert.equal(description.status.name, 'FAILED');
      assert.equal(description.typedSearchAttributes.get(OutcomeAttribute), 'failed');
      assert.equal(description.typedSearchAttributes.get(PhaseAttribute), 'verifying', 'it failed in verification, after rewrapping');
      const progress = await handle.query(rewrapProgressQuery);
      assert.deepEqual({ phase: progress.phase, rotated: progress.rotated, total: progress.total }, { phase: 'verifying', rotated: true, total: COUNT });
      const steps = ((await handle.fetchHistory()).events ?? []).flatMap((e) => e.activityTaskScheduledEventAttributes?.activityType?.name ?? []);
      assert.ok(steps.includes('verifyChunk'), steps.join(', '));
      assert.ok(!steps.includes('recordRewrappedVersion') && !steps.includes('announceRewrapComplete'), `nothing recorded or announced: ${steps.join(', ')}`);
    });
    assert.equal(s.registry.getRewrappedVersion(s.keyId), 1, 'the registry still records version 1 as the rewrapped version');
    await assert.rejects(suite.client.workflow.getHandle(keyEntityWorkflowId(s.keyId)).describe(), WorkflowNotFoundError, 'no key entity heard "rewrap complete"');
    assert.deepEqual((await s.kms.getKeyMetadata(s.keyId)).versions.map((v) => v.version), [1, 2], 'rotated once');
    // Every other WDEK did move, and unwraps to its own DEK under version 2.
    for (const r of s.registry.list(s.keyId, {}, COUNT)) {
      if (r.id === VICTIM) continue;
      const { dek, keyVersion } = await s.kms.unwrap(s.keyId, r.wdek);
      assert.deepEqual([r.keyVersion, keyVersion, dek.equals(s.deks.get(r.id)!)], [2, 2, true], r.id);
    }
  };

  it('a rewrapped WDEK damaged on its way back from the KMS does not unwrap', async () => {
    const s = await seed(join(suite.dir, 'damaged'));
    const kms = rewrapAnswerFor(s.kms, s.original.wdek, (r) => {
      const damaged = Buffer.from(r.wdek);
      damaged[damaged.length - 1]! ^= 0x01;
      return { ...r, wdek: damaged };
    });
    await assertVerificationFails(s, 'damaged', kms);
    const victim = s.registry.get(VICTIM)!;
    assert.equal(victim.keyVersion, 2, 'the rewrap recorded the damaged WDEK as version 2');
    await assert.rejects(s.kms.unwrap(s.keyId, victim.wdek), (err: unknown) => err instanceof KmsError && err.code === 'CIPHERTEXT_INVALID');
  });

  it('a KMS that returns the old ciphertext as rewrapped: the WDEK unwraps, but under version 1', async () => {
    const s = await seed(join(suite.dir, 'stale-answer'));
    const kms = rewrapAnswerFor(s.kms, s.original.wdek, (r, sent) => ({ ...r, wdek: Buffer.from(sent) }));
    await assertVerificationFails(s, 'stale-answer', kms);
    const victim = s.registry.get(VICTIM)!;
    assert.equal(victim.keyVersion, 2, 'recorded as version 2');
    assert.equal((await s.kms.unwrap(s.keyId, victim.wdek)).keyVersion, 1, 'but really wrapped under version 1');
  });

  it('an owner puts its old WDEK back (version 1) between the rewrap and the verification', async () => {
    const s = await seed(join(suite.dir, 'put-back'));
    // The registry as the worker uses it; its first verification read comes after every rewrap
    // chunk finished (verification starts only then). Right before it, the owner of the victim
    // registers its WDEK again from a copy taken before the rotation, as a restored database does.
    let putBack = false;
    let movedBefore: number | undefined;
    const registry = new Proxy(s.registry, {
      get(target, prop, receiver) {
        if (prop !== 'list') return Reflect.get(target, prop, receiver) as unknown;
        return (...args: Parameters<WdekRegistry['list']>) => {
          if (!putBack) {
            putBack = true;
            movedBefore = target.get(VICTIM)?.keyVersion;
            target.register(s.original);
          }
          return target.list(...args);
        };
      },
    });
    await assertVerificationFails(s, 'put-back', s.kms, registry);
    assert.ok(putBack);
    assert.equal(movedBefore, 2, 'the rewrap had moved the victim before the owner put its old WDEK back');
    const victim = s.registry.get(VICTIM)!;
    assert.deepEqual([victim.keyVersion, victim.wdek.equals(s.original.wdek)], [1, true], 'the owner\'s WDEK was left as it put it');
    assert.deepEqual(s.registry.countBelowVersion(s.keyId, 2), { total: COUNT, below: 1 });
  });
});
