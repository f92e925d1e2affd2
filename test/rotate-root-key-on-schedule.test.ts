import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { localActivities } from './helpers/local-activities';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { rotateRootKeyOnSchedule } from '../workflows';
import { rewrapWorkflowId } from '../workflows/root-key-messages';
import { KeyIdAttribute, OutcomeAttribute, PhaseAttribute } from '../workflows/search-attributes';
import { recordHistory } from './helpers/record-history';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

const MASTER_SECRET = randomBytes(32);
const HOUR = 3_600_000;

/**
 * A key with `count` WDEKs; `rotatedAgoMs` makes the KMS's last rotation that long ago, and
 * `kmsBehindMs` puts the worker's KMS clock that far behind Temporal's.
 */
async function seed(dir: string, count: number, rotatedAgoMs?: number, kmsBehindMs = 0) {
  const path = join(dir, 'kms.sqlite');
  const kms = LocalKms.open({ path, masterSecret: MASTER_SECRET, now: () => new Date(Date.now() - kmsBehindMs) });
  const registry = SqliteWdekRegistry.open(join(dir, 'wdeks.sqlite'));
  const { keyId } = await kms.createKey({ name: 'scheduled-key' });
  const deks = new Map<string, Buffer>();
  for (let i = 0; i < count; i++) {
    const id = `db/sched/dek-${String(i).padStart(4, '0')}`;
    const { wdek, dek, keyVersion } = await kms.wrap(keyId);
    deks.set(id, dek);
    registry.register({ id, keyId, keyVersion, wdek, owner: 'test' });
  }
  if (rotatedAgoMs !== undefined) {
    // A rotation by hand (outside keyops) that long ago: the WDEKs are now one version behind.
    const past = LocalKms.open({ path, masterSecret: MASTER_SECRET, now: () => new Date(Date.now() - rotatedAgoMs) });
    await past.rotateKey(keyId, 'by-hand');
  }
  return { kms, registry, keyId, deks };
}

/** Every WDEK recorded on `version`, and unwrapping under it to its own DEK. */
async function assertAllOn(s: Awaited<ReturnType<typeof seed>>, version: number) {
  const records = s.registry.list(s.keyId, {}, 1_000_000);
  assert.equal(records.length, s.deks.size);
  for (const r of records) {
    const { keyVersion, dek } = await s.kms.unwrap(s.keyId, r.wdek);
    assert.equal(keyVersion, version, `${r.id} is wrapped under v${keyVersion}`);
    assert.ok(dek.equals(s.deks.get(r.id)!), `${r.id} unwraps to its DEK`);
  }
}

