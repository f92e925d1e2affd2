import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ScheduleFileError, parseScheduleFile } from '../client/schedules/schedule-file';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import type { rotateRootKeyOnSchedule } from '../workflows';
import { rotationOffsetMs } from '../client/schedules/root-key-rotation-schedule';
import { keyops } from './helpers/child-process';
import { localActivities } from './helpers/local-activities';
import { createTestWorker, testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

const problemsOf = (text: string): string[] => {
  try {
    parseScheduleFile(text, 'schedules.yaml');
  } catch (err) {
    if (err instanceof ScheduleFileError) return err.problems;
    throw err;
  }
  return [];
};

describe('schedule file', () => {
  it('points every mistake at its line, column and field', () => {
    assert.deepEqual(problemsOf('backups:\n  - database: payroll\n    at: "25:00"\n'), ['schedules.yaml:3:9: backups[0].at: must be a time of day such as "02:00" (quote it: YAML reads 02:00 as a number)']);
    assert.deepEqual(problemsOf('backups:\n  - database: payroll\n    at: "02:00"\n    atTime: "03:00"\n'), ['schedules.yaml:2:5: backups[0]: Unrecognized key: "atTime" (atTime)']);
    assert.deepEqual(problemsOf('timeZone: Mars/Olympus\nwatch:\n  every: often\n'), [
      'schedules.yaml:1:11: timeZone: must be an IANA time zone such as Europe/Berlin or UTC',
      'schedules.yaml:3:10: watch.every: every must be a duration such as 90s, 10m, 6h or 1d',
    ]);
    assert.match(problemsOf('backups:\n  - database: payroll\n   at: "02:00"\n')[0] ?? '', /^schedules\.yaml:3:\d+: /, 'malformed YAML names its line');
    assert.deepEqual(problemsOf('backups:\n  - { database: a, at: "01:00" }\n  - { database: a, at: "02:00" }\n'), ['schedules.yaml:3:5: backups[1]: database a is listed twice']);
    assert.deepEqual(problemsOf('rotations:\n  - key: demo\n    every: 12h\n  - key: demo\n    every: 30d\n'), [
      'schedules.yaml:3:12: rotations[0].every: must be a whole number of days such as 30d or 90d',
    ]);
    assert.deepEqual(problemsOf('rotations:\n  - key: demo\n    every: 30d\n  - key: demo\n    every: 90d\n'), ['schedules.yaml:4:5: rotations[1]: key demo is listed twice']);
    assert.deepEqual(problemsOf('rotations:\n  - every: 30d\n'), ['schedules.yaml:2:5: rotations[0].key: must be a key id (a UUID) or the name of a key keyops protects WDEKs with']);
  });

  it('fills in the safe defaults', () => {
    assert.deepEqual(parseScheduleFile('backups:\n  - database: payroll\n    at: "02:00"\n', 'f'), {
      backups: [{ database: 'payroll', at: '02:00', overlap: 'skip', catchupWindow: '6h', jitter: '0s' }],
      rotations: [],
    });
    assert.deepEqual(parseScheduleFile('rotations:\n  - key: demo\n    every: 30d\n', 'f').rotations, [{ key: 'demo', every: '30d', catchupWindow: '1d', jitter: '0s' }]);
  });
});

describe('keyops schedule commands against the dev server', () => {
  const suite = useSuiteFixture('schedule-cli');

  it('applies a file idempotently, updates on change, and lists, pauses, triggers, backfills and deletes', async () => {
    const taskQueue = uniqueTaskQueue('schedule-cli');
    const db = `sched-${randomBytes(3).toString('hex')}`;
    const scheduleId = `nightly-backup/${db}`;
    const file = join(suite.dir, 'schedules.yaml');
    const run = (...args: string[]) => keyops(args, { TEMPORAL_ADDRESS: testServerAddress() });
    const apply = () => run('schedule', 'apply', '-f', file, '--task-queue', taskQueue, '--json');
    const changes = (out: string) => (JSON.parse(out) as { scheduleId: string; change: string }[]).filter((r) => r.scheduleId === scheduleId).map((r) => r.change);

    writeFileSync(file, `timeZone: Europe/Berlin\nbackups:\n  - database: ${db}\n    at: "02:00"\n    jitter: 5m\n`);
    const first = await apply();
    assert.equal(first.code, 0, first.stderr);
    assert.deepEqual(changes(first.stdout), ['created']);
    const again = await apply();
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(changes(again.stdout), ['unchanged'], 'applying the same file again changes nothing');
    const described = await suite.client.schedule.getHandle(scheduleId).describe();
    assert.equal(described.spec.timezone, 'Europe/Berlin');
    assert.equal(described.spec.jitter, 5 * 60_000);
    assert.equal(described.policies.overlap, 'SKIP');
    // Changed by a command that names no file (here: its jitter dropped): still the file's to prune.
    const byHand = await run('backup', 'schedule', db, '--at', '02:00', '--time-zone', 'Europe/Berlin', '--task-queue', taskQueue, '--json');
    assert.equal(byHand.code, 0, byHand.stderr);
    const handled = await suite.client.schedule.getHandle(scheduleId).describe();
    assert.equal(handled.spec.jitter ?? 0, 0);
    assert.equal(handled.action.type === 'startWorkflow' && handled.action.memo?.declaredIn, file, 'the file still marks it');

    writeFileSync(file, `timeZone: Europe/Berlin\nbackups:\n  - database: ${db}\n    at: "03:30"\n    overlap: buffer-one\n    jitter: 5m\n`);
    const changed = await apply();
    assert.deepEqual(changes(changed.stdout), ['updated']);
    const updated = await suite.client.schedule.getHandle(scheduleId).describe();
    assert.deepEqual(updated.spec.calendars?.[0]?.hour, [{ start: 3, end: 3, step: 1 }]);
    assert.equal(updated.policies.overlap, 'BUFFER_ONE');

    // An entry removed from the file: reported, kept, and deleted only with --prune.
    const extra = `nightly-backup/${db}-extra`;
    writeFileSync(file, `backups:\n  - database: ${db}-extra\n    at: "04:00"\n`);
    const without = await run('schedule', 'apply', '-f', file, '--task-queue', taskQueue);
    assert.equal(without.code, 0, without.stderr);
    assert.match(without.stdout, new RegExp(`^${scheduleId} not in the file: kept; --prune deletes it$`, 'm'));
    // Declared by another file: not this file's to prune.
    const otherFile = join(suite.dir, 'other.yaml');
    const other = `nightly-backup/${db}-other`;
    writeFileSync(otherFile, `backups:\n  - database: ${db}-other\n    at: "05:00"\n`);
    assert.equal((await run('schedule', 'apply', '-f', otherFile, '--task-queue', taskQueue)).code, 0);
    writeFileSync(file, `timeZone: Europe/Berlin\nbackups:\n  - database: ${db}\n    at: "03:30"\n    overlap: buffer-one\n    jitter: 5m\n`);
    const pruned = await run('schedule', 'apply', '-f', file, '--task-queue', taskQueue, '--prune', '--json');
    assert.deepEqual(
      (JSON.parse(pruned.stdout) as { scheduleId: string; change: string }[]).map((r) => `${r.scheduleId} ${r.change}`).sort(),
      [`${scheduleId} unchanged`, `${extra} deleted`],
      'only what this file declared before is pruned',
    );
    await assert.rejects(suite.client.schedule.getHandle(extra).describe(), /not found/i);
    assert.equal((await suite.client.schedule.getHandle(other).describe()).action.type, 'startWorkflow', 'the other file\'s schedule is kept');
    await suite.client.schedule.getHandle(other).delete();

    writeFileSync(file, `backups:\n  - database: ${db}\n    at: 3:30\n`);
    const bad = await apply();
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /schedules\.yaml is not valid; nothing was applied:\n {2}.*schedules\.yaml:3:9: backups\[0\]\.at: must be a time of day/);

    const paused = await run('schedule', 'pause', scheduleId, '--note', 'disk swap tonight');
    assert.equal(paused.code, 0, paused.stderr);
    const listed = await run('schedule', 'list', '--json');
    const row = (JSON.parse(listed.stdout) as { scheduleId: string; paused: boolean; note: string | null; workflowType: string }[]).find((r) => r.scheduleId === scheduleId);
    assert.deepEqual(row && { paused: row.paused, note: row.note, workflowType: row.workflowType }, { paused: true, note: 'disk swap tonight', workflowType: 'nightlyBackup' });
    assert.equal((await run('schedule', 'unpause', scheduleId)).code, 0);
    assert.equal((await suite.client.schedule.getHandle(scheduleId).describe()).state.paused, false);

    const triggered = await run('schedule', 'trigger', scheduleId);
    assert.equal(triggered.code, 0, triggered.stderr);
    const backfilled = await run('schedule', 'backfill', scheduleId, '--from', '2026-12-01T00:00:00Z', '--to', '2026-11-30T00:00:00Z');
    assert.equal(backfilled.code, 2);
    assert.match(backfilled.stderr, /--to 2026-11-30T00:00:00Z is not after --from/);
    for (let i = 0; (await suite.client.schedule.getHandle(scheduleId).describe()).info.recentActions.length === 0; i++) {
      assert.ok(i < 100, 'the trigger started a run');
      await new Promise((r) => setTimeout(r, 100));
    }

    assert.equal((await run('schedule', 'delete', scheduleId)).code, 0);
    const gone = await run('schedule', 'delete', scheduleId);
    assert.equal(gone.code, 2);
    assert.match(gone.stderr, new RegExp(`no schedule ${scheduleId}`));
    for await (const w of suite.client.workflow.list({ query: `TaskQueue = "${taskQueue}" AND ExecutionStatus = "Running"` })) {
      await suite.client.workflow.getHandle(w.workflowId, w.runId).terminate('test finished');
    }
  });

  it('drills: every 7d becomes the restore-drill schedule, applied idempotently and pruned with the file', async () => {
    const taskQueue = uniqueTaskQueue('schedule-drills');
    const file = join(suite.dir, 'drills.yaml');
    const run = (...args: string[]) => keyops(args, { TEMPORAL_ADDRESS: testServerAddress() });
    const drill = async (...extra: string[]) => {
      const r = await run('schedule', 'apply', '-f', file, '--task-queue', taskQueue, '--json', ...extra);
      assert.equal(r.code, 0, r.stderr);
      return (JSON.parse(r.stdout) as { scheduleId: string; change: string }[]).filter((c) => c.scheduleId === 'restore-drill').map((c) => c.change);
    };
    writeFileSync(file, 'drills:\n  every: 7d\n');
    assert.deepEqual(await drill(), ['created']);
    assert.deepEqual(await drill(), ['unchanged']);
    const described = await suite.client.schedule.getHandle('restore-drill').describe();
    assert.deepEqual(described.spec.intervals?.map((i) => i.every), [7 * 86_400_000]);
    assert.equal(described.action.type === 'startWorkflow' && described.action.workflowType, 'restoreDrill');
    writeFileSync(file, 'drills:\n  every: 12h\n');
    assert.deepEqual(await drill(), ['updated']);
    writeFileSync(file, 'backups: []\n');
    assert.deepEqual(await drill('--prune'), ['deleted'], 'a drill schedule the file no longer declares is the file\'s to prune');
    await assert.rejects(suite.client.schedule.getHandle('restore-drill').describe(), /not found/i);
  });

  it('rotations: every N days per key, by name or id; a wrong key changes nothing; a fired rotation rewraps every WDEK', async () => {
    const kms = LocalKms.open({ path: join(suite.dir, 'rot-kms.sqlite'), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'rot-wdeks.sqlite'));
    const name = `rot-${randomBytes(3).toString('hex')}`;
    const { keyId } = await kms.createKey({ name });
    for (let i = 0; i < 12; i++) {
      const { wdek, keyVersion } = await kms.wrap(keyId);
      registry.register({ id: `rot-${i}`, keyId, keyVersion, wdek, owner: 'schedule-test' });
    }
    const taskQueue = uniqueTaskQueue('schedule-rot');
    const worker = await createTestWorker(suite.env, { taskQueue, activities: localActivities({ dataDir: join(suite.dir, 'rot'), kms, registry }).activities });
    const file = join(suite.dir, 'rotations.yaml');
    const scheduleId = `rotate-key/${keyId}`;
    const apply = () => keyops(['schedule', 'apply', '-f', file, '--task-queue', taskQueue, '--json'], { TEMPORAL_ADDRESS: testServerAddress() });
    const changes = (out: string) => (JSON.parse(out) as { scheduleId: string; change: string }[]).map((r) => `${r.scheduleId} ${r.change}`);

    await worker.runUntil(async () => {
      writeFileSync(file, `rotations:\n  - key: ${name}\n    every: 30d\n`);
      const first = await apply();
      assert.equal(first.code, 0, first.stderr);
      assert.deepEqual(changes(first.stdout), [`${scheduleId} created`]);
      // The same key by id is the same schedule: nothing changes.
      writeFileSync(file, `rotations:\n  - key: ${keyId}\n    every: 30d\n`);
      const byId = await apply();
      assert.deepEqual(changes(byId.stdout), [`${scheduleId} unchanged`]);
      writeFileSync(file, `rotations:\n  - key: ${name}\n    every: 90d\n    jitter: 1h\n`);
      assert.deepEqual(changes((await apply()).stdout), [`${scheduleId} updated`]);
      const described = await suite.client.schedule.getHandle(scheduleId).describe();
      assert.equal(described.spec.intervals?.[0]?.every, 90 * 86_400_000);
      const offset = rotationOffsetMs(keyId, 90);
      assert.equal(described.spec.intervals?.[0]?.offset ?? 0, offset, 'the key rotates at its own point of the interval');
      assert.ok(offset >= 0 && offset < 90 * 86_400_000 && offset % 60_000 === 0);
      assert.equal(described.spec.jitter, 3_600_000);
      assert.equal(described.policies.overlap, 'SKIP');
      assert.equal(described.action.type === 'startWorkflow' && described.action.workflowType, 'rotateRootKeyOnSchedule');
      assert.match(String(described.action.type === 'startWorkflow' && described.action.staticSummary), new RegExp(`Scheduled rotation of root key "${name}" \\(${keyId}\\), every 90 day`));

      // An unknown name, and the same key twice: each named at its line; nothing is applied.
      const db = `rotdb-${randomBytes(3).toString('hex')}`;
      writeFileSync(file, `backups:\n  - database: ${db}\n    at: "02:00"\nrotations:\n  - key: ${name}\n    every: 30d\n  - key: no-such-key\n    every: 30d\n  - key: ${keyId}\n    every: 7d\n`);
      const bad = await apply();
      assert.equal(bad.code, 2, bad.stderr);
      assert.match(bad.stderr, /rotations\.yaml:7:10: rotations\[1\]\.key: no key named "no-such-key" protects WDEKs registered with keyops/);
      assert.match(bad.stderr, new RegExp(`rotations\\.yaml:9:10: rotations\\[2\\]\\.key: names key ${keyId} again \\(as rotations\\[0\\] does\\)`));
      await assert.rejects(suite.client.schedule.getHandle(`nightly-backup/${db}`).describe(), /not found/i, 'the backup of the same file was not applied either');
      assert.equal((await suite.client.schedule.getHandle(scheduleId).describe()).spec.intervals?.[0]?.every, 90 * 86_400_000);

      // Fired now (as on day 90): the key gets one new version and every WDEK moves to it.
      assert.equal((await keyops(['schedule', 'trigger', scheduleId], { TEMPORAL_ADDRESS: testServerAddress() })).code, 0);
      let fired: string | undefined;
      for (let i = 0; i < 100 && !fired; i++) {
        fired = (await suite.client.schedule.getHandle(scheduleId).describe()).info.recentActions[0]?.action.workflow.workflowId;
        if (!fired) await new Promise((r) => setTimeout(r, 100));
      }
      assert.ok(fired?.startsWith(`${scheduleId}-`), `the trigger started ${fired}`);
      const result = await suite.client.workflow.getHandle<typeof rotateRootKeyOnSchedule>(fired!).result();
      assert.deepEqual({ toVersion: result.toVersion, rotated: result.rotated, rewrapped: result.rewrapped }, { toVersion: 2, rotated: true, rewrapped: 12 });
      for (const r of registry.list(keyId, {}, 100)) assert.equal((await kms.unwrap(keyId, r.wdek)).keyVersion, 2, `${r.id} is under v2`);
      await suite.client.schedule.getHandle(scheduleId).delete();
    });
  });
});
