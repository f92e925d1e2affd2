import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { WorkflowFailedError, WorkflowUpdateFailedError } from '@temporalio/client';
import type { temporal } from '@temporalio/proto';
import type { CryptoUnit } from '../activities/crypto-units/crypto-unit-set';
import type { Fault } from '../activities/crypto-units/simulated-crypto-units';
import { SimulatedUnitSets } from '../activities/crypto-units/simulated-unit-sets';
import { rotateMasterKey, rotateRootKey } from '../workflows';
import { keyEntityWorkflowId, rewrapProgressQuery, rewrapWorkflowId } from '../workflows/root-key-messages';
import { decideRecoveryUpdate, masterKeyRotationQuery, masterKeyRotationWorkflowId } from '../workflows/master-key-messages';
import { freePort } from './helpers/child-process';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { localActivities, localWorker } from './helpers/local-activities';
import { recordHistory } from './helpers/record-history';
import { createTestWorker, testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';
import { WorkerProcess } from './helpers/worker-process';

const UNITS = ['1', '2', '3'];
const ENTRIES = 16;

/** The activities a run scheduled, in order, from its recorded history. */
const scheduled = (events: temporal.api.history.v1.IHistoryEvent[]) =>
  events.flatMap((e) => (e.activityTaskScheduledEventAttributes?.activityType?.name ? [e.activityTaskScheduledEventAttributes.activityType.name] : []));

describe('rotateMasterKey on a real worker and simulated crypto units', () => {
  const suite = useSuiteFixture('rotate-master-key');

  const setup = (label: string, kmsUnitSet?: string) => localWorker(suite.env, join(suite.dir, label), label, kmsUnitSet);

  /** Every unit on one new current MK, new registers empty, all selected, key storage whole under it. */
  const assertRotated = async (unitSets: SimulatedUnitSets, unitSetId: string, newVp: string | undefined, what: string) => {
    const set = unitSets.get(unitSetId);
    const units = await set.listUnits();
    assert.ok(newVp, what);
    assert.deepEqual(
      units.map((u) => [u.unitId, u.selected, u.current.verificationPattern, u.next.state]),
      UNITS.map((id) => [id, true, newVp, 'empty']),
      what,
    );
    assert.deepEqual(await set.checkKeyStorage(), { entries: ENTRIES, readable: ENTRIES, verificationPattern: newVp }, what);
  };

  /** Neither forbidden move appears in the history: a new MK after re-encryption began, re-encryption after promotion began. */
  const assertNoForbiddenStep = (steps: string[], what: string) => {
    const firstReencrypt = steps.indexOf('reencryptKeyStorage');
    const firstPromote = steps.indexOf('promoteNewMasterKey');
    assert.ok(firstReencrypt > 0 && firstPromote > firstReencrypt, `${what}: ${steps.join(', ')}`);
    assert.equal(steps.lastIndexOf('loadNewMasterKey') < firstReencrypt, true, `${what}: a new MK was loaded after re-encryption began: ${steps.join(', ')}`);
    assert.equal(steps.lastIndexOf('reencryptKeyStorage') < firstPromote, true, `${what}: re-encryption after promotion began: ${steps.join(', ')}`);
  };

  it('rotates every unit in stages and proves key storage opens under the new master key', async () => {
    const s = await setup('happy');
    const before = s.unitSets.create('hsm', { units: 3, entries: ENTRIES });
    const oldVp = (await before.listUnits())[0]!.current.verificationPattern;
    const workflowId = masterKeyRotationWorkflowId('hsm', 'happy');
    const result = await s.worker.runUntil(() => suite.client.workflow.execute(rotateMasterKey, { taskQueue: s.taskQueue, workflowId, args: [{ unitSetId: 'hsm', requestId: 'happy' }] }));
    assert.equal(result.phase, 'done');
    assert.equal(result.checkpoint, 'done');
    assert.equal(result.currentVp, oldVp);
    assert.notEqual(result.newVp, oldVp);
    assert.deepEqual(result.keyStorage, { entries: ENTRIES, readable: ENTRIES });
    assert.equal(result.recoveries, 0);
    await assertRotated(s.unitSets, 'hsm', result.newVp, 'happy path');
    const steps = scheduled((await suite.client.workflow.getHandle(workflowId).fetchHistory()).events ?? []);
    assert.deepEqual(steps, ['precheckMasterKeyRotation', 'loadNewMasterKey', 'reencryptKeyStorage', 'promoteNewMasterKey', 'checkKeyStorage']);
    const text = JSON.stringify(result);
    assert.ok(!/"[0-9a-f]{64}"/.test(text), 'no 32-byte value in hex in the result');
    if (process.env.KEYOPS_RECORD_HISTORIES) await recordHistory(workflowId, 'rotate-master-key-checked-input.json');
  });

  it('fails the pre-check without changing anything, naming what to fix', async () => {
    const s = await setup('precheck');
    const set = s.unitSets.create('hsm', { units: 2, entries: ENTRIES });
    set.setUnit('2', { imprintMode: true });
    const err = await s.worker
      .runUntil(() => suite.client.workflow.execute(rotateMasterKey, { taskQueue: s.taskQueue, workflowId: masterKeyRotationWorkflowId('hsm', 'pre'), args: [{ unitSetId: 'hsm', requestId: 'pre' }] }))
      .catch((e: unknown) => e);
    assert.ok(err instanceof WorkflowFailedError, String(err));
    assert.match(String(err.cause?.message), /not ready for a master-key rotation; nothing was changed: unit\(s\) 2 are in imprint mode/);
    assert.ok((await set.listUnits()).every((u) => u.next.state === 'empty'));
  });

  it('recovers from a failure at every step, before and after its effect on each unit, by the rule of reference 002', async () => {
    const s = await setup('every-fault');
    const points: (Omit<Fault, 'action'> & { expect: string })[] = [
      ...UNITS.flatMap((unitId) => (['before', 'after'] as const).map((timing) => ({ step: 'load' as const, unitId, timing, expect: 'restart' }))),
      ...[1, ENTRIES / 2, ENTRIES].map((afterEntries) => ({ step: 'reencrypt' as const, timing: 'after' as const, afterEntries, expect: 'reencrypt' })),
      ...UNITS.flatMap((unitId) => (['before', 'after'] as const).map((timing) => ({ step: 'promote' as const, unitId, timing, expect: timing === 'after' && unitId === '3' ? 'finish' : 'promote' }))),
    ];
    const cases: (Fault & { expect: string; then?: Fault })[] = points.flatMap((point) => (['fatal', 'transient'] as const).map((action) => ({ ...point, action })));
    // The recovery's own steps (taking a promoted unit out of the selection, putting it back)
    // failing too, before and after their effect.
    for (const step of ['remove', 'add'] as const) {
      for (const timing of ['before', 'after'] as const) {
        cases.push({ step: 'promote', unitId: '1', timing: 'after', action: 'fatal', expect: 'promote', then: { step, unitId: '1', timing, action: 'fatal' } });
      }
    }
    await s.worker.runUntil(async () => {
      // Six at a time: each case has its own unit set and run.
      for (let i = 0; i < cases.length; i += 6) {
        await Promise.all(
          cases.slice(i, i + 6).map(async (c, j) => {
            const id = `case-${i + j}`;
            const what = `${c.action} fault ${c.timing} ${c.step}${c.unitId ? ` on unit ${c.unitId}` : ` after ${c.afterEntries} entries`}${c.then ? `, then ${c.then.timing} ${c.then.step}` : ''}`;
            const set = s.unitSets.create(id, { units: 3, entries: ENTRIES });
            set.injectFault(c);
            if (c.then) set.injectFault(c.then);
            const workflowId = masterKeyRotationWorkflowId(id, 'r');
            const result = await suite.client.workflow.execute(rotateMasterKey, { taskQueue: s.taskQueue, workflowId, args: [{ unitSetId: id, requestId: 'r' }] });
            assert.equal(result.phase, 'done', what);
            await assertRotated(s.unitSets, id, result.newVp, what);
            // A retried set-immediate that finds the selection partly promoted is refused, by
            // design: the recovery decision takes the promoted units out first.
            const partlyPromoted = c.step === 'promote' && (c.timing === 'after' ? c.unitId !== '3' : c.unitId !== '1');
            if (c.action === 'transient' && !partlyPromoted) {
              assert.equal(result.recoveries, 0, `${what}: a retry of the step was enough`);
            } else if (c.then) {
              assert.equal(result.recoveries, 2, `${what}, then ${c.then.step} ${c.then.timing}: ${result.evidence?.reason}`);
            } else {
              assert.equal(result.recoveries, 1, what);
              assert.equal(result.evidence?.decision, c.expect, `${what}: ${result.evidence?.reason}`);
            }
            assertNoForbiddenStep(scheduled((await suite.client.workflow.getHandle(workflowId).fetchHistory()).events ?? []), what);
          }),
        );
      }
    });
  });

  it('stops in needs-operator when recoveries do not finish; refuses forbidden decisions with the reason, resumes on a valid one', async () => {
    const s = await setup('operator');
    const set = s.unitSets.create('hsm', { units: 3, entries: ENTRIES });
    for (let i = 0; i < 4; i++) set.injectFault({ step: 'promote', unitId: '2', timing: 'before', action: 'fatal' });
    const workflowId = masterKeyRotationWorkflowId('hsm', 'operator');
    await s.worker.runUntil(async () => {
      const handle = await suite.client.workflow.start(rotateMasterKey, { taskQueue: s.taskQueue, workflowId, args: [{ unitSetId: 'hsm', requestId: 'operator' }] });
      const early = await handle.executeUpdate(decideRecoveryUpdate, { args: [{ action: 'promote' }] }).catch((e: unknown) => e);
      assert.ok(early instanceof WorkflowUpdateFailedError, 'a decision while the rotation is not waiting for one is refused');
      let state = await handle.query(masterKeyRotationQuery);
      for (let i = 0; state.phase !== 'needs-operator'; i++) {
        assert.ok(i < 400, `reaches needs-operator (phase ${state.phase})`);
        await new Promise((r) => setTimeout(r, 50));
        state = await handle.query(masterKeyRotationQuery);
      }
      assert.equal(state.checkpoint, 'promoting');
      assert.match(state.evidence?.reason ?? '', /3 automatic recoveries did not finish the rotation/);
      assert.equal(state.evidence?.units.length, 3, 'the registers are part of the evidence');
      const refused = async (action: 'restart' | 'reencrypt' | 'finish', reason: RegExp) => {
        const err = await handle.executeUpdate(decideRecoveryUpdate, { args: [{ action, operator: 'test' }] }).catch((e: unknown) => e);
        assert.ok(err instanceof WorkflowUpdateFailedError, `${action} must be refused`);
        assert.match(String(err.cause?.message), reason);
      };
      await refused('restart', /restart is refused at checkpoint promoting: .*makes key storage unusable/);
      await refused('reencrypt', /reencrypt is refused at checkpoint promoting: .*re-encrypting now is forbidden/);
      await refused('finish', /finish is refused: not every unit holds the new master key/);
      assert.deepEqual(await handle.executeUpdate(decideRecoveryUpdate, { args: [{ action: 'promote', operator: 'test', note: 'unit 2 is back' }] }), { accepted: 'promote' });
      // A second decision right behind the first is refused, not kept for a later stop.
      const second = await handle.executeUpdate(decideRecoveryUpdate, { args: [{ action: 'promote', operator: 'someone else' }] }).catch((e: unknown) => e);
      assert.ok(second instanceof WorkflowUpdateFailedError, 'a decision already being applied closes the question');
      const result = await handle.result();
      assert.equal(result.phase, 'done');
      assert.deepEqual(result.decisions, [{ action: 'promote', operator: 'test', note: 'unit 2 is back' }]);
      await assertRotated(s.unitSets, 'hsm', result.newVp, 'after the operator decision');
      if (process.env.KEYOPS_RECORD_HISTORIES) await recordHistory(workflowId, 'rotate-master-key-operator-checked-input.json');
    });
  });

  it('holds a rewrap at the next KMS batch once a master-key rotation under the KMS starts mid-chunk; the rotation end releases it by signal', async () => {
    const dataDir = join(suite.dir, 'rewrap-waits');
    const s = {
      dataDir,
      kms: LocalKms.open({ path: join(dataDir, 'kms', 'keys.sqlite'), masterSecret: randomBytes(32) }),
      registry: SqliteWdekRegistry.open(join(dataDir, 'registry', 'wdeks.sqlite')),
    };
    const { keyId } = await s.kms.createKey({ name: 'held' });
    const wdeks = [];
    for (let i = 0; i < 200; i++) {
      const { wdek, keyVersion } = await s.kms.wrap(keyId);
      wdeks.push({ id: `app/${String(i).padStart(3, '0')}`, keyId, keyVersion, wdek, owner: 'app' });
    }
    s.registry.registerMany(wdeks);
    s.registry.setRewrappedVersion(keyId, 1);
    const mkWorkflowId = masterKeyRotationWorkflowId('kms-hsm', 'mid-chunk');
    const rewrapId = rewrapWorkflowId(keyId, 2);
    // The KMS's third rewrap batch starts the master-key rotation and returns once its new
    // master key is loaded: the rest of the chunk must not move another WDEK.
    let batches = 0;
    let batchesAfterRotationStarted = 0;
    let rotationStarted = false;
    const kms = new Proxy(s.kms, {
      get(target, prop, receiver) {
        if (prop !== 'rewrapBatch') return Reflect.get(target, prop, receiver) as unknown;
        return async (id: string, batch: Buffer[]) => {
          if (rotationStarted) batchesAfterRotationStarted++;
          const result = await target.rewrapBatch(id, batch);
          if (++batches === 3) {
            const before = new Map((await units.listUnits()).map((u) => [u.unitId, u.current.verificationPattern]));
            await suite.client.workflow.start(rotateMasterKey, { taskQueue, workflowId: mkWorkflowId, args: [{ unitSetId: 'kms-hsm', requestId: 'mid-chunk' }] });
            // Loaded on every unit: in its new register, or already promoted out of it (the
            // rotation may get that far between two looks on a loaded machine).
            const loaded = (u: CryptoUnit) => u.next.state !== 'empty' || u.current.verificationPattern !== before.get(u.unitId);
            await waitUntil('the new master key to be loaded', async () => ((await units.listUnits()).every(loaded) ? true : undefined));
            rotationStarted = true;
          }
          return result;
        };
      },
    });
    const local = localActivities({ dataDir: s.dataDir, kms, registry: s.registry, kmsUnitSet: 'kms-hsm' });
    const units = local.unitSets.create('kms-hsm', { units: 3, entries: ENTRIES });
    // The rotation stops before promoting unit 2 until an operator decides: it runs as long as the test wants.
    for (let i = 0; i < 4; i++) units.injectFault({ step: 'promote', unitId: '2', timing: 'before', action: 'fatal' });
    const taskQueue = uniqueTaskQueue('mid-chunk');
    const worker = await createTestWorker(suite.env, { taskQueue, activities: local.activities });
    await worker.runUntil(async () => {
      const rewrap = await suite.client.workflow.start(rotateRootKey, {
        taskQueue,
        workflowId: rewrapId,
        args: [{ keyId, targetVersion: 2, rotate: true, parallelism: 1, chunkSize: 1000, batchSize: 10 }],
      });
      const held = await waitUntil('the rewrap to report its hold', async () => {
        const p = await rewrap.query(rewrapProgressQuery);
        return p.heldBy ? p : undefined;
      });
      assert.equal(held.phase, 'rewrapping');
      assert.match(held.heldBy ?? '', /rewrap of .* waits/);
      assert.equal(batchesAfterRotationStarted, 0, 'no KMS batch after the rotation started');
      // Batches already in flight beside the one that saw the rotation start finish and are
      // recorded; none starts after it.
      const moved = 200 - s.registry.countBelowVersion(keyId, 2).below;
      assert.ok(batches >= 3 && moved === batches * 10 && moved < 200, `${batches} batches moved ${moved} WDEKs before the hold`);
      assert.deepEqual({ total: held.total, rewrapped: held.rewrapped }, { total: 200, rewrapped: moved }, 'the count shown while held is exact');
      // The held chunk failed at once, non-retryable: a rotation of any length spends no retry budget.
      const heldFailures = ((await rewrap.fetchHistory()).events ?? []).flatMap((e) => {
        const f = e.activityTaskFailedEventAttributes?.failure;
        return f ? [f] : [];
      });
      assert.equal(heldFailures.length, 1, JSON.stringify(heldFailures.map((f) => f.message)));
      assert.equal(heldFailures[0]!.applicationFailureInfo?.type, 'MASTER_KEY_ROTATION_IN_PROGRESS');
      assert.equal(heldFailures[0]!.applicationFailureInfo?.nonRetryable, true);

      const mk = suite.client.workflow.getHandle<typeof rotateMasterKey>(mkWorkflowId);
      await waitUntil('the rotation to need an operator', async () => ((await mk.query(masterKeyRotationQuery)).phase === 'needs-operator' ? true : undefined));
      await mk.executeUpdate(decideRecoveryUpdate, { args: [{ action: 'promote', operator: 'test' }] });
      assert.equal((await mk.result()).phase, 'done');
      const result = await rewrap.result();
      assert.deepEqual({ total: result.total, rewrapped: result.rewrapped, verified: result.verified, heldBy: result.heldBy }, { total: 200, rewrapped: 200, verified: 200, heldBy: undefined });
      assert.deepEqual(s.registry.countBelowVersion(keyId, 2), { total: 200, below: 0 });
      // Released by the rotation's signal: the next chunk was scheduled after it arrived.
      const events = (await rewrap.fetchHistory()).events ?? [];
      const released = events.findIndex((e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'masterKeyRotationEnded');
      assert.ok(released > 0, 'the rotation signalled its end to the held rewrap');
      const nextChunk = events.findIndex((e, i) => i > released && e.activityTaskScheduledEventAttributes?.activityType?.name === 'rewrapChunk');
      assert.ok(nextChunk > released, 'the held chunk ran again after the signal');
      const mkEvents = (await mk.fetchHistory()).events ?? [];
      assert.ok(mkEvents.some((e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'awaitMasterKeyRotation'), 'the rewrap asked the rotation to tell it');
      if (process.env.KEYOPS_RECORD_HISTORIES) {
        await recordHistory(rewrapId, 'rotate-root-key-master-key-hold.json');
        await recordHistory(mkWorkflowId, 'rotate-master-key-with-waiters.json');
      }
      await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished');
    });
  });

  it('survives SIGKILL of its worker while loading, re-encrypting and promoting', async () => {
    const dataDir = join(suite.dir, 'sigkill');
    const unitSets = new SimulatedUnitSets(join(dataDir, 'crypto-units'));
    const taskQueue = uniqueTaskQueue('mk-sigkill');
    const secret = randomBytes(32).toString('base64');
    const env = async () => ({
      TEMPORAL_ADDRESS: testServerAddress(),
      KEYOPS_TASK_QUEUE: taskQueue,
      KEYOPS_DATA_DIR: dataDir,
      KEYOPS_LOG_FORMAT: 'json',
      KEYOPS_METRICS_ADDRESS: `127.0.0.1:${await freePort()}`,
      KEYOPS_KMS_MASTER_SECRET: secret,
    });
    const kills: Fault[] = [
      { step: 'load', unitId: '2', timing: 'after', action: 'kill' },
      { step: 'reencrypt', timing: 'after', afterEntries: ENTRIES / 2, action: 'kill' },
      { step: 'promote', unitId: '1', timing: 'after', action: 'kill' },
    ];
    for (const [i, fault] of kills.entries()) {
      const id = `kill-${i}`;
      unitSets.create(id, { units: 3, entries: ENTRIES }).injectFault(fault);
      const first = new WorkerProcess(await env());
      await first.waitFor('worker started');
      const handle = await suite.client.workflow.start(rotateMasterKey, {
        taskQueue,
        workflowId: masterKeyRotationWorkflowId(id, 'r'),
        args: [{ unitSetId: id, requestId: 'r', heartbeatTimeout: '2 seconds' }],
      });
      if (first.child.exitCode === null && first.child.signalCode === null) await once(first.child, 'exit');
      assert.equal(first.child.signalCode, 'SIGKILL', `the ${fault.step} fault killed the worker`);
      const second = new WorkerProcess(await env());
      try {
        const result = await Promise.race([
          handle.result(),
          new Promise<never>((_, reject) =>
            setTimeout(() => reject(new Error(`no result after the ${fault.step} kill within 60 s; second worker: ${second.stderr} ${JSON.stringify(second.lines.slice(-5))}`)), 60_000).unref(),
          ),
        ]);
        assert.equal(result.phase, 'done');
        await assertRotated(unitSets, id, result.newVp, `SIGKILL ${fault.timing} ${fault.step}`);
        assertNoForbiddenStep(scheduled((await handle.fetchHistory()).events ?? []), `SIGKILL ${fault.step}`);
      } finally {
        second.child.kill('SIGTERM');
        if (second.child.exitCode === null) await once(second.child, 'exit');
      }
    }
    unitSets.close();
  });
});
