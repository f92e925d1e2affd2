import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { localActivities } from './helpers/local-activities';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { WATCH_SCHEDULE_ID } from '../client/schedules/watch-root-keys-schedule';
import type { watchRootKeys } from '../workflows';
import { keyEntityWorkflowId } from '../workflows/root-key-messages';
import { keyops } from './helpers/child-process';
import { createTestWorker, testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

/** `keyops key show|rotate` through a real child process, against a real worker and local KMS. */
describe('keyops key commands', () => {
  const suite = useSuiteFixture('key-cli');

  it('rotates with --wait; refuses bad ids, unknown and disabled keys, a second rotation within the hour; manages the watch schedule', async () => {
    const kms = LocalKms.open({ path: join(suite.dir, 'kms.sqlite'), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'wdeks.sqlite'));
    const { keyId } = await kms.createKey({ name: 'cli-key' });
    const { keyId: disabledKey } = await kms.createKey({ name: 'cli-disabled' });
    await kms.disableKey(disabledKey);
    for (let i = 0; i < 25; i++) {
      const { wdek, keyVersion } = await kms.wrap(keyId);
      registry.register({ id: `cli-${i}`, keyId, keyVersion, wdek, owner: 'cli-test' });
    }
    const taskQueue = uniqueTaskQueue('key-cli');
    const worker = await createTestWorker(suite.env, {
      taskQueue,
      activities: localActivities({ dataDir: suite.dir, kms, registry }).activities,
    });
    const run = (...args: string[]) => keyops([...args, '--task-queue', taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });

    await worker.runUntil(async () => {
      const created = await run('key', 'create', 'operator-key', '--json');
      assert.equal(created.code, 0, created.stderr);
      const createdId = (JSON.parse(created.stdout) as { keyId: string }).keyId;
      assert.equal((await kms.getKeyMetadata(createdId)).name, 'operator-key');
      const badName = await run('key', 'create', 'x');
      assert.equal(badName.code, 2);
      assert.match(badName.stderr, /key name "x" must be 2 to 90 characters/);

      // By name: the key keyops protects WDEKs with.
      const rotated = await run('key', 'rotate', 'cli-key', '--wait', '--json');
      assert.equal(rotated.code, 0, rotated.stderr);
      const out = JSON.parse(rotated.stdout) as { workflowId: string; verified: number; targetVersion: number; rotated: boolean };
      assert.deepEqual(
        { workflowId: out.workflowId, verified: out.verified, targetVersion: out.targetVersion, rotated: out.rotated },
        { workflowId: `rewrap/${keyId}/v2`, verified: 25, targetVersion: 2, rotated: true },
      );

      const rotation = await suite.client.workflow.getHandle(out.workflowId).describe();
      assert.match((await rotation.staticDetails()) ?? '', new RegExp(`^Started by \`keyops key rotate\`\\. Creates version 2 of root key \`${keyId}\`[\\s\\S]*keyops rewrap status ${keyId}`));

      const shown = await run('key', 'show', keyId, '--json');
      assert.equal(shown.code, 0, shown.stderr);
      assert.deepEqual(
        (({ currentVersion, rewrappedVersion, state }) => ({ currentVersion, rewrappedVersion, state }))(JSON.parse(shown.stdout) as Record<string, unknown>),
        { currentVersion: 2, rewrappedVersion: 2, state: 'active' },
      );

      const again = await run('key', 'rotate', keyId);
      assert.equal(again.code, 1);
      assert.match(again.stderr, /one rotation per hour, so the next is allowed at \d{4}-\d\d-\d\dT/);

      const malformed = await run('key', 'rotate', 'not/a key!');
      assert.equal(malformed.code, 2);
      assert.match(malformed.stderr, /key "not\/a key!" is neither a key id \(a UUID/);
      const kmsOnlyWait = await run('key', 'rotate', keyId, '--kms-only', '--wait');
      assert.equal(kmsOnlyWait.code, 2);
      assert.match(kmsOnlyWait.stderr, /--kms-only starts no rewrap, so there is nothing to --wait for/);
      const unknownName = await run('key', 'rotate', 'no-such-key');
      assert.equal(unknownName.code, 2);
      assert.match(unknownName.stderr, /no key named "no-such-key" protects WDEKs registered with keyops; give the key's id/);
      // A key without WDEKs is not found by name: rotating it would rewrap nothing keyops knows.
      const notRegistered = await run('key', 'show', 'cli-disabled');
      assert.equal(notRegistered.code, 2);

      const unknown = randomUUID();
      const missing = await run('key', 'rotate', unknown);
      assert.equal(missing.code, 2, missing.stderr);
      assert.match(missing.stderr, new RegExp(`key ${unknown} does not exist in the KMS`));

      const disabled = await run('key', 'rotate', disabledKey);
      assert.equal(disabled.code, 1);
      assert.match(disabled.stderr, /is disabled/);

      for (const r of [again, malformed, unknownName, notRegistered, missing, disabled]) assert.doesNotMatch(r.stderr, /^\s+at /m);

      const watched = await run('key', 'watch', '--json');
      assert.equal(watched.code, 0, watched.stderr);
      assert.deepEqual(JSON.parse(watched.stdout), { checked: 1, started: [], alreadyRunning: [], unreadable: [] }, 'only keys with WDEKs are watched');

      // The hourly watcher schedule: created, then idempotent, then updated; it really runs.
      const change = async (every: string) => {
        const r = await run('key', 'watch', '--every', every, '--json');
        assert.equal(r.code, 0, r.stderr);
        return (JSON.parse(r.stdout) as { change: string }).change;
      };
      assert.equal(await change('1h'), 'created');
      assert.equal(await change('1 hour'), 'unchanged');
      assert.equal(await change('30m'), 'updated');
      const schedule = suite.client.schedule.getHandle(WATCH_SCHEDULE_ID);
      const described = await schedule.describe();
      assert.equal(described.spec.intervals?.[0]?.every, 30 * 60_000);
      assert.equal(described.action.type === 'startWorkflow' && described.action.workflowType, 'watchRootKeys');
      await schedule.trigger();
      let runs = 0;
      for (let i = 0; i < 100 && runs === 0; i++) {
        runs = (await schedule.describe()).info.recentActions.length;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(runs, 1, 'the triggered schedule started a watch');
      const fired = (await schedule.describe()).info.recentActions[0]!.action.workflow.workflowId;
      assert.equal((await suite.client.workflow.getHandle<typeof watchRootKeys>(fired).result()).checked, 1);
      await schedule.delete();

      const tooOften = await run('key', 'watch', '--every', '10s');
      assert.equal(tooOften.code, 2);
      assert.match(tooOften.stderr, /--every "10s" is not a duration of at least one minute/);
    });
    assert.equal((await kms.getKeyMetadata(keyId)).versions.length, 2, 'refused requests rotated nothing');
    await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished');
    registry.close();
    kms.close();
  });
});
