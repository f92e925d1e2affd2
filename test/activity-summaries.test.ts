import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { type WorkflowHandle, isGrpcServiceError } from '@temporalio/client';
import { type Payload, defaultPayloadConverter } from '@temporalio/common';
import { nightlyBackup, rotateMasterKey, rotateRootKey, rotateRootKeyOnSchedule, watchRootKeys } from '../workflows';
import { backupProgressQuery, backupWorkflowId } from '../workflows/backup-messages';
import { masterKeyRotationWorkflowId } from '../workflows/master-key-messages';
import { keyEntityWorkflowId, rewrapWorkflowId } from '../workflows/root-key-messages';
import { localWorker } from './helpers/local-activities';
import { useSuiteFixture } from './helpers/temporal';

/** One activity, timer or child a run asked for, as the Web UI lists it in the event history. */
interface Command {
  kind: 'activity' | 'timer' | 'child';
  /** Activity type or child workflow type; `timer` for timers. */
  name: string;
  summary: string | undefined;
  details: string | undefined;
}

/** Summaries are payloads encoded by the data converter (keyops uses the default, no codec). */
const text = (payload: Payload | null | undefined) => (payload ? defaultPayloadConverter.fromPayload<string>(payload) : undefined);

/** Every activity scheduled, timer started and child initiated in the run's history, in order. */
async function commandsOf(handle: WorkflowHandle): Promise<Command[]> {
  const events = (await handle.fetchHistory()).events ?? [];
  return events.flatMap((e): Command[] => {
    const summary = text(e.userMetadata?.summary);
    const details = text(e.userMetadata?.details);
    if (e.activityTaskScheduledEventAttributes) return [{ kind: 'activity', name: e.activityTaskScheduledEventAttributes.activityType?.name ?? '?', summary, details }];
    // A local activity is a marker whose data names its type (the Web UI lists it so).
    const marker = e.markerRecordedEventAttributes;
    if (marker?.markerName === 'core_local_activity') {
      const data = text(marker.details?.data?.payloads?.[0]) as unknown as { activity_type?: string } | undefined;
      return [{ kind: 'activity', name: data?.activity_type ?? '?', summary, details }];
    }
    if (e.timerStartedEventAttributes) return [{ kind: 'timer', name: 'timer', summary, details }];
    if (e.startChildWorkflowExecutionInitiatedEventAttributes) {
      return [{ kind: 'child', name: e.startChildWorkflowExecutionInitiatedEventAttributes.workflowType?.name ?? '?', summary, details }];
    }
    return [];
  });
}

/**
 * Every command carries a one-line summary (children also multi-line details), and none carries
 * anything that looks like key material (a long hex string); returns the commands for more checks.
 */
async function assertSummarised(handle: WorkflowHandle, what: string): Promise<Command[]> {
  const commands = await commandsOf(handle);
  assert.ok(commands.length > 0, `${what}: the run scheduled something`);
  for (const c of commands) {
    assert.ok(c.summary && c.summary.trim().length > 0, `${what}: ${c.kind === 'timer' ? 'a timer' : `${c.kind} ${c.name}`} has no summary`);
    assert.ok(!c.summary.includes('\n'), `${what}: the summary of ${c.name} is one line: ${c.summary}`);
    assert.ok(!/[0-9a-f]{32,}/i.test(c.summary + (c.details ?? '')), `${what}: ${c.name} shows a long hex value: ${c.summary}`);
    if (c.kind === 'child') assert.ok(c.details?.includes('\n'), `${what}: child ${c.name} has multi-line static details: ${c.details}`);
  }
  return commands;
}

/** The summaries of the commands named `name`. */
const summariesOf = (commands: Command[], name: string) => commands.filter((c) => c.name === name).map((c) => c.summary ?? '');

/** The run's commands so far; none while the server has not created it yet (a child just initiated). */
const commandsSoFar = (handle: WorkflowHandle) =>
  commandsOf(handle).catch((err: unknown) => {
    if (isGrpcServiceError(err) && err.code === grpc.status.NOT_FOUND) return [];
    throw err;
  });

