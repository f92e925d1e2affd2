import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { WorkflowHandle } from '@temporalio/client';
import type { temporal } from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import { nightlyBackup } from '../workflows';
import { backupProgressQuery, backupWorkflowId, type BackupPhase } from '../workflows/backup-messages';
import { OutcomeAttribute } from '../workflows/search-attributes';
import { localWorker } from './helpers/local-activities';
import { recordHistory } from './helpers/record-history';
import { useSuiteFixture, workflowBundlePath } from './helpers/temporal';

type History = temporal.api.history.v1.IHistory;

/**
 * A history in which a workflow task ended with a local activity's marker alone and the code
 * after its result ran in the next task: what a query arriving while the local activity runs
 * makes the SDK do. Replay resolves that activity one task earlier than the run did.
 */
function splitAfterLocalActivity(history: History): boolean {
  const events = history.events ?? [];
  return events.some((e, i) => e.markerRecordedEventAttributes?.markerName === 'core_local_activity' && events[i + 1]?.workflowTaskScheduledEventAttributes);
}

/**
 * Operators and the Web UI query backups while they run (`keyops backup status`, the Queries
 * tab). A query that lands while one of nightlyBackup's local activities runs splits its workflow
 * task, and a patched() decided right after the activity then no longer replayed: the run would
 * fail its next replay (a worker restart, a cache eviction, a query after it closed) and stay
 * stuck. Every path with a patch decision after a local activity is queried here throughout.
 */
describe('nightlyBackup histories replay after queries during their local activities (dev server)', () => {
  const suite = useSuiteFixture('nightly-backup-queried');

  /** Queries `handle` back to back until `done` says stop; returns the last progress seen. */
  const queryUntil = async (handle: WorkflowHandle<typeof nightlyBackup>, done: (phase: BackupPhase | undefined, closed: boolean) => boolean) => {
    let closed = false;
    const result = handle.result().then(
      () => (closed = true),
      () => (closed = true),
    );
    let phase: BackupPhase | undefined;
    while (!done(phase, closed)) {
      phase = (await handle.query(backupProgressQuery).catch(() => undefined))?.phase ?? phase;
    }
    if (closed) await result;
  };

  it('every run replays: held by a master-key rotation, backed up with retention, and failed twice into the alert', async (t) => {
    const s = await localWorker(suite.env, join(suite.dir, 'queried'), 'queried', 'kms-hsm');
    const units = s.unitSets.create('kms-hsm', { units: 2, entries: 4 });
    const { keyId } = await s.kms.createKey({ name: 'queried-backups' });
    const night = '2026-11-20';
    const ids: string[] = [];
    const start = (databaseId: string, runNight = night) => {
      ids.push(backupWorkflowId(databaseId, runNight));
      return suite.client.workflow.start(nightlyBackup, {
        taskQueue: s.taskQueue,
        workflowId: backupWorkflowId(databaseId, runNight),
        args: [{ databaseId, night: runNight, keyChangeRecheckMs: 1000 }],
      });
    };
    const held = Array.from({ length: 8 }, (_, i) => `held-${i}`);
    const plain = Array.from({ length: 6 }, (_, i) => `plain-${i}`);
    const missing = Array.from({ length: 4 }, (_, i) => `missing-${i}`);
    for (const id of [...held, ...plain]) {
      await s.engine.createDatabase(id, keyId);
      await s.engine.withDatabase(id, (db) => db.exec('CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1), (2);'));
    }
    await s.worker.runUntil(async () => {
      // Backed up, catalogued, retention applied: the retention decision follows a local activity.
      for (const id of plain) await queryUntil(await start(id), (_, closed) => closed);
      // Two failed nights in a row (no such database): the alert decision follows a local activity.
      for (const id of missing) {
        for (const n of ['2026-11-18', '2026-11-19']) await queryUntil(await start(id, n), (_, closed) => closed);
      }
      // Held by a master-key rotation: the signal-wait decision follows the key check.
      await units.loadNewMasterKey();
      const heldRuns = [];
      for (const id of held) {
        const handle = await start(id);
        await queryUntil(handle, (phase) => phase === 'awaiting-master-key');
        heldRuns.push(handle);
      }
      await units.reencryptKeyStorage();
      await units.promoteNewMasterKey();
      for (const handle of heldRuns) await handle.result();
    });

    for (const id of [...held, ...plain]) {
      assert.equal(s.catalog.get(backupWorkflowId(id, night))?.status, 'good', `${id} was backed up and catalogued`);
    }
    for (const id of missing) {
      assert.equal((await suite.client.workflow.getHandle(backupWorkflowId(id, '2026-11-19')).describe()).typedSearchAttributes.get(OutcomeAttribute), 'alert');
    }

    const histories = await Promise.all(ids.map(async (workflowId) => ({ workflowId, history: await suite.client.workflow.getHandle(workflowId).fetchHistory() })));
    const split = histories.filter((h) => splitAfterLocalActivity(h.history));
    t.diagnostic(`${split.length} of ${histories.length} runs had a workflow task split by a query`);
    // Without a split this test would prove nothing; the query loop makes one all but certain.
    assert.ok(split.length > 0, 'no query landed during a local activity');
    if (process.env.KEYOPS_RECORD_HISTORIES) await recordHistory(split[0]!.workflowId, 'nightly-backup-queried-split.json');

    const failures: string[] = [];
    for await (const result of Worker.runReplayHistories({ workflowBundle: { codePath: workflowBundlePath() } }, histories)) {
      if (result.error) failures.push(`${result.workflowId}: ${result.error.message}`);
    }
    assert.deepEqual(failures, []);
  });
});
