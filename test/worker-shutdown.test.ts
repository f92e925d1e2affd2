import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { temporal } from '@temporalio/proto';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { rotateRootKey } from '../workflows';
import { keyEntityWorkflowId, rewrapWorkflowId } from '../workflows/root-key-messages';
import { freePort } from './helpers/child-process';
import { testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';
import { WorkerProcess } from './helpers/worker-process';

const COUNT = 40_000;

/** Each rewrapChunk attempt the run finished: how it ended, on which attempt. */
interface ChunkAttempt {
  outcome: 'completed' | 'failed';
  attempt: number;
  failure?: string;
}

function chunkAttempts(events: temporal.api.history.v1.IHistoryEvent[]): ChunkAttempt[] {
  const chunks = new Set(events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'rewrapChunk').map((e) => String(e.eventId)));
  const attempts = new Map(events.flatMap((e) => (e.activityTaskStartedEventAttributes ? [[String(e.eventId), e.activityTaskStartedEventAttributes.attempt ?? 1]] : [])));
  return events.flatMap((e): ChunkAttempt[] => {
    const done = e.activityTaskCompletedEventAttributes ?? e.activityTaskFailedEventAttributes;
    if (!done || !chunks.has(String(done.scheduledEventId))) return [];
    const attempt = attempts.get(String(done.startedEventId)) ?? 0;
    return e.activityTaskCompletedEventAttributes
      ? [{ outcome: 'completed', attempt }]
      : [{ outcome: 'failed', attempt, failure: e.activityTaskFailedEventAttributes?.failure?.applicationFailureInfo?.type ?? undefined }];
  });
}

/**
 * SIGTERM while a worker process runs a rewrap chunk, as a deploy or `systemctl stop` sends it:
 * within the grace time the chunk finishes; past it, the chunk stops at a batch boundary and
 * another worker resumes it at once. Either way every WDEK ends on the new version, once.
 */