/** Polls the run's history until `done` holds (a few seconds at most). */
async function waitForHistory(handle: WorkflowHandle, done: (commands: Command[]) => boolean, what: string): Promise<void> {
  for (let i = 0; !done(await commandsSoFar(handle)); i++) {
    assert.ok(i < 200, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('every activity, timer and child of a keyops run carries a summary for the Web UI', () => {
  const suite = useSuiteFixture('activity-summaries');

  /** A KMS, registry, catalog, database engine and unit sets in their own directory, and a worker on them. */
  const setup = async (label: string, kmsUnitSet?: string) => {
    const local = await localWorker(suite.env, join(suite.dir, label), label, kmsUnitSet);
    const { kms, registry } = local;
    /** A root key with `count` application WDEKs under it. */
    const seedKey = async (name: string, count: number) => {
      const { keyId } = await kms.createKey({ name });
      const records = [];
      for (let i = 0; i < count; i++) {
        const { wdek, keyVersion } = await kms.wrap(keyId);
        records.push({ id: `app/${name}/${String(i).padStart(4, '0')}`, keyId, keyVersion, wdek, owner: 'test' });
      }
      registry.registerMany(records);
      return keyId;
    };
    return { seedKey, ...local };
  };

  it('rotateRootKey names the key and version in every call; watchRootKeys in its checks and the rewrap it starts', async () => {
    const s = await setup('root-key');
    const keyA = await s.seedKey('alpha', 40);
    const keyB = await s.seedKey('bravo', 24);
    await s.worker.runUntil(async () => {
      const rotate = await suite.client.workflow.start(rotateRootKey, {
        taskQueue: s.taskQueue,
        workflowId: rewrapWorkflowId(keyA, 2),
        args: [{ keyId: keyA, targetVersion: 2, rotate: true, chunkSize: 10, batchSize: 5, parallelism: 2 }],
      });
      assert.equal((await rotate.result()).verified, 40);
      const commands = await assertSummarised(rotate, 'rotateRootKey');
      assert.deepEqual(summariesOf(commands, 'rotateToVersion'), [`rotate key ${keyA} to version 2 in the KMS (at most once for this run)`]);
      assert.match(summariesOf(commands, 'countWdeks')[0]!, new RegExp(`WDEKs of key ${keyA} .*version 2`));
      assert.match(summariesOf(commands, 'partitionWdeks')[0]!, new RegExp(`split the 40 WDEKs of key ${keyA} into 2 id ranges`));
      const chunks = [...summariesOf(commands, 'rewrapChunk'), ...summariesOf(commands, 'verifyChunk')];
      assert.ok(chunks.length >= 8, `chunks of 10 over 40 WDEKs, rewrap and verify: ${chunks.length}`);
      for (const c of chunks) assert.match(c, new RegExp(`^(rewrap|verify) up to 10 WDEKs of key ${keyA} .*version 2, ids after `), c);
      assert.ok(chunks.some((c) => c.includes('ids after app/alpha/')), 'a later chunk names the id it resumes after');
      assert.deepEqual(summariesOf(commands, 'recordRewrappedVersion'), [`record version 2 as the rewrapped version of key ${keyA}`]);
      assert.match(summariesOf(commands, 'announceRewrapComplete')[0]!, new RegExp(`"rewrap complete \\(${keyA}, v2\\)" to key/${keyA}`));

      // Key B rotated in the KMS without keyops (an operator, by hand): the watcher finds it.
      await s.kms.rotateKey(keyB, 'rotated-by-hand');
      s.registry.setRewrappedVersion(keyB, 1);
      const watch = await suite.client.workflow.start(watchRootKeys, { taskQueue: s.taskQueue, workflowId: `watch/${s.taskQueue}` });
      assert.deepEqual((await watch.result()).started, [rewrapWorkflowId(keyB, 2)]);
      const watched = await assertSummarised(watch, 'watchRootKeys');
      assert.deepEqual(summariesOf(watched, 'listRegisteredKeys'), ['list the root keys that protect registered WDEKs']);
      assert.deepEqual(
        summariesOf(watched, 'describeKey').sort(),
        [keyA, keyB].map((k) => `compare the current version of key ${k} in the KMS with its rewrapped version`).sort(),
      );
      const child = watched.find((c) => c.kind === 'child');
      assert.ok(child, 'the watcher started a rewrap');
      assert.equal(child.name, 'rotateRootKey');
      assert.equal(child.summary, `Rewrap every WDEK of key ${keyB} to version 2 (rotation detected by watchRootKeys)`);
      assert.match(child.details ?? '', new RegExp(`key \`${keyB}\` \\(bravo\\) is at version \\*\\*2\\*\\*`));
      assert.match(child.details ?? '', /last rewrapped to version 1/);
      assert.ok(child.details?.includes(`\`${rewrapWorkflowId(keyB, 2)}\``), child.details);

      const rewrap = suite.client.workflow.getHandle<typeof rotateRootKey>(rewrapWorkflowId(keyB, 2));
      assert.equal((await rewrap.result()).verified, 24);
      const rewrapped = await assertSummarised(rewrap, 'rotateRootKey started by the watcher');
      assert.deepEqual(summariesOf(rewrapped, 'describeKey'), [`check that the KMS already rotated key ${keyB} to version 2 or later (rewrap only)`]);
      assert.equal(summariesOf(rewrapped, 'rotateToVersion').length, 0, 'a detected rotation is not rotated again');
      for (const k of [keyA, keyB]) await suite.client.workflow.getHandle(keyEntityWorkflowId(k)).terminate('test finished');
    });
  });

  it('nightlyBackup, its awaitRewrap child and the rewrap that releases it name the database, night, key and version', async () => {
    const s = await setup('await-rewrap');
    const keyId = await s.seedKey('ledger-key', 30);
    await s.engine.createDatabase('ledger', keyId);
    await s.engine.withDatabase('ledger', (db) => db.exec('CREATE TABLE entries (v); INSERT INTO entries VALUES (1), (2), (3);'));
    s.registry.setRewrappedVersion(keyId, 1);
    // The KMS rotated; the rewrap has not run yet: a backup now must wait for it.
    await s.kms.rotateKey(keyId, 'rotated-before-the-night');
    const night = '2026-12-01';
    await s.worker.runUntil(async () => {
      const backup = await suite.client.workflow.start(nightlyBackup, {
        taskQueue: s.taskQueue,
        workflowId: backupWorkflowId('ledger', night),
        // Re-checks every 300 ms: the wait's timer and re-check activity appear in the history.
        args: [{ databaseId: 'ledger', night, recheckEveryMs: 300 }],
      });
      for (let i = 0; (await backup.query(backupProgressQuery)).phase !== 'awaiting-rewrap'; i++) {
        assert.ok(i < 200, 'the backup waits for the rewrap');
        await new Promise((r) => setTimeout(r, 50));
      }
      const wait = suite.client.workflow.getHandle(`${backupWorkflowId('ledger', night)}/await-rewrap`);
      await waitForHistory(wait, (cs) => summariesOf(cs, 'describeKey').length >= 2, 'a re-check of the key by the waiting child');

      const rewrap = await suite.client.workflow.start(rotateRootKey, {
        taskQueue: s.taskQueue,
        workflowId: rewrapWorkflowId(keyId, 2),
        args: [{ keyId, targetVersion: 2, rotate: false, chunkSize: 10, batchSize: 5 }],
      });
      assert.equal((await backup.result()).keyVersion, 2);
      await assertSummarised(rewrap, 'the rewrap that releases the backup');

      const commands = await assertSummarised(backup, 'nightlyBackup');
      assert.deepEqual(
        commands.map((c) => c.name),
        ['checkBackupKeys', 'awaitRewrap', 'backupDatabase', 'verifyBackupImage', 'recordBackup', 'recordNight', 'applyRetention'],
      );
      assert.match(summariesOf(commands, 'checkBackupKeys')[0]!, /of database ledger/);
      assert.equal(summariesOf(commands, 'backupDatabase')[0], `write the encrypted backup of database ledger for night ${night} (root key ${keyId})`);
      assert.match(summariesOf(commands, 'verifyBackupImage')[0]!, new RegExp(`test restore of the database ledger backup \\(\\d+ bytes, key ${keyId} version 2\\)`));
      assert.match(summariesOf(commands, 'recordNight')[0]!, new RegExp(`night ${night} of database ledger as succeeded`));
      const child = commands.find((c) => c.kind === 'child');
      assert.ok(child, 'the backup started its wait as a child');
      assert.equal(child.summary, `Wait for key ${keyId} to be rewrapped to version 2`);
      assert.match(child.details ?? '', new RegExp(`Root key \`${keyId}\` rotated to version \\*\\*2\\*\\*`));
      assert.match(child.details ?? '', /still on version 1/);
      assert.match(child.details ?? '', /every 300 ms .* gives up after 6 h/);

      const waited = await assertSummarised(wait, 'awaitRewrap');
      assert.equal(summariesOf(waited, 'describeKey')[0], `check whether key ${keyId} was already rewrapped to version 2`);
      assert.equal(summariesOf(waited, 'registerRewrapWaiter')[0], `ask key/${keyId} to signal this run when the rewrap reaches version 2`);
      assert.match(summariesOf(waited, 'describeKey')[1]!, new RegExp(`re-check whether key ${keyId} was rewrapped to version 2`));
      const timers = summariesOf(waited, 'timer');
      assert.ok(timers.length >= 1, 'the wait started a timer');
      for (const t of timers) assert.match(t, new RegExp(`wait for "rewrap complete \\(${keyId}, v2\\)" from key/${keyId}; then re-check the key`));
      await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished');
    });
  });

  it('nightlyBackup names what its re-check timers wait for (a master-key rotation), and a failed night', async () => {
    const s = await setup('mk-wait', 'kms-hsm');
    const units = s.unitSets.create('kms-hsm', { units: 2, entries: 4 });
    const keyId = await s.seedKey('hr-key', 3);
    await s.engine.createDatabase('hr', keyId);
    await units.loadNewMasterKey(); // stage 1 of a rotation of the master key under the KMS
    await s.worker.runUntil(async () => {
      const backup = await suite.client.workflow.start(nightlyBackup, {
        taskQueue: s.taskQueue,
        workflowId: backupWorkflowId('hr', '2026-12-02'),
        args: [{ databaseId: 'hr', night: '2026-12-02', keyChangeRecheckMs: 200 }],
      });
      await waitForHistory(backup, (cs) => summariesOf(cs, 'checkBackupKeys').length >= 2, 'a re-check after the first timer');
      await units.reencryptKeyStorage();
      await units.promoteNewMasterKey();
      assert.equal((await backup.result()).phase, 'done');
      const commands = await assertSummarised(backup, 'nightlyBackup waiting for the master key');
      const timers = summariesOf(commands, 'timer');
      assert.ok(timers.length >= 1);
      for (const t of timers) assert.match(t ?? '', /^backup held: wait for the master-key rotation under the KMS to end \(released by its signal\), re-checking after \d+ (ms|s|min|h)$/);
      assert.equal(summariesOf(commands, 'checkBackupKeys')[1], 're-check whether the master-key rotation under the KMS has ended');

      const failed = await suite.client.workflow
        .execute(nightlyBackup, { taskQueue: s.taskQueue, workflowId: backupWorkflowId('nowhere', '2026-12-02'), args: [{ databaseId: 'nowhere', night: '2026-12-02' }] })
        .then(() => undefined, (e: unknown) => e);
      assert.ok(failed instanceof Error, 'a night without its database fails');
      const failedCommands = await assertSummarised(suite.client.workflow.getHandle(backupWorkflowId('nowhere', '2026-12-02')), 'a failed night');
      assert.deepEqual(summariesOf(failedCommands, 'recordNight'), ['record night 2026-12-02 of database nowhere as failed and count the failed nights in a row']);
    });
  });

  it('rotateMasterKey names the unit set, units and master keys (by abbreviated verification pattern), also in a recovery', async () => {
    const s = await setup('master-key');
    const set = s.unitSets.create('hsm', { units: 3, entries: 8 });
    // Unit 1 is promoted, then the step fails: the recovery takes unit 1 out, promotes the rest, puts it back.
    set.injectFault({ step: 'promote', unitId: '1', timing: 'after', action: 'fatal' });
    const workflowId = masterKeyRotationWorkflowId('hsm', 'summaries');
    const result = await s.worker.runUntil(() =>
      suite.client.workflow.execute(rotateMasterKey, { taskQueue: s.taskQueue, workflowId, args: [{ unitSetId: 'hsm', requestId: 'summaries' }] }),
    );
    assert.equal(result.phase, 'done');
    assert.equal(result.recoveries, 1);
    const commands = await assertSummarised(suite.client.workflow.getHandle(workflowId), 'rotateMasterKey');
    const vp = (p: string | undefined) => `${p!.slice(0, 12)}…`;
    assert.match(summariesOf(commands, 'precheckMasterKeyRotation')[0]!, /^pre-check crypto-unit set hsm: /);
    assert.deepEqual(summariesOf(commands, 'reencryptKeyStorage'), [
      `re-encrypt the key storage of crypto-unit set hsm from master key ${vp(result.currentVp)} to ${vp(result.newVp)}`,
    ]);
    assert.deepEqual(summariesOf(commands, 'observeCryptoUnits'), [
      'read the registers of crypto-unit set hsm to decide the recovery after a failure at checkpoint promoting',
      'read the registers of crypto-unit set hsm: which units the recovery left out of the selection',
    ]);
    assert.deepEqual(summariesOf(commands, 'removeUnitsFromSelection'), ['take unit 1 of crypto-unit set hsm (already promoted) out of the selection']);
    assert.deepEqual(summariesOf(commands, 'addUnitsToSelection'), ['put unit 1 of crypto-unit set hsm back in the selection after the recovery']);
    assert.equal(summariesOf(commands, 'promoteNewMasterKey').length, 2);
    assert.deepEqual(summariesOf(commands, 'checkKeyStorage'), [`check that every key-storage entry of crypto-unit set hsm opens under master key ${vp(result.newVp)}`]);
  });

  it('rotateRootKeyOnSchedule names the key in its reads, its waits for a pending rewrap, and the rotation it starts', async () => {
    const s = await setup('scheduled');
    const keyId = await s.seedKey('charlie', 12);
    // Rotated by hand: the scheduled run first waits for the rewrap to version 2.
    await s.kms.rotateKey(keyId, 'rotated-by-hand-earlier');
    await s.worker.runUntil(async () => {
      const run = await suite.client.workflow.start(rotateRootKeyOnSchedule, { taskQueue: s.taskQueue, workflowId: `rotate-key/${keyId}-summaries`, args: [{ keyId }] });
      // The KMS allows the next rotation an hour after the one by hand: this run waits; the
      // commands until then are what an operator sees meanwhile.
      await waitForHistory(run, (commands) => commands.some((c) => c.kind === 'timer'), 'the quota timer');
      const commands = await assertSummarised(run, 'rotateRootKeyOnSchedule');
      assert.match(summariesOf(commands, 'describeKey')[0]!, new RegExp(`^read key ${keyId}: `));
      assert.deepEqual(
        commands.filter((c) => c.kind === 'child').map((c) => c.summary),
        [
          `Rewrap key ${keyId} to version 2 (pending when the scheduled rotation fired)`,
          `Wait for key ${keyId} to be rewrapped to version 2 before the scheduled rotation`,
        ],
      );
      assert.match(summariesOf(commands, 'timer')[0]!, new RegExp(`^wait until \\d{4}-.*Z: the KMS allows one rotation of key ${keyId} per hour$`));
      await run.terminate('summaries checked; the hour-long quota wait is tested elsewhere');
    });
  });
});
