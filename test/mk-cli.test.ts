import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { MasterKeyRotationState } from '../workflows/master-key-messages';
import { keyops } from './helpers/child-process';
import { localWorker } from './helpers/local-activities';
import { testServerAddress, useSuiteFixture } from './helpers/temporal';

describe('keyops mk commands', () => {
  const suite = useSuiteFixture('mk-cli');

  it('rotates with --wait, shows a stopped rotation with its evidence, refuses a forbidden decision (exit 2) and resumes on a valid one', async () => {
    const { taskQueue, worker, unitSets } = await localWorker(suite.env, suite.dir, 'mk-cli');
    const run = (...args: string[]) => keyops([...args, '--task-queue', taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });
    const plain = (...args: string[]) => keyops(args, { TEMPORAL_ADDRESS: testServerAddress() });
    unitSets.create('hsm-a', { units: 3, entries: 8 });
    const stuck = unitSets.create('hsm-b', { units: 2, entries: 8 });
    for (let i = 0; i < 4; i++) stuck.injectFault({ step: 'promote', unitId: '2', timing: 'before', action: 'fatal' });

    await worker.runUntil(async () => {
      const done = await run('mk', 'rotate', 'hsm-a', '--request', 'r1', '--wait', '--json');
      assert.equal(done.code, 0, done.stderr);
      const state = JSON.parse(done.stdout) as MasterKeyRotationState;
      assert.deepEqual([state.phase, state.checkpoint, state.keyStorage], ['done', 'done', { entries: 8, readable: 8 }]);
      assert.equal(done.stderr, '', '--json prints the result only');

      const stopped = await run('mk', 'rotate', 'hsm-b', '--request', 'r2', '--wait');
      assert.equal(stopped.code, 1, 'a run that waits for an operator is not a success');
      assert.match(stopped.stderr, /mk-rotation\/hsm-b\/r2 waits for an operator decision/);
      // Followed live, one line per change off a terminal (phase, stages done of 5), the end state last.
      assert.match(stopped.stderr, /^ {2}needs-operator 4\/5\nkeyops: mk-rotation\/hsm-b\/r2 waits/m);
      assert.match(stopped.stdout, /needs-operator \(checkpoint promoting\)/);
      assert.match(stopped.stdout, /unit 1 \(not selected\): current [0-9a-f]{32}, new empty\n {4}unit 2: current [0-9a-f]{32}, new [0-9a-f]{32}/);
      assert.match(stopped.stdout, /answer: keyops mk decide hsm-b r2 --action <restart\|reencrypt\|promote\|finish\|abort>/);
      // The Web UI's current details of the stopped run: why, the registers, and the answering command.
      const metadata = await suite.client.workflow.getHandle('mk-rotation/hsm-b/r2').query<{ currentDetails?: string }>('__temporal_workflow_metadata');
      assert.match(
        metadata.currentDetails ?? '',
        /^\*\*needs-operator\*\* .*Registers: unit 1 current [0-9a-f]{32}, new empty; unit 2 current [0-9a-f]{32}, new [0-9a-f]{32}\. Answer with `keyops mk decide hsm-b r2 --action <restart\|reencrypt\|promote\|finish\|abort>`/,
      );

      const refused = await plain('mk', 'decide', 'hsm-b', 'r2', '--action', 'restart', '--operator', 'alice');
      assert.equal(refused.code, 2, refused.stderr);
      assert.match(refused.stderr, /refused: restart is refused at checkpoint promoting: .*key storage unusable/);
      const unknown = await plain('mk', 'decide', 'hsm-b', 'r2', '--action', 'regenerate');
      assert.equal(unknown.code, 2);
      assert.match(unknown.stderr, /--action "regenerate" is not one of restart, reencrypt, promote, finish, abort/);
      const missing = await plain('mk', 'status', 'hsm-b', 'nope');
      assert.equal(missing.code, 2);
      assert.match(missing.stderr, /no master-key rotation mk-rotation\/hsm-b\/nope/);

      const accepted = await plain('mk', 'decide', 'hsm-b', 'r2', '--action', 'promote', '--operator', 'alice', '--note', 'unit 2 replaced');
      assert.equal(accepted.code, 0, accepted.stderr);
      assert.match(accepted.stdout, /accepted: promote/);
      let status: MasterKeyRotationState | undefined;
      for (let i = 0; status?.phase !== 'done'; i++) {
        assert.ok(i < 100, `the rotation finishes after the decision (phase ${status?.phase})`);
        await new Promise((r) => setTimeout(r, 200));
        const shown = await plain('mk', 'status', 'hsm-b', 'r2', '--json');
        assert.equal(shown.code, 0, shown.stderr);
        status = JSON.parse(shown.stdout) as MasterKeyRotationState;
      }
      assert.deepEqual(status.decisions, [{ action: 'promote', operator: 'alice', note: 'unit 2 replaced' }]);
      assert.deepEqual(await stuck.checkKeyStorage(), { entries: 8, readable: 8, verificationPattern: status.newVp });
    });
  });
});
