/**
 * The production topology, smoke-tested: a Temporal cluster of Temporal's own server (frontend,
 * history, matching and worker as separate processes) on a private PostgreSQL, started by
 * ./temporal-cluster.sh. The keyops worker and CLI reach it through TEMPORAL_ADDRESS alone. A key
 * rotates while a nightly backup waits for its rewrap; the history service is SIGKILLed during the
 * rewrap and started again; the rewrap runs once and the night ends with a verified backup.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Client } from '@temporalio/client';
import { nightlyBackup, rotateRootKey } from '../workflows';
import { backupProgressQuery, backupWorkflowId } from '../workflows/backup-messages';
import { rewrapWorkflowId } from '../workflows/root-key-messages';
import { freePort, keyops } from './helpers/child-process';
import { type TemporalCluster, startCluster } from './helpers/temporal-cluster';
import { captureLogFiles, dumpHistoriesAt, harvestDataDir } from './helpers/key-material';
import { temporalCliPath, uniqueTaskQueue } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';
import { WorkerProcess } from './helpers/worker-process';

describe('a Temporal cluster on PostgreSQL (./temporal-cluster.sh): keyops unchanged, a history restart mid-rewrap', () => {
  let dir: string;
  let cluster: TemporalCluster | undefined;
  let address: string;
  let client: Client;
  let worker: WorkerProcess | undefined;
  const taskQueue = uniqueTaskQueue('cluster');

  const cli = async (...args: string[]) => {
    const r = await keyops([...args, '--task-queue', taskQueue], { TEMPORAL_ADDRESS: address });
    assert.equal(r.code, 0, `keyops ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };

  before(
    async () => {
      dir = await mkdtemp(join(tmpdir(), 'keyops-cluster-'));
      // The first start on a fresh machine builds the server (minutes): the hook allows for it.
      cluster = await startCluster(join(dir, 'data'), { cli: temporalCliPath() });
      ({ address, client } = cluster);
      worker = new WorkerProcess({
        TEMPORAL_ADDRESS: address,
        KEYOPS_TASK_QUEUE: taskQueue,
        KEYOPS_DATA_DIR: join(dir, 'keyops'),
        KEYOPS_LOG_FORMAT: 'json',
        KEYOPS_METRICS_ADDRESS: `127.0.0.1:${await freePort()}`,
        KEYOPS_KMS_MASTER_SECRET: randomBytes(32).toString('base64'),
      });
      await worker.waitFor('worker started');
    },
    { timeout: 40 * 60_000 },
  );

  after(async () => {
    if (worker && worker.child.exitCode === null && worker.child.signalCode === null) {
      const gone = new Promise((r) => worker!.child.once('exit', r));
      worker.child.kill('SIGTERM');
      await gone;
    }
    if (cluster) {
      await dumpHistoriesAt(cluster.address, 'temporal cluster', { noteFailure: false });
      await cluster.stop();
    }
    if (dir) {
      captureLogFiles(join(dir, 'data', 'cluster', 'logs'), 'temporal-cluster');
      harvestDataDir(join(dir, 'keyops'));
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('status shows four services, PostgreSQL and the address; the CLI reaches the worker through the cluster', async () => {
    const status = await cluster!.script('status');
    for (const part of ['history', 'matching', 'frontend', 'worker', 'postgres']) assert.match(status.stdout, new RegExp(`^${part} +running, pid \\d+`, 'm'));
    assert.match(status.stdout, new RegExp(`TEMPORAL_ADDRESS=${address}`));
    // The server the CLI reached is the cluster's own build, and the keyops worker polls it.
    assert.match(await cli('ping'), new RegExp(`^Temporal 1\\.29\\.1 at ${address.replace(/\./g, '\\.')}, namespace "default"\n1 worker\\(s\\) polling task queue "${taskQueue}"`));
  });

  it('a backup waits for the rewrap of a rotated key; history is SIGKILLed mid-rewrap and restarted; the rewrap runs once and the night ends verified', async () => {
    const t0 = Date.now();
    const timeline: [number, string][] = [];
    const mark = (what: string, at = Date.now()) => timeline.push([at, what]);
    await cli('init', '--wdeks', '2000');
    mark('keyops init: demo database and key, 2000 WDEKs');
    const keyId = (JSON.parse(await cli('key', 'show', 'demo', '--json')) as { keyId: string }).keyId;
    await cli('key', 'rotate', 'demo', '--kms-only');
    const night = '2026-12-01';
    const backup = await client.workflow.start(nightlyBackup, { taskQueue, workflowId: backupWorkflowId('demo', night), args: [{ databaseId: 'demo', night }] });
    await waitUntil('the night to wait for the rewrap', async () => ((await backup.query(backupProgressQuery)).phase === 'awaiting-rewrap' ? true : undefined), 120_000);
    mark('key rotated in the KMS only; the night waits (awaiting-rewrap)');

    const rewrapId = rewrapWorkflowId(keyId, 2);
    await client.workflow.start(rotateRootKey, { taskQueue, workflowId: rewrapId, args: [{ keyId, targetVersion: 2, rotate: false, chunkSize: 20, batchSize: 10, parallelism: 1 }] });
    // Mid-rewrap: its first chunks have run.
    await waitUntil('the rewrap to be under way', async () => {
      const events = (await client.workflow.getHandle(rewrapId).fetchHistory()).events ?? [];
      return events.filter((e) => e.activityTaskCompletedEventAttributes).length >= 3 ? true : undefined;
    }, 120_000);
    assert.equal((await client.workflow.getHandle(rewrapId).describe()).status.name, 'RUNNING', 'history is killed while the rewrap runs');
    mark('rewrap under way');
    await cluster!.script('kill', 'history');
    const killedAt = Date.now();
    mark('history service SIGKILLed');
    const restarted = await cluster!.script('up');
    assert.match(restarted.stderr, /starting the history service/);
    mark('history service started again');

    const done = await backup.result();
    assert.equal(done.phase, 'done');
    const rewrapClosed = (await client.workflow.getHandle(rewrapId).describe()).closeTime;
    assert.ok(rewrapClosed && rewrapClosed.getTime() > killedAt, 'the rewrap ended after history was killed: the fault hit it');
    mark('rewrap done and announced', rewrapClosed.getTime());
    if (done.releasedAt) mark('night released', done.releasedAt);
    mark('night done: backup verified and catalogued');
    assert.equal(done.keyVersion, 2, 'the backup was taken under the new key version');
    const rewrap = await client.workflow.getHandle<typeof rotateRootKey>(rewrapId).result();
    assert.equal(rewrap.phase, 'done');
    // From the registry itself: every WDEK of the key is on version 2.
    const status = JSON.parse(await cli('rewrap', 'status', 'demo', '--json')) as { upToDate: boolean; consumers: { wdeks: number; wdeksBehind: number } };
    assert.equal(status.upToDate, true);
    assert.ok(status.consumers.wdeks >= 2000, `the key's WDEKs: ${status.consumers.wdeks}`);
    assert.equal(status.consumers.wdeksBehind, 0);
    // Exactly one run of the rewrap: its workflow id is its idempotency key.
    const runs: string[] = [];
    for await (const run of client.workflow.list({ query: `WorkflowId = '${rewrapId}'` })) runs.push(run.runId);
    assert.equal(new Set(runs).size, 1, `rewrap runs: ${runs.join(', ')}`);
    const listed = JSON.parse(await cli('backup', 'list', '--database', 'demo', '--json')) as { backupId: string; keyVersion: number; status: string }[];
    assert.deepEqual(
      listed.filter((b) => b.backupId === backupWorkflowId('demo', night)).map((b) => [b.status, b.keyVersion]),
      [['good', 2]],
    );
    const lines = timeline.sort((a, b) => a[0] - b[0]).map(([at, what]) => `${((at - t0) / 1000).toFixed(1).padStart(6)} s  ${what}`);
    console.log(`cluster fault timeline:\n${lines.join('\n')}`);
  });
});
