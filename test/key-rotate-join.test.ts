import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { rotateRootKey } from '../workflows';
import { keyEntityWorkflowId, rewrapWorkflowId } from '../workflows/root-key-messages';
import { spawn } from 'node:child_process';
import { ROOT, keyops } from './helpers/child-process';
import { holdableKms } from './helpers/held-kms';
import { localActivities } from './helpers/local-activities';
import { createTestWorker, testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';

/**
 * `keyops key rotate` while the same rotation (same key, same next version, so the same workflow
 * id) was started elsewhere, by the schedule or the watcher: the operator is told, and with
 * --wait follows that run to its end instead of failing.
 */
describe('keyops key rotate joins a rotation already running', () => {
  const suite = useSuiteFixture('key-rotate-join');

  it('without --wait names the running run and how to follow it; with --wait follows it to the end', async () => {
    const base = LocalKms.open({ path: join(suite.dir, 'kms.sqlite'), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'wdeks.sqlite'));
    const { keyId } = await base.createKey({ name: 'joined' });
    for (let i = 0; i < 30; i++) {
      const { wdek, keyVersion } = await base.wrap(keyId);
      registry.register({ id: `j-${i}`, keyId, keyVersion, wdek, owner: 'join-test' });
    }
    registry.setRewrappedVersion(keyId, 1);
    const held = holdableKms(base);
    const taskQueue = uniqueTaskQueue('key-rotate-join');
    const worker = await createTestWorker(suite.env, { taskQueue, activities: localActivities({ dataDir: suite.dir, kms: held.kms, registry }).activities });
    const run = (...args: string[]) => keyops([...args, '--task-queue', taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });
    const workflowId = rewrapWorkflowId(keyId, 2);

    await worker.runUntil(async () => {
      // "The schedule" starts rewrap/<key>/v2 and is held just before the KMS rotates.
      const gate = held.hold('rotateKey');
      const first = await suite.client.workflow.start(rotateRootKey, { taskQueue, workflowId, args: [{ keyId, targetVersion: 2, rotate: true }] });
      await waitUntil('the first run to reach the KMS rotation', () => (gate.reached > 0 ? true : undefined));

      const told = await run('key', 'rotate', keyId);
      assert.equal(told.code, 1, told.stderr);
      assert.match(told.stderr, new RegExp(`a rotation of key ${keyId} to version 2 is already running: rewrap/${keyId}/v2; follow it: keyops rewrap status ${keyId}`));
      assert.doesNotMatch(told.stderr, /^\s+at /m);

      const cli = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'client/main.ts'), 'key', 'rotate', keyId, '--wait', '--json', '--task-queue', taskQueue], {
        cwd: ROOT,
        env: { ...process.env, TEMPORAL_ADDRESS: testServerAddress() },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      let stdout = '';
      cli.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      cli.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      const exited = once(cli, 'close') as Promise<[number | null]>;
      // Only once the CLI has found the run already started does the first run go on.
      await waitUntil('the CLI to join the running rotation', () => (stderr.includes('is already running (started elsewhere): following it') ? true : undefined), 120_000);
      gate.release();
      const [code] = await exited;
      const joined = { code, stdout, stderr };
      assert.equal(joined.code, 0, joined.stderr);
      const out = JSON.parse(joined.stdout) as { workflowId: string; joined: boolean; verified: number; targetVersion: number; rotated: boolean };
      assert.deepEqual(
        { workflowId: out.workflowId, joined: out.joined, verified: out.verified, targetVersion: out.targetVersion, rotated: out.rotated },
        { workflowId, joined: true, verified: 30, targetVersion: 2, rotated: true },
      );
      assert.equal((await first.result()).verified, 30, 'one run, both callers saw its outcome');
      await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished');
    });
    assert.deepEqual((await base.getKeyMetadata(keyId)).versions.map((v) => v.version), [1, 2], 'one new version');
    assert.deepEqual(new Set(registry.list(keyId, {}, 100).map((r) => r.keyVersion)), new Set([2]));
  });
});
