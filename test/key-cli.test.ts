import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { localActivities } from './helpers/local-activities';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { WATCH_SCHEDULE_ID } from '../client/schedules/watch-root-keys-schedule';
import type { watchRootKeys } from '../workflows';
import { keyEntityWorkflowId, rewrapWorkflowId } from '../workflows/root-key-messages';
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
    // Two keys with one name, and a key for --kms-only: each protects registered WDEKs.
    const twins = [(await kms.createKey({ name: 'twin' })).keyId, (await kms.createKey({ name: 'twin' })).keyId];
    const { keyId: kmsOnlyKey } = await kms.createKey({ name: 'cli-kms-only' });
    for (const [i, k] of [...twins, kmsOnlyKey].entries()) {
      const { wdek, keyVersion } = await kms.wrap(k);
      registry.register({ id: `cli-other-${i}`, keyId: k, keyVersion, wdek, owner: 'cli-test' });
      registry.setRewrappedVersion(k, 1);
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
      assert.match(notRegistered.stderr, /no key named "cli-disabled" protects WDEKs registered with keyops[\s\S]*hint: a name finds only keys with WDEKs registered with keyops/);
      const ambiguous = await run('key', 'rotate', 'twin');
      assert.equal(ambiguous.code, 2);
      assert.match(ambiguous.stderr, new RegExp(`2 keys are named "twin" \\((${twins[0]}, ${twins[1]}|${twins[1]}, ${twins[0]})\\); give the key's id`));

      // The KMS alone rotates: a new version, the WDEKs untouched until a rewrap.
      const kmsOnly = await run('key', 'rotate', 'cli-kms-only', '--kms-only', '--json');
      assert.equal(kmsOnly.code, 0, kmsOnly.stderr);
      assert.deepEqual(JSON.parse(kmsOnly.stdout), { keyId: kmsOnlyKey, version: 2, rotated: true, rewrapped: false });
      assert.deepEqual(registry.list(kmsOnlyKey, {}, 10).map((r) => r.keyVersion), [1], 'the WDEK is still on version 1');
      const behind = await run('rewrap', 'status', 'cli-kms-only', '--json');
      assert.equal((JSON.parse(behind.stdout) as { upToDate: boolean }).upToDate, false);

      const unknown = randomUUID();
      const missing = await run('key', 'rotate', unknown);
      assert.equal(missing.code, 2, missing.stderr);
      assert.match(missing.stderr, new RegExp(`key ${unknown} does not exist in the KMS`));

      const disabled = await run('key', 'rotate', disabledKey);
      assert.equal(disabled.code, 1);
      assert.match(disabled.stderr, /is disabled/);

      for (const r of [again, malformed, unknownName, notRegistered, ambiguous, missing, disabled]) assert.doesNotMatch(r.stderr, /^\s+at /m);

      const watched = await run('key', 'watch', '--json');
      assert.equal(watched.code, 0, watched.stderr);
      const watchedResult = JSON.parse(watched.stdout) as { checked: number; started: string[] };
      assert.deepEqual(watchedResult, { checked: 4, started: [rewrapWorkflowId(kmsOnlyKey, 2)], alreadyRunning: [], unreadable: [] }, 'only keys with WDEKs are watched; the KMS-only rotation is found');
      await suite.client.workflow.getHandle(rewrapWorkflowId(kmsOnlyKey, 2)).result();
      assert.deepEqual(registry.list(kmsOnlyKey, {}, 10).map((r) => r.keyVersion), [2], 'the watcher rewrapped it');

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
      assert.equal((await suite.client.workflow.getHandle<typeof watchRootKeys>(fired).result()).checked, 4);
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
