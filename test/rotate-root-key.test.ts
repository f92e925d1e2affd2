import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { localActivities } from './helpers/local-activities';
import type { KeyManagementService } from '../activities/kms/key-management-service';
import { KmsError } from '../activities/kms/kms-error';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { rotateRootKey, watchRootKeys } from '../workflows';
import { keyEntityWorkflowId, keyStateQuery, rewrapProgressQuery, rewrapWorkflowId } from '../workflows/root-key-messages';
import { KeyIdAttribute, KeyVersionAttribute, OutcomeAttribute, PhaseAttribute } from '../workflows/search-attributes';
import { recordHistory } from './helpers/record-history';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

const MASTER_SECRET = randomBytes(32);

/** A key, a registry of `count` WDEKs under it, and the DEKs they must keep unwrapping to. */
async function seed(dir: string, count: number, options: { faultRate?: number; now?: () => Date } = {}) {
  const kms = LocalKms.open({ path: join(dir, 'kms.sqlite'), masterSecret: MASTER_SECRET, ...options });
  const registry = SqliteWdekRegistry.open(join(dir, 'wdeks.sqlite'));
  const setupKms = LocalKms.open({ path: join(dir, 'kms.sqlite'), masterSecret: MASTER_SECRET, ...(options.now ? { now: options.now } : {}) });
  const { keyId } = await setupKms.createKey({ name: 'test-root-key' });
  const deks = new Map<string, Buffer>();
  const records = [];
  for (let i = 0; i < count; i++) {
    const id = `db/test/dek-${String(i).padStart(6, '0')}`;
    const { wdek, dek, keyVersion } = await setupKms.wrap(keyId);
    deks.set(id, dek);
    records.push({ id, keyId, keyVersion, wdek, owner: 'test' });
  }
  registry.registerMany(records);
  return { kms, setupKms, registry, keyId, deks, originals: new Map(records.map((r) => [r.id, r.wdek])) };
}

/** Every WDEK recorded on `version` and unwrapping to its original DEK; old copies too. */
async function assertAllOn(s: Awaited<ReturnType<typeof seed>>, version: number) {
  const records = s.registry.list(s.keyId, {}, 1_000_000);
  assert.equal(records.length, s.deks.size);
  for (const r of records) {
    assert.equal(r.keyVersion, version, `${r.id} recorded on v${r.keyVersion}`);
    const fresh = await s.setupKms.unwrap(s.keyId, r.wdek);
    assert.equal(fresh.keyVersion, version);
    assert.ok(fresh.dek.equals(s.deks.get(r.id)!), `${r.id} unwraps to its DEK`);
    const old = await s.setupKms.unwrap(s.keyId, s.originals.get(r.id)!);
    assert.ok(old.dek.equals(s.deks.get(r.id)!), `old copy of ${r.id} still unwraps`);
  }
}

