import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CryptoUnitError } from '../activities/crypto-units/crypto-unit-set';
import { precheckProblems } from '../activities/crypto-units/precheck';
import { SimulatedCryptoUnits } from '../activities/crypto-units/simulated-crypto-units';
import { masterKeyRotationState } from '../activities/master-key-rotation';

describe('simulated crypto units (real AES-256-GCM key storage under the register values)', () => {
  let dir: string;
  let n = 0;
  const fresh = (options?: Parameters<typeof SimulatedCryptoUnits.create>[1]) => SimulatedCryptoUnits.create(join(dir, `set-${++n}.sqlite`), options);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keyops-units-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('creating a set removes the drafts of a process that died creating it, and keeps a live one\'s', async () => {
    const path = join(dir, `drafts-${++n}.sqlite`);
    // A pid that existed and is gone now, and this live process's.
    const child = spawnSync(process.execPath, ['-e', '']);
    const deadDraft = `${path}.creating-${child.pid}-0000dead`;
    const liveDraft = `${path}.creating-${process.pid}-0000live`;
    writeFileSync(deadDraft, 'a master-key set half written');
    writeFileSync(liveDraft, 'another creator at work');
    const units = SimulatedCryptoUnits.create(path);
    assert.equal((await units.checkKeyStorage()).readable, 16);
    assert.equal(existsSync(deadDraft), false, 'the dead process\'s draft is gone');
    assert.equal(existsSync(liveDraft), true, 'a live process\'s draft is left to it');
    assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith(`drafts-${n}.sqlite.creating-`) && f !== basename(liveDraft)), []);
    units.close();
  });

  it('rotates in stages: key storage opens under the new master key and only under it', async () => {
    const units = fresh({ units: 3, entries: 40 });
    const before = await units.checkKeyStorage();
    assert.deepEqual({ entries: before.entries, readable: before.readable }, { entries: 40, readable: 40 });
    assert.deepEqual(precheckProblems(await units.listUnits()), []);

    const { verificationPattern: newVp } = await units.loadNewMasterKey();
    assert.notEqual(newVp, before.verificationPattern);
    assert.deepEqual(masterKeyRotationState(await units.listUnits()).inProgress, true);
    assert.equal((await units.reencryptKeyStorage()).entries, 40);
    // Re-encrypted, not yet promoted: the current registers no longer open key storage.
    assert.equal((await units.checkKeyStorage()).readable, 0);
    await units.promoteNewMasterKey();
    const afterRotation = await units.checkKeyStorage();
    assert.deepEqual(afterRotation, { entries: 40, readable: 40, verificationPattern: newVp });
    assert.ok((await units.listUnits()).every((u) => u.current.verificationPattern === newVp && u.next.state === 'empty'));
    assert.equal(masterKeyRotationState(await units.listUnits()).inProgress, false);
    units.close();
  });

  it('the forbidden recovery (a new master key after re-encryption began) destroys key storage for good', async () => {
    const units = fresh({ units: 2, entries: 30 });
    await units.loadNewMasterKey();
    units.injectFault({ step: 'reencrypt', timing: 'after', afterEntries: 12, action: 'fatal' });
    await assert.rejects(units.reencryptKeyStorage(), /simulated fault/);
    // Reference 002's warning: rerunning auto-mk-rotate here generates another new MK...
    await units.loadNewMasterKey();
    await units.reencryptKeyStorage();
    await units.promoteNewMasterKey();
    // ...and the 12 entries already re-encrypted under the first one are under a value no
    // register holds any more.
    const check = await units.checkKeyStorage();
    assert.deepEqual({ entries: check.entries, readable: check.readable }, { entries: 30, readable: 18 });
    units.close();
  });

  it('the safe recovery of the same failure (re-encrypt only) keeps every entry', async () => {
    const units = fresh({ units: 2, entries: 30 });
    const { verificationPattern: newVp } = await units.loadNewMasterKey();
    units.injectFault({ step: 'reencrypt', timing: 'after', afterEntries: 12, action: 'fatal' });
    await assert.rejects(units.reencryptKeyStorage(), /simulated fault/);
    await units.reencryptKeyStorage();
    await units.promoteNewMasterKey();
    assert.deepEqual(await units.checkKeyStorage(), { entries: 30, readable: 30, verificationPattern: newVp });
    units.close();
  });

  it('set-immediate refuses a selection with a promoted unit; taking it out first works (reference 002)', async () => {
    const units = fresh({ units: 3, entries: 5 });
    const { verificationPattern: newVp } = await units.loadNewMasterKey();
    await units.reencryptKeyStorage();
    units.injectFault({ step: 'promote', unitId: '2', timing: 'before', action: 'fatal' });
    await assert.rejects(units.promoteNewMasterKey(), /before its effect on unit 2/);
    const err = await units.promoteNewMasterKey().catch((e: unknown) => e);
    assert.ok(err instanceof CryptoUnitError && err.code === 'PRECONDITION_FAILED', String(err));
    assert.deepEqual(err.unitIds, ['1']);
    await units.removeFromSelection(['1']);
    await units.promoteNewMasterKey();
    await units.addToSelection(['1']);
    assert.deepEqual(await units.checkKeyStorage(), { entries: 5, readable: 5, verificationPattern: newVp });
  });

  it('faults fire once and persist across reopening; the pre-check names every unmet condition', async () => {
    const path = join(dir, 'persist.sqlite');
    const units = SimulatedCryptoUnits.create(path, { units: 2, entries: 3 });
    units.injectFault({ step: 'load', unitId: '2', timing: 'after', action: 'transient' });
    const err = await units.loadNewMasterKey().catch((e: unknown) => e);
    assert.ok(err instanceof CryptoUnitError && err.retryable, String(err));
    units.close();
    const reopened = SimulatedCryptoUnits.open(path);
    const registers = await reopened.listUnits();
    assert.ok(registers.every((u) => u.next.state === 'valid'), 'both units were loaded before the fault fired');
    await reopened.loadNewMasterKey();

    const other = fresh({ units: 3 });
    other.setUnit('1', { imprintMode: true });
    other.setUnit('2', { signatureThreshold: 3, administrators: ['admin-1', 'admin-9'] });
    await other.removeFromSelection(['3']);
    other.setAuthExpired(true);
    await assert.rejects(other.checkAuthentication(), (e: unknown) => e instanceof CryptoUnitError && e.code === 'AUTH_EXPIRED' && !e.retryable);
    const problems = precheckProblems(await other.listUnits());
    assert.equal(problems.length, 4, problems.join('\n'));
    assert.match(problems.join('\n'), /unit\(s\) 1 are in imprint mode/);
    assert.match(problems.join('\n'), /signature thresholds differ \(unit 1: 2, unit 2: 3\)/);
    assert.match(problems.join('\n'), /only 1 administrator\(s\) are installed in every unit; the signature threshold needs 3/);
    assert.match(problems.join('\n'), /unit\(s\) 3 are not selected/);
    assert.deepEqual(precheckProblems(registers), ['unit(s) 1, 2 still hold a new master key from an unfinished rotation: finish that rotation (keyops mk status) before starting another']);
  });
});