describe('rotateRootKeyOnSchedule (what a rotations: entry of the schedule file starts)', () => {
  const suite = useSuiteFixture('rotate-on-schedule');
  const run = async (s: Awaited<ReturnType<typeof seed>>, label: string) => {
    const taskQueue = uniqueTaskQueue(label);
    const worker = await createTestWorker(suite.env, {
      taskQueue,
      activities: localActivities({ dataDir: join(suite.dir, label), kms: s.kms, registry: s.registry }).activities,
    });
    const workflowId = `rotate-key/${s.keyId}-${label}`;
    return worker.runUntil(async () => {
      const handle = await suite.client.workflow.start(rotateRootKeyOnSchedule, { taskQueue, workflowId, args: [{ keyId: s.keyId }] });
      const started = Date.now();
      const result = await handle.result();
      const attributes = (await handle.describe()).typedSearchAttributes;
      return { result, handle, tookMs: Date.now() - started, phase: attributes.get(PhaseAttribute), outcome: attributes.get(OutcomeAttribute), keyId: attributes.get(KeyIdAttribute) };
    });
  };

  it('picks the next version, rotates once, and rewraps every WDEK to it in the rewrap/<key>/v<next> child', async () => {
    const s = await seed(join(suite.dir, 'plain'), 30);
    const { result, phase, outcome, keyId } = await run(s, 'plain');
    assert.deepEqual(result, { keyId: s.keyId, phase: 'done', fromVersion: 1, toVersion: 2, rotated: true, rewrapped: 30 });
    assert.deepEqual({ phase, outcome, keyId }, { phase: 'done', outcome: 'succeeded', keyId: s.keyId });
    assert.deepEqual((await s.kms.getKeyMetadata(s.keyId)).versions.map((v) => v.version), [1, 2], 'exactly one new version');
    await assertAllOn(s, 2);
    const child = await suite.client.workflow.getHandle(rewrapWorkflowId(s.keyId, 2)).describe();
    assert.equal(child.status.name, 'COMPLETED', 'the rewrap ran under its usual id, so a manual rotate or the watcher finds it');
  });

  it('finishes a rewrap still pending from a rotation outside keyops before it rotates, then waits out the hourly quota', async () => {
    // Rotated by hand 59 min 45 s ago: v2 exists, WDEKs are on v1, and the KMS refuses the next
    // rotation for 15 more seconds.
    const s = await seed(join(suite.dir, 'pending'), 20, HOUR - 15_000);
    const { result, tookMs, outcome, handle } = await run(s, 'pending');
    assert.deepEqual(result, { keyId: s.keyId, phase: 'done', fromVersion: 2, toVersion: 3, rotated: true, rewrapped: 20 });
    assert.equal(outcome, 'succeeded');
    const timers = (await handle.fetchHistory()).events?.filter((e) => e.timerStartedEventAttributes) ?? [];
    assert.equal(timers.length, 1, 'one durable timer until the KMS allows the rotation');
    const versions = (await s.kms.getKeyMetadata(s.keyId)).versions;
    assert.deepEqual(versions.map((v) => v.version), [1, 2, 3]);
    assert.ok(Date.parse(versions[2]!.createdAt) >= Date.parse(versions[1]!.createdAt) + HOUR, 'v3 came no sooner than the KMS allows');
    assert.ok(tookMs >= 10_000, `waited for the quota instead of failing on it (${tookMs} ms)`);
    for (const v of [2, 3]) {
      assert.equal((await suite.client.workflow.getHandle(rewrapWorkflowId(s.keyId, v)).describe()).status.name, 'COMPLETED', `rewrap to v${v} ran`);
    }
    await assertAllOn(s, 3);
    if (process.env.KEYOPS_RECORD_HISTORIES) await recordHistory(handle.workflowId, 'rotate-root-key-on-schedule-checked-input.json');
  });

  it('a KMS clock 14 s behind ours refuses the rotation once; the run waits past its retryAfter and rotates on the second try', async () => {
    // The KMS's clock runs 14 s behind Temporal's: the hour since the rotation by hand is up (with
    // the margin) for the workflow, and for the KMS only 9 s after seeding.
    const s = await seed(join(suite.dir, 'skew'), 10, HOUR + 5_000, 14_000);
    const { result, outcome, handle } = await run(s, 'skew');
    assert.deepEqual(result, { keyId: s.keyId, phase: 'done', fromVersion: 2, toVersion: 3, rotated: true, rewrapped: 10 });
    assert.equal(outcome, 'succeeded');
    const children = (await handle.fetchHistory()).events?.filter((e) => e.startChildWorkflowExecutionInitiatedEventAttributes?.workflowId === rewrapWorkflowId(s.keyId, 3)) ?? [];
    assert.equal(children.length, 2, 'the refused rewrap run was started again under the same id');
    assert.deepEqual((await s.kms.getKeyMetadata(s.keyId)).versions.map((v) => v.version), [1, 2, 3], 'one new version, not two');
    await assertAllOn(s, 3);
  });

  it('fails at once, marked failed, for a disabled key, and rotates nothing', async () => {
    const s = await seed(join(suite.dir, 'disabled'), 3);
    await s.kms.disableKey(s.keyId);
    await assert.rejects(run(s, 'disabled'), (err: Error) => {
      let root: unknown = err;
      while (root instanceof Error && root.cause instanceof Error) root = root.cause;
      assert.match((root as Error).message, /is disabled: the KMS refuses to rotate it/);
      return true;
    });
    await s.kms.enableKey(s.keyId);
    assert.deepEqual((await s.kms.getKeyMetadata(s.keyId)).versions.map((v) => v.version), [1]);
  });
});