describe('worker shutdown with a rewrap chunk in flight', () => {
  const suite = useSuiteFixture('worker-shutdown');

  const seed = async (label: string) => {
    const dataDir = join(suite.dir, label);
    const secret = randomBytes(32);
    const kms = LocalKms.open({ path: join(dataDir, 'kms', 'keys.sqlite'), masterSecret: secret });
    const registry = SqliteWdekRegistry.open(join(dataDir, 'registry', 'wdeks.sqlite'));
    const { keyId } = await kms.createKey({ name: label });
    const deks = new Map<string, Buffer>();
    const records = [];
    for (let i = 0; i < COUNT; i++) {
      const id = `wdek-${String(i).padStart(6, '0')}`;
      const { wdek, dek, keyVersion } = await kms.wrap(keyId);
      deks.set(id, dek);
      records.push({ id, keyId, keyVersion, wdek, owner: label });
    }
    registry.registerMany(records);
    const taskQueue = uniqueTaskQueue(label);
    const worker = async (graceSeconds: number) =>
      new WorkerProcess({
        TEMPORAL_ADDRESS: testServerAddress(),
        KEYOPS_TASK_QUEUE: taskQueue,
        KEYOPS_DATA_DIR: dataDir,
        KEYOPS_LOG_FORMAT: 'json',
        KEYOPS_METRICS_ADDRESS: `127.0.0.1:${await freePort()}`,
        KEYOPS_KMS_MASTER_SECRET: secret.toString('base64'),
        KEYOPS_SHUTDOWN_GRACE_SECONDS: String(graceSeconds),
      });
    return { kms, registry, keyId, deks, taskQueue, worker };
  };

  /** Starts the rewrap on `first` and sends SIGTERM once its one chunk has moved WDEKs but is far from done. */
  const terminateMidChunk = async (s: Awaited<ReturnType<typeof seed>>, first: WorkerProcess) => {
    await first.waitFor('worker started');
    const handle = await suite.client.workflow.start(rotateRootKey, {
      taskQueue: s.taskQueue,
      workflowId: rewrapWorkflowId(s.keyId, 2),
      args: [{ keyId: s.keyId, targetVersion: 2, rotate: true, parallelism: 1, chunkSize: COUNT, batchSize: 100 }],
    });
    await waitUntil('the chunk to move its first WDEKs', () => ((s.registry.countByVersion(s.keyId).get(2) ?? 0) > 0 ? true : undefined), 120_000);
    first.child.kill('SIGTERM');
    const movedAtSigterm = s.registry.countByVersion(s.keyId).get(2) ?? 0;
    assert.ok(movedAtSigterm < COUNT, 'the chunk was still in flight when SIGTERM arrived; raise COUNT');
    const [code] = (await once(first.child, 'exit')) as [number | null];
    assert.equal(code, 0, `the worker drains and exits 0: ${first.stderr}`);
    assert.ok(first.lines.some((l) => l.msg === 'worker stopped'));
    return handle;
  };

  /** Finishes the run on a new worker; every WDEK on version 2 and still its DEK; rotated once. */
  const finishOnNewWorker = async (s: Awaited<ReturnType<typeof seed>>, handle: Awaited<ReturnType<typeof terminateMidChunk>>) => {
    const second = await s.worker(30);
    try {
      const result = await handle.result();
      assert.deepEqual({ total: result.total, rewrapped: result.rewrapped, verified: result.verified }, { total: COUNT, rewrapped: COUNT, verified: COUNT });
    } finally {
      second.child.kill('SIGTERM');
      await once(second.child, 'exit');
    }
    assert.deepEqual((await s.kms.getKeyMetadata(s.keyId)).versions.map((v) => v.version), [1, 2], 'rotated exactly once');
    for (const r of s.registry.list(s.keyId, {}, COUNT + 1)) {
      assert.equal(r.keyVersion, 2);
      const { dek } = await s.kms.unwrap(s.keyId, r.wdek);
      assert.ok(dek.equals(s.deks.get(r.id)!), `${r.id} still unwraps to its DEK`);
    }
    await suite.client.workflow.getHandle(keyEntityWorkflowId(s.keyId)).terminate('test finished');
  };

  it('within the grace time: the chunk in flight finishes on its first attempt before the worker exits', async () => {
    const s = await seed('drain');
    const handle = await terminateMidChunk(s, await s.worker(120));
    // The chunk finished on the stopping worker: its whole range moved before the exit.
    assert.equal(s.registry.countByVersion(s.keyId).get(2), COUNT, 'the chunk finished during the drain');
    await finishOnNewWorker(s, handle);
    assert.deepEqual(chunkAttempts((await handle.fetchHistory()).events ?? []), [{ outcome: 'completed', attempt: 1 }], 'one chunk, one attempt');
  });

  it('past the grace time: the chunk stops at a batch boundary with WORKER_SHUTDOWN and the next worker resumes it at once', async () => {
    const s = await seed('cut');
    const handle = await terminateMidChunk(s, await s.worker(0));
    const movedAtExit = s.registry.countByVersion(s.keyId).get(2) ?? 0;
    assert.ok(movedAtExit < COUNT, `the chunk stopped early (${movedAtExit} moved)`);
    // The attempt failed when the worker stopped, not when its heartbeat timed out.
    const pending = await waitUntil('the stopped attempt to be reported', async () => {
      const p = ((await handle.describe()).raw.pendingActivities ?? []).find((a) => a.activityType?.name === 'rewrapChunk');
      return p && (p.attempt ?? 0) > 1 ? p : undefined;
    });
    assert.equal(pending.lastFailure?.applicationFailureInfo?.type, 'WORKER_SHUTDOWN', pending.lastFailure?.message ?? '');
    await finishOnNewWorker(s, handle);
    assert.deepEqual(
      chunkAttempts((await handle.fetchHistory()).events ?? []).map((a) => a.outcome),
      ['completed'],
      'the stopped attempt was retried and completed',
    );
  });
});