describe('rotateRootKey and watchRootKeys on a real worker, KMS files and registry', () => {
  const suite = useSuiteFixture('rotate-root-key');
  /** A worker on its own task queue with the seeded KMS (or a wrapper of it) and registry. */
  const workerFor = async (s: Awaited<ReturnType<typeof seed>>, label: string, kms: KeyManagementService = s.kms) => {
    const taskQueue = uniqueTaskQueue(label);
    const worker = await createTestWorker(suite.env, {
      taskQueue,
      activities: localActivities({ dataDir: suite.dir, kms, registry: s.registry }).activities,
    });
    return { taskQueue, worker };
  };

  it('rotates once, rewraps every WDEK through continue-as-new, verifies, records and announces', async () => {
    const s = await seed(join(suite.dir, 'a'), 240);
    const { taskQueue, worker } = await workerFor(s, 'rotate');
    const workflowId = rewrapWorkflowId(s.keyId, 2);
    await worker.runUntil(async () => {
      const handle = await suite.client.workflow.start(rotateRootKey, {
        taskQueue,
        workflowId,
        // Small chunks and a tiny history budget force several continue-as-new runs.
        args: [{ keyId: s.keyId, targetVersion: 2, rotate: true, chunkSize: 50, batchSize: 20, maxHistoryEvents: 20 }],
      });
      const result = await handle.result();
      assert.deepEqual(
        { phase: result.phase, total: result.total, rewrapped: result.rewrapped, verified: result.verified, rotated: result.rotated },
        { phase: 'done', total: 240, rewrapped: 240, verified: 240, rotated: true },
      );
      const description = await handle.describe();
      assert.notEqual(description.runId, handle.firstExecutionRunId, 'continued as new at least once');
      assert.equal(description.typedSearchAttributes.get(PhaseAttribute), 'done');
      assert.equal(description.typedSearchAttributes.get(KeyIdAttribute), s.keyId);
      assert.equal(description.typedSearchAttributes.get(KeyVersionAttribute), 2);
      assert.equal(description.typedSearchAttributes.get(OutcomeAttribute), 'succeeded');
      assert.equal((await handle.query(rewrapProgressQuery)).phase, 'done');

      const entity = suite.client.workflow.getHandle(keyEntityWorkflowId(s.keyId));
      assert.equal((await entity.query(keyStateQuery)).rewrappedVersion, 2, 'the key entity heard "rewrap complete"');

      // The same request again (a retry of the whole run) must not rotate a second time.
      const again = await suite.client.workflow.execute(rotateRootKey, {
        taskQueue,
        workflowId,
        args: [{ keyId: s.keyId, targetVersion: 2, rotate: true }],
      });
      assert.equal(again.rotated, false);
      if (process.env.KEYOPS_RECORD_HISTORIES) await recordHistory(workflowId, 'rotate-root-key-checked-input.json');
      await entity.terminate('test finished');
    });
    assert.equal((await s.setupKms.getKeyMetadata(s.keyId)).versions.length, 2, 'rotated exactly once');
    assert.equal(s.registry.getRewrappedVersion(s.keyId), 2);
    await assertAllOn(s, 2);
  });

  it('completes with every WDEK correct while the KMS fails at random', async () => {
    const s = await seed(join(suite.dir, 'b'), 400, { faultRate: 0.1 });
    // Count the injected failures as they pass (the KMS itself is the real local adapter).
    let injected = 0;
    const countingKms = new Proxy(s.kms, {
      get(target, prop, receiver) {
        const value: unknown = Reflect.get(target, prop, receiver);
        if (typeof value !== 'function') return value;
        return async (...args: unknown[]) => {
          try {
            return await (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
          } catch (err) {
            if (err instanceof KmsError && err.code === 'KMS_UNAVAILABLE') injected++;
            throw err;
          }
        };
      },
    });
    const { taskQueue, worker } = await workerFor(s, 'rotate-faults', countingKms);
    const workflowId = rewrapWorkflowId(s.keyId, 2);
    const result = await worker.runUntil(
      // Faults strike whole batch calls: batches of 2 make ~400 calls, ~40 of them failing.
      suite.client.workflow.execute(rotateRootKey, { taskQueue, workflowId, args: [{ keyId: s.keyId, targetVersion: 2, rotate: true, batchSize: 2 }] }),
    );
    assert.equal(result.verified, 400);
    // Chunks retried after exhausting their in-activity retries resume from a heartbeat that may
    // be behind; the count shown must still be exact.
    assert.deepEqual({ total: result.total, rewrapped: result.rewrapped }, { total: 400, rewrapped: 400 });
    assert.ok(injected >= 20, `only ${injected} KMS failures were injected`);
    assert.equal((await s.setupKms.getKeyMetadata(s.keyId)).versions.length, 2);
    await assertAllOn(s, 2);
    await suite.client.workflow.getHandle(keyEntityWorkflowId(s.keyId)).terminate('test finished');
  });

  it('fails fast with a typed, non-retryable error for a disabled key or a rotation within the hour', async () => {
    const s = await seed(join(suite.dir, 'd'), 5);
    const { keyId: disabledKey } = await s.setupKms.createKey({ name: 'disabled' });
    await s.setupKms.disableKey(disabledKey);
    await s.setupKms.rotateKey(s.keyId, 'outside-keyops');
    const { taskQueue, worker } = await workerFor(s, 'rotate-refused');
    const failureType = async (keyId: string, targetVersion: number) => {
      const err = await suite.client.workflow
        .execute(rotateRootKey, { taskQueue, workflowId: rewrapWorkflowId(keyId, targetVersion), args: [{ keyId, targetVersion, rotate: true }] })
        .then(() => undefined, (e: unknown) => e);
      assert.ok(err instanceof WorkflowFailedError, 'the run failed instead of hanging in retries');
      let cause: unknown = err;
      while (cause instanceof Error && !(cause instanceof ApplicationFailure)) cause = cause.cause;
      assert.ok(cause instanceof ApplicationFailure);
      assert.equal(cause.nonRetryable, true);
      return cause.type;
    };
    await worker.runUntil(async () => {
      assert.equal(await failureType(disabledKey, 2), 'KEY_DISABLED');
      assert.equal(await failureType(s.keyId, 3), 'KEY_ROTATION_NOT_PERMITTED');
    });
  });

  it('rotates exactly once when the KMS rotated but the activity failed before it could report', async () => {
    const s = await seed(join(suite.dir, 'e'), 20);
    let rotations = 0;
    let failedAfterRotating = false;
    // The real KMS rotates; then the "network" drops the answer once (as a worker crash would).
    const flakyAnswer = new Proxy(s.kms, {
      get(target, prop, receiver) {
        if (prop !== 'rotateKey') return Reflect.get(target, prop, receiver) as unknown;
        return async (keyId: string, requestId: string) => {
          const result = await target.rotateKey(keyId, requestId);
          if (result.rotated) rotations++;
          if (!failedAfterRotating) {
            failedAfterRotating = true;
            // Not a KmsError: the activity's own short retries must not absorb it; the attempt fails.
            throw new Error('worker lost the answer after the rotate request was sent');
          }
          return result;
        };
      },
    });
    const { taskQueue, worker } = await workerFor(s, 'rotate-once', flakyAnswer);
    const result = await worker.runUntil(
      suite.client.workflow.execute(rotateRootKey, { taskQueue, workflowId: rewrapWorkflowId(s.keyId, 2), args: [{ keyId: s.keyId, targetVersion: 2, rotate: true }] }),
    );
    assert.ok(failedAfterRotating);
    assert.equal(rotations, 1);
    // The first attempt really failed (it is in the history), and the retry that found the key
    // already rotated still reports the rotation as this run's.
    const history = (await suite.client.workflow.getHandle(rewrapWorkflowId(s.keyId, 2)).fetchHistory()).events ?? [];
    const failedAttempts = history.filter((e) => e.activityTaskStartedEventAttributes && e.activityTaskStartedEventAttributes.attempt === 2);
    assert.ok(failedAttempts.length >= 1, 'rotateToVersion ran a second attempt');
    assert.match(JSON.stringify(history.map((e) => e.activityTaskStartedEventAttributes?.lastFailure?.message)), /worker lost the answer after the rotate request was sent/);
    assert.equal(result.rotated, true, 'this run rotated the key, though its first attempt could not report it');
    assert.equal(result.verified, 20);
    assert.deepEqual((await s.setupKms.getKeyMetadata(s.keyId)).versions.map((v) => v.version), [1, 2]);
    await assertAllOn(s, 2);
    await suite.client.workflow.getHandle(keyEntityWorkflowId(s.keyId)).terminate('test finished');
  });

  it('stops on a tampered WDEK with a non-retryable error naming it, and leaves the rest readable', async () => {
    const s = await seed(join(suite.dir, 'f'), 30);
    const victim = s.registry.get('db/test/dek-000017')!;
    const tampered = Buffer.from(victim.wdek);
    tampered[tampered.length - 1]! ^= 0x01;
    s.registry.register({ ...victim, wdek: tampered });
    const { taskQueue, worker } = await workerFor(s, 'rotate-tampered');
    const err = await worker.runUntil(
      suite.client.workflow
        .execute(rotateRootKey, { taskQueue, workflowId: rewrapWorkflowId(s.keyId, 2), args: [{ keyId: s.keyId, targetVersion: 2, rotate: true, parallelism: 1 }] })
        .then(() => undefined, (e: unknown) => e),
    );
    assert.ok(err instanceof WorkflowFailedError);
    let cause: unknown = err;
    while (cause instanceof Error && !(cause instanceof ApplicationFailure)) cause = cause.cause;
    assert.ok(cause instanceof ApplicationFailure && cause.type === 'CIPHERTEXT_INVALID', String(cause));
    assert.match(cause.message, /WDEK db\/test\/dek-000017 of key/);
    const failedRun = await suite.client.workflow.getHandle(rewrapWorkflowId(s.keyId, 2)).describe();
    assert.equal(failedRun.typedSearchAttributes.get(OutcomeAttribute), 'failed');
    assert.equal(s.registry.getRewrappedVersion(s.keyId), undefined, 'a failed rewrap records nothing');
    for (const r of s.registry.list(s.keyId, {}, 100)) {
      if (r.id === victim.id) continue;
      assert.ok((await s.setupKms.unwrap(s.keyId, r.wdek)).dek.equals(s.deks.get(r.id)!));
    }
  });

  it('a rewrap to version 2 that finds the key already at 3 completes: every WDEK is on 2 or later', async () => {
    let now = new Date('2026-03-01T00:00:00Z');
    const s = await seed(join(suite.dir, 'g'), 40, { now: () => now });
    await s.setupKms.rotateKey(s.keyId, 'outside-1');
    now = new Date(now.getTime() + 2 * 3600_000);
    await s.setupKms.rotateKey(s.keyId, 'outside-2');
    const { taskQueue, worker } = await workerFor(s, 'rotate-late');
    const result = await worker.runUntil(
      suite.client.workflow.execute(rotateRootKey, { taskQueue, workflowId: rewrapWorkflowId(s.keyId, 2), args: [{ keyId: s.keyId, targetVersion: 2, rotate: false }] }),
    );
    assert.equal(result.verified, 40);
    assert.equal((await s.setupKms.getKeyMetadata(s.keyId)).versions.length, 3, 'no rotation by keyops');
    await assertAllOn(s, 3);
    await suite.client.workflow.getHandle(keyEntityWorkflowId(s.keyId)).terminate('test finished');
  });

  it('refuses a nonsensical input before doing anything', async () => {
    const s = await seed(join(suite.dir, 'h'), 1);
    const { taskQueue, worker } = await workerFor(s, 'rotate-input');
    const err = await worker.runUntil(
      suite.client.workflow
        .execute(rotateRootKey, { taskQueue, workflowId: rewrapWorkflowId(s.keyId, 2), args: [{ keyId: s.keyId, targetVersion: 2, rotate: true, chunkSize: 0 }] })
        .then(() => undefined, (e: unknown) => e),
    );
    assert.ok(err instanceof WorkflowFailedError && err.cause instanceof ApplicationFailure);
    assert.equal(err.cause.type, 'INVALID_INPUT');
    assert.match(err.cause.message, /rotateRootKey input chunkSize: must be a positive whole number/);
    assert.equal((await s.setupKms.getKeyMetadata(s.keyId)).versions.length, 1);
  });

  it('watchRootKeys detects a policy rotation done by the KMS and rewraps without rotating again', async () => {
    let now = new Date('2026-01-01T00:00:00Z');
    const s = await seed(join(suite.dir, 'c'), 60, { now: () => now });
    s.registry.setRewrappedVersion(s.keyId, 1);
    await s.setupKms.setRotationPolicy(s.keyId, { intervalMonths: 1 });
    const { taskQueue, worker } = await workerFor(s, 'watch');
    await worker.runUntil(async () => {
      const quiet = await suite.client.workflow.execute(watchRootKeys, { taskQueue, workflowId: `watch/${taskQueue}/0` });
      assert.deepEqual(quiet.started, [], 'nothing to do before the policy fires');

      now = new Date(now.getTime() + 31 * 24 * 3600_000); // past 30 days + the 24-hour window
      const watchId = `watch/${taskQueue}/1`;
      const found = await suite.client.workflow.execute(watchRootKeys, { taskQueue, workflowId: watchId });
      const rewrapId = rewrapWorkflowId(s.keyId, 2);
      assert.deepEqual(found.started, [rewrapId]);
      const rewrap = await suite.client.workflow.getHandle<typeof rotateRootKey>(rewrapId).result();
      assert.equal(rewrap.rotated, false);
      assert.equal(rewrap.verified, 60);

      const after = await suite.client.workflow.execute(watchRootKeys, { taskQueue, workflowId: `watch/${taskQueue}/2` });
      assert.deepEqual(after.started, [], 'a rewrapped key is left alone');
      if (process.env.KEYOPS_RECORD_HISTORIES) await recordHistory(watchId, 'watch-root-keys.json');
      await suite.client.workflow.getHandle(keyEntityWorkflowId(s.keyId)).terminate('test finished');
    });
    assert.equal((await s.setupKms.getKeyMetadata(s.keyId)).versions.length, 2, 'the policy rotated once; keyops did not');
    await assertAllOn(s, 2);
  });
});
