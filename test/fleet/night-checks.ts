/**
 * What test/fleet/fleet-faults.test.ts asserts once the fleet night has closed, each read from
 * where it is recorded: the runs from the cluster's visibility (every run, not only the latest),
 * backups from the catalog and the backup directories, versions from the KMS and the WDEK
 * registry, what is still running from describe() and the key entities' own state.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Client } from '@temporalio/client';
import type { CatalogEntry } from '../../activities/catalog/backup-catalog';
import { SqliteBackupCatalog } from '../../activities/catalog/sqlite-backup-catalog';
import { backupWorkflowId } from '../../workflows/backup-messages';
import { keyStateQuery, rewrapWorkflowId } from '../../workflows/root-key-messages';
import type { WatchResult } from '../../workflows/watch-root-keys';
import { backupFiles } from '../helpers/backup-nights';
import { keyops } from '../helpers/child-process';
import { type Fleet, listBackupRuns, pool } from '../helpers/fleet';
import { waitUntil } from '../helpers/wait-until';

/** A scheduled run's id is the action's `backup/<databaseId>` and the fire time the schedule appends. */
const SCHEDULED_ID = /^backup\/(.+)-\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;

interface Run {
  workflowId: string;
  runId: string;
  status: string;
}

/** Every run of every workflow the query finds, grouped by workflow id. */
async function runsById(client: Client, query: string): Promise<Map<string, Run[]>> {
  const byId = new Map<string, Run[]>();
  for await (const w of client.workflow.list({ query })) {
    byId.set(w.workflowId, [...(byId.get(w.workflowId) ?? []), { workflowId: w.workflowId, runId: w.runId, status: w.status.name }]);
  }
  return byId;
}

/** Workflow ids that did not run exactly once to completion, with what they did instead. */
function notOnceCompleted(byId: Map<string, Run[]>): string[] {
  return [...byId].filter(([, runs]) => runs.length !== 1 || runs[0]!.status !== 'COMPLETED').map(([id, runs]) => `${id}: ${runs.map((r) => r.status).join(', ')}`);
}

function readCatalog(dataDir: string): CatalogEntry[] {
  const catalog = SqliteBackupCatalog.open(join(dataDir, 'catalog', 'backups.sqlite'));
  try {
    return catalog.list();
  } finally {
    catalog.close();
  }
}

async function currentVersion(fleet: Fleet, keyId: string): Promise<number> {
  return (await fleet.kms.getKeyMetadata(keyId)).currentVersion;
}

export async function checkBackups(client: Client, fleet: Fleet, taskQueue: string, o: { rotated: string[]; rows: number }): Promise<void> {
  const runs = await listBackupRuns(client, taskQueue);
  const byId = new Map<string, typeof runs>();
  for (const r of runs) byId.set(r.workflowId, [...(byId.get(r.workflowId) ?? []), r]);
  assert.deepEqual(notOnceCompleted(byId), [], 'every backup workflow id has exactly one run, completed');
  // One workflow id per database: no schedule started a night twice.
  const nightOf = new Map<string, string>();
  for (const [id, [run]] of byId) {
    const databaseId = SCHEDULED_ID.exec(id)?.[1];
    assert.ok(databaseId && fleet.keyOf.has(databaseId), `a backup run of no fleet database: ${id}`);
    assert.ok(!nightOf.has(databaseId), `database ${databaseId} has more than one backup run`);
    // The run's night is its start date (UTC), as nightlyBackup takes it.
    nightOf.set(databaseId, new Date(run!.start).toISOString().slice(0, 10));
  }
  assert.equal(nightOf.size, fleet.databases.length, 'every database has its backup run');

  // Only backups under a rotated key waited, each once, and every wait ended released.
  const waits = await runsById(client, `WorkflowType = 'awaitRewrap' AND TaskQueue = '${taskQueue}'`);
  assert.deepEqual(notOnceCompleted(waits), [], 'every wait for a rewrap ran once and completed');
  const waiting = new Set(fleet.databases.filter((d) => o.rotated.includes(fleet.keyOf.get(d)!)));
  const waited = [...waits.keys()].filter((id) => ![...waiting].some((d) => id === `${backupWorkflowId(d, nightOf.get(d)!)}/await-rewrap`));
  assert.deepEqual(waited, [], 'no backup under a key that did not rotate waited');

  const entries = readCatalog(fleet.dataDir);
  const byDatabase = new Map<string, CatalogEntry[]>();
  for (const e of entries) byDatabase.set(e.databaseId, [...(byDatabase.get(e.databaseId) ?? []), e]);
  assert.equal(byDatabase.size, fleet.databases.length, 'the catalog holds every database');
  for (const databaseId of fleet.databases) {
    const kept = byDatabase.get(databaseId) ?? [];
    assert.equal(kept.length, 1, `${databaseId}: catalog entries ${kept.map((e) => `${e.backupId} ${e.status}`).join(', ')}`);
    const entry = kept[0]!;
    const keyId = fleet.keyOf.get(databaseId)!;
    const version = await currentVersion(fleet, keyId);
    assert.deepEqual(
      { backupId: entry.backupId, status: entry.status, rows: entry.verification?.rows, keyId: entry.keyId, keyVersion: entry.keyVersion },
      { backupId: backupWorkflowId(databaseId, nightOf.get(databaseId)!), status: 'good', rows: o.rows, keyId, keyVersion: version },
      `${databaseId}: catalogued, verified, under version ${version} of its key`,
    );
    assert.equal(version, o.rotated.includes(keyId) ? 2 : 1);
    // The one file written is the one catalogued: no second backup, no partial left behind.
    assert.ok(existsSync(entry.path), `${databaseId}: ${entry.path} exists`);
    assert.deepEqual(backupFiles(fleet.dataDir, databaseId), [basename(entry.path)], `${databaseId}: files in its backup directory`);
  }
}

