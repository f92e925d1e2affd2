import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment, defaultActivityInfo } from '@temporalio/testing';
import { RotationLedger } from '../activities/crypto-units/rotation-ledger';
import { SimulatedUnitSets } from '../activities/crypto-units/simulated-unit-sets';
import { createMasterKeyActivities } from '../activities/master-key-rotation';

/**
 * The guards inside the master-key activities against what a workflow cannot prevent: an
 * attempt that stalled and resumes after its retry moved on (a "zombie"), and a second rotation
 * of the same set. The SDK's activity environment runs them as one rotation or another would.
 */
describe('master-key activities: guards against late and concurrent steps', () => {
  let dir: string;
  let unitSets: SimulatedUnitSets;
  let ledger: RotationLedger;
  /** Runs activities as the rotation with this workflow id would. */
  const as = (workflowId: string) => {
    const env = new MockActivityEnvironment({ workflowExecution: { ...defaultActivityInfo.workflowExecution, workflowId, runId: 'run' } });
    return { run: <R>(step: () => Promise<R>): Promise<R> => env.run(step) };
  };
  const refused = (type: string, message: RegExp) => (err: unknown) => err instanceof ApplicationFailure && err.type === type && message.test(err.message);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keyops-mk-activities-'));
    unitSets = new SimulatedUnitSets(join(dir, 'units'));
    ledger = RotationLedger.open(join(dir, 'ledger.sqlite'));
  });
  after(async () => {
    unitSets.close();
    ledger.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses a second rotation of a set, and a new master key once re-encryption began; promote refuses a value key storage was not moved to', async () => {
    const acts = createMasterKeyActivities({ cryptoUnitSet: (id) => unitSets.get(id), rotationLedger: ledger });
    const set = unitSets.create('hsm', { units: 3, entries: 8 });
    const a = as('mk-rotation/hsm/a');
    const { currentVp } = await a.run(() => acts.precheckMasterKeyRotation({ unitSetId: 'hsm' }));
    await assert.rejects(as('mk-rotation/hsm/b').run(() => acts.precheckMasterKeyRotation({ unitSetId: 'hsm' })), refused('PRECHECK_FAILED', /rotation mk-rotation\/hsm\/a holds this unit set/));

    const { newVp } = await a.run(() => acts.loadNewMasterKey({ unitSetId: 'hsm' }));
    await a.run(() => acts.reencryptKeyStorage({ unitSetId: 'hsm', currentVp, newVp }));
    // The zombie: rotation a's first load attempt, resuming after re-encryption began.
    await assert.rejects(a.run(() => acts.loadNewMasterKey({ unitSetId: 'hsm' })), refused('FORBIDDEN_STEP', /re-encryption of key storage towards [0-9a-f]{32} began: a new master key must not be generated/));
    assert.ok((await set.listUnits()).every((u) => u.next.verificationPattern === newVp), 'the new registers still hold the value key storage is under');

    // Had a load slipped through anyway (it bypasses the ledger here), promote would refuse it.
    await set.loadNewMasterKey();
    await assert.rejects(a.run(() => acts.promoteNewMasterKey({ unitSetId: 'hsm', currentVp, newVp })), refused('PRECONDITION_FAILED', /unit\(s\) 1, 2, 3 do not hold current MK .* and new MK .*: not promoting/));
    assert.ok((await set.listUnits()).every((u) => u.current.verificationPattern === currentVp), 'nothing was promoted');
  });

  it('releases the set once key storage is proven under the new master key', async () => {
    const acts = createMasterKeyActivities({ cryptoUnitSet: (id) => unitSets.get(id), rotationLedger: ledger });
    unitSets.create('hsm-2', { units: 2, entries: 4 });
    const a = as('mk-rotation/hsm-2/a');
    const { currentVp } = await a.run(() => acts.precheckMasterKeyRotation({ unitSetId: 'hsm-2' }));
    const { newVp } = await a.run(() => acts.loadNewMasterKey({ unitSetId: 'hsm-2' }));
    await a.run(() => acts.reencryptKeyStorage({ unitSetId: 'hsm-2', currentVp, newVp }));
    await a.run(() => acts.promoteNewMasterKey({ unitSetId: 'hsm-2', currentVp, newVp }));
    assert.deepEqual(await a.run(() => acts.checkKeyStorage({ unitSetId: 'hsm-2', expectedVp: newVp })), { entries: 4, readable: 4 });
    assert.equal(ledger.get('hsm-2'), undefined);
    const b = as('mk-rotation/hsm-2/b');
    assert.equal((await b.run(() => acts.precheckMasterKeyRotation({ unitSetId: 'hsm-2' }))).currentVp, newVp, 'the next rotation may start');
  });
});
