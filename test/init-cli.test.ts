import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DemoData } from '../activities/demo-data';
import { keyEntityWorkflowId } from '../workflows/root-key-messages';
import { keyops } from './helpers/child-process';
import { localWorker } from './helpers/local-activities';
import { testServerAddress, useSuiteFixture } from './helpers/temporal';

describe('keyops init', () => {
  const suite = useSuiteFixture('init-cli');

  it('creates the demo key, encrypted database and WDEKs once; the demo database then backs up', async () => {
    const { kms, taskQueue, worker, engine } = await localWorker(suite.env, suite.dir, 'init-cli');
    const run = (...args: string[]) => keyops([...args, '--task-queue', taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });

    await worker.runUntil(async () => {
      const first = await run('init', '--json');
      assert.equal(first.code, 0, first.stderr);
      const demo = JSON.parse(first.stdout) as DemoData;
      assert.deepEqual([demo.created, demo.databaseId, demo.rows], [true, 'demo', 1000]);
      assert.ok(demo.wdeks >= 2000, `${demo.wdeks} WDEKs`);
      assert.equal((await kms.getKeyMetadata(demo.keyId)).currentVersion, 1);
      assert.equal((await engine.keyState('demo')).keyId, demo.keyId, 'the database is protected by the demo key');

      const again = await run('init');
      assert.equal(again.code, 0, again.stderr);
      assert.match(again.stdout, new RegExp(`already there: root key ${demo.keyId}, encrypted database demo \\(1000 rows\\)`));

      const backup = await run('backup', 'run', 'demo', '--night', '2026-12-01', '--wait', '--json');
      assert.equal(backup.code, 0, backup.stderr);
      assert.equal((JSON.parse(backup.stdout) as { phase: string }).phase, 'done');

      // --wait follows the run: off a terminal, one stderr line per change of phase or count.
      const rotated = await run('key', 'rotate', demo.keyId, '--wait');
      assert.equal(rotated.code, 0, rotated.stderr);
      assert.match(rotated.stderr, /^ {2}(rotating|rewrapping|verifying|recording|announcing|done)\b/m);
      assert.match(rotated.stderr, new RegExp(`^ {2}\\w+ \\d+/${demo.wdeks}$`, 'm'), 'progress counts against every WDEK of the key');
      assert.match(rotated.stdout, new RegExp(`key ${demo.keyId} rotated at version 2; ${demo.wdeks} WDEK\\(s\\) rewrapped and verified`));
      await suite.client.workflow.getHandle(keyEntityWorkflowId(demo.keyId)).terminate('test finished');
    });
  });
});