export async function checkRewraps(client: Client, fleet: Fleet, taskQueue: string, night: { rotated: string[]; watch: WatchResult }): Promise<void> {
  const expected = await Promise.all(night.rotated.map(async (k) => rewrapWorkflowId(k, await currentVersion(fleet, k))));
  assert.deepEqual(
    { checked: night.watch.checked, started: [...night.watch.started].sort(), alreadyRunning: night.watch.alreadyRunning, unreadable: night.watch.unreadable },
    { checked: fleet.keyIds.length, started: [...expected].sort(), alreadyRunning: [], unreadable: [] },
    'the watcher checked every key and started each rotated key’s rewrap once',
  );
  // By workflow id, over every run: the rewrap's id is its idempotency key.
  for (const id of expected) assert.deepEqual(notOnceCompleted(await runsById(client, `WorkflowId = '${id}'`)), [], `${id} ran exactly once, completed`);
  const rewraps = await runsById(client, `WorkflowType = 'rotateRootKey' AND TaskQueue = '${taskQueue}'`);
  assert.deepEqual([...rewraps.keys()].sort(), [...expected].sort(), 'no other rewrap ran');
  for (const keyId of fleet.keyIds) {
    const version = await currentVersion(fleet, keyId);
    const versions = [...fleet.registry.countByVersion(keyId)];
    assert.deepEqual(versions.map(([v]) => v), [version], `key ${keyId}: every WDEK on version ${version} (${JSON.stringify(versions)})`);
    if (night.rotated.includes(keyId)) assert.equal(fleet.registry.getRewrappedVersion(keyId), version, `key ${keyId}: rewrap recorded at version ${version}`);
  }
}

export async function checkNothingStuck(client: Client, taskQueue: string): Promise<void> {
  // Visibility trails the runs by moments; a stuck run never gets there.
  for (const type of ['nightlyBackup', 'awaitRewrap', 'rotateRootKey', 'watchRootKeys']) {
    const query = `WorkflowType = '${type}' AND TaskQueue = '${taskQueue}' AND ExecutionStatus = 'Running'`;
    await waitUntil(`no ${type} run left running`, async () => ((await client.workflow.count(query)).count === 0 ? true : undefined), 60_000);
  }
  // What may run on: the long-lived key entities, idle, holding no waiter.
  for await (const w of client.workflow.list({ query: `TaskQueue = '${taskQueue}' AND ExecutionStatus = 'Running'` })) {
    const handle = client.workflow.getHandle(w.workflowId, w.runId);
    const described = await handle.describe();
    if (described.status.name !== 'RUNNING') continue;
    assert.equal(described.type, 'keyEntity', `${w.workflowId} (${described.type}) is still running`);
    assert.deepEqual(described.raw.pendingActivities?.map((a) => a.activityType?.name) ?? [], [], `${w.workflowId}: pending activities`);
    assert.deepEqual((await handle.query(keyStateQuery)).waiters, [], `${w.workflowId}: waiters left`);
  }
}

/** `keyops backup verify` of `size` databases' backups, half of them under rotated keys. */
export async function restoreSample(address: string, fleet: Fleet, taskQueue: string, o: { rotated: string[]; rows: number; size: number }): Promise<void> {
  const entries = new Map(readCatalog(fleet.dataDir).map((e) => [e.databaseId, e]));
  const under = (rotated: boolean) => fleet.databases.filter((d) => o.rotated.includes(fleet.keyOf.get(d)!) === rotated);
  // Spread over the fleet: the first and the last databases, and some between.
  const spread = (list: string[], n: number) => Array.from({ length: n }, (_, i) => list[Math.round((i * (list.length - 1)) / Math.max(1, n - 1))]!);
  const sample = [...spread(under(true), Math.ceil(o.size / 2)), ...spread(under(false), Math.floor(o.size / 2))];
  await pool(sample, 2, async (databaseId) => {
    const entry = entries.get(databaseId);
    assert.ok(entry, `${databaseId} is catalogued`);
    const r = await keyops(['backup', 'verify', entry.backupId, '--task-queue', taskQueue, '--json'], { TEMPORAL_ADDRESS: address });
    assert.equal(r.code, 0, `keyops backup verify ${entry.backupId}: ${r.stderr}`);
    const verified = JSON.parse(r.stdout) as { rows: number; keyId: string; keyVersion: number };
    assert.deepEqual({ rows: verified.rows, keyId: verified.keyId, keyVersion: verified.keyVersion }, { rows: o.rows, keyId: entry.keyId, keyVersion: entry.keyVersion }, `${entry.backupId} restores`);
  });
}
