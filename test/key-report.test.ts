import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, describe, it } from 'node:test';
import { chromium } from 'playwright-core';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { parseSince } from '../client/commands/report';
import { keyLifecycle, type LifecycleReport } from '../client/report/lifecycle-report';
import { rotationScheduleId } from '../client/schedules/root-key-rotation-schedule';
import { nightlyBackup, rotateInKms, rotateMasterKey, rotateRootKey, rotateRootKeyOnSchedule } from '../workflows';
import { backupWorkflowId } from '../workflows/backup-messages';
import { masterKeyRotationWorkflowId } from '../workflows/master-key-messages';
import { keyEntityWorkflowId, rewrapWorkflowId } from '../workflows/root-key-messages';
import { ROOT, keyops } from './helpers/child-process';
import { localActivities } from './helpers/local-activities';
import { createTestWorker, testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

const ARTIFACTS = join(ROOT, '.cache', 'test-artifacts');
const HOUR = 3_600_000;

describe('keyops report (dev server, local KMS, catalog and backups on disk, chromium)', () => {
  const suite = useSuiteFixture('key-report');

  it("tells why each version exists, each rewrap's steps, the backups, failed nights and retired versions still needed; the HTML shows them", async (t) => {
    const suffix = randomUUID().slice(0, 8);
    const dataDir = join(suite.dir, 'report');
    // The KMS allows one manual rotation per key per hour: its clock starts 8 hours back and
    // moves forward two hours before each rotation, as a key's real life would spread them.
    let kmsClockOffset = -8 * HOUR;
    const kms = LocalKms.open({ path: join(dataDir, 'kms', 'keys.sqlite'), masterSecret: randomBytes(32), now: () => new Date(Date.now() + kmsClockOffset) });
    const registry = SqliteWdekRegistry.open(join(dataDir, 'registry', 'wdeks.sqlite'));
    const local = localActivities({ dataDir, kms, registry });
    const taskQueue = uniqueTaskQueue('report');
    const worker = await createTestWorker(suite.env, { taskQueue, activities: local.activities });
    const keyName = `report-${suffix}`;
    const { keyId } = await kms.createKey({ name: keyName });
    after(() => suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished').catch(() => undefined));
    const db = `ledger-${suffix}`;
    const unitSetId = `hsm-${suffix}`;
    const env = { TEMPORAL_ADDRESS: testServerAddress() };
    const night = (n: string) => suite.client.workflow.execute(nightlyBackup, { taskQueue, workflowId: backupWorkflowId(db, n), args: [{ databaseId: db, night: n }] });
    const rewrap = (version: number, rotate: boolean) =>
      suite.client.workflow.execute(rotateRootKey, { taskQueue, workflowId: rewrapWorkflowId(keyId, version), args: [{ keyId, targetVersion: version, rotate }] });
    const scheduledRunId = `${rotationScheduleId(keyId)}-${new Date().toISOString()}`;

    await worker.runUntil(async () => {
      // A night that fails: the database does not exist yet.
      await assert.rejects(night('2026-11-01'));
      await local.engine.createDatabase(db, keyId);
      await local.engine.withDatabase(db, (d) => d.exec('CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1), (2), (3);'));
      await night('2026-11-02'); // under v1
      kmsClockOffset = -6 * HOUR;
      await rewrap(2, true); // v2: keyops key rotate
      await night('2026-11-03'); // under v2
      kmsClockOffset = -4 * HOUR;
      await suite.client.workflow.execute(rotateRootKeyOnSchedule, { taskQueue, workflowId: scheduledRunId, args: [{ keyId }] }); // v3
      kmsClockOffset = -2 * HOUR;
      await suite.client.workflow.execute(rotateInKms, { taskQueue, workflowId: `kms-rotate/${keyId}/v4`, args: [{ keyId, targetVersion: 4 }] });
      await rewrap(4, false); // as the watcher starts it
      kmsClockOffset = 0;
      await kms.rotateKey(keyId, 'kms-console-request-1'); // v5: someone in the KMS console
      await rewrap(5, false);
      await night('2026-11-04'); // under v5
      local.unitSets.create(unitSetId, { units: 3, entries: 16 });
      await suite.client.workflow.execute(rotateMasterKey, { taskQueue, workflowId: masterKeyRotationWorkflowId(unitSetId, 'report'), args: [{ unitSetId, requestId: 'report' }] });

      // --json: the whole report, by the key's name.
      const json = await keyops(['report', '--key', keyName, '--json', '--task-queue', taskQueue], env);
      assert.equal(json.code, 0, json.stderr);
      const report = JSON.parse(json.stdout) as LifecycleReport;
      assert.equal(report.keys.length, 1);
      const key = report.keys[0]!;
      assert.equal(key.keyId, keyId);
      assert.deepEqual(
        key.versions.map((v) => [v.version, v.origin, v.state, v.run ?? null]),
        [
          [1, 'created', 'retired', null],
          [2, 'manual', 'retired', rewrapWorkflowId(keyId, 2)],
          [3, 'schedule', 'retired', scheduledRunId],
          [4, 'manual-kms-only', 'retired', `kms-rotate/${keyId}/v4`],
          [5, 'outside-keyops', 'current', rewrapWorkflowId(keyId, 5)],
        ],
      );
      // The versions' dates are the KMS's own.
      const meta = await kms.getKeyMetadata(keyId);
      assert.deepEqual(
        key.versions.map((v) => v.createdAt),
        meta.versions.map((v) => v.createdAt),
      );
      // Backups under v1 and v2 are retained: those versions are still needed; every WDEK is on v5.
      const [b2, b3, b4] = ['2026-11-02', '2026-11-03', '2026-11-04'].map((n) => backupWorkflowId(db, n));
      assert.deepEqual(key.retiredStillNeeded, [
        { version: 1, backups: [b2], wdeks: 0, databases: [] },
        { version: 2, backups: [b3], wdeks: 0, databases: [] },
      ]);
      assert.deepEqual(
        key.backups.map((b) => [b.backupId, b.keyVersion, b.status, b.verified]),
        [
          [b2, 1, 'good', true],
          [b3, 2, 'good', true],
          [b4, 5, 'good', true],
        ],
      );
      assert.deepEqual(
        key.failedNights.map((n) => [n.night, n.workflowId]),
        [['2026-11-01', backupWorkflowId(db, '2026-11-01')]],
      );
      assert.match(key.failedNights[0]!.error ?? '', new RegExp(`no database ${db}`));
      // The rewraps, from their histories: asked to rotate or not, who started them, their steps.
      assert.deepEqual(
        key.rewraps.map((r) => [r.targetVersion, r.status, r.rotate, r.rotated ?? null, r.parent?.type ?? null, r.origin]),
        [
          [2, 'COMPLETED', true, true, null, 'manual'],
          [3, 'COMPLETED', true, true, 'rotateRootKeyOnSchedule', 'schedule'],
          [4, 'COMPLETED', false, null, null, 'manual-kms-only'],
          [5, 'COMPLETED', false, null, null, 'outside-keyops'],
        ],
      );
      for (const r of key.rewraps) {
        assert.ok(r.result && r.result.total >= 1 && r.result.rewrapped === r.result.total, `${r.workflowId} rewrapped every WDEK: ${JSON.stringify(r.result)}`);
        assert.equal(r.result.rotated, r.rotate, `${r.workflowId} rotated iff asked`);
        assert.equal(r.steps.rotatedAt !== undefined, r.rotate, `${r.workflowId} has a rotate step iff it rotated`);
        const { rewrapStartedAt, verifyStartedAt, announcedAt } = r.steps;
        assert.ok(rewrapStartedAt && verifyStartedAt && announcedAt, JSON.stringify(r.steps));
        assert.ok(r.startedAt <= rewrapStartedAt && rewrapStartedAt <= verifyStartedAt && verifyStartedAt <= announcedAt && announcedAt <= r.closedAt!, JSON.stringify(r));
        assert.ok(r.seconds !== undefined && r.seconds >= 0 && Math.abs(r.seconds - (Date.parse(r.closedAt!) - Date.parse(r.startedAt)) / 1000) < 0.001);
      }
      assert.deepEqual(
        report.masterKeyRotations.map((r) => [r.workflowId, r.status, r.outcome]),
        [[masterKeyRotationWorkflowId(unitSetId, 'report'), 'COMPLETED', 'succeeded']],
      );
      // No key material and no paths: ids, versions, dates and counts only.
      assert.ok(!json.stdout.includes(dataDir), 'no path of the worker in the report');

      // Every key in use when none is named; a key gone from the KMS (a deleted backup's) is
      // reported as unreadable, and the rest of the report is still there.
      const goneKey = randomUUID();
      const b2Entry = local.catalog.get(backupWorkflowId(db, '2026-11-02'))!;
      local.catalog.record({ ...b2Entry, backupId: backupWorkflowId(db, '2026-10-01'), night: '2026-10-01', keyId: goneKey, status: 'deleted' });
      const all = await keyops(['report', '--json', '--task-queue', taskQueue], env);
      assert.equal(all.code, 0, all.stderr);
      const everything = JSON.parse(all.stdout) as LifecycleReport;
      assert.deepEqual(everything.keys.map((k) => k.keyId), [keyId]);
      assert.equal(everything.unreadableKeys.length, 1);
      assert.equal(everything.unreadableKeys[0]!.keyId, goneKey);
      assert.match(everything.unreadableKeys[0]!.error, new RegExp(`no key ${goneKey}`));

      // The text summary, without --html or --json.
      const text = await keyops(['report', '--key', keyId, '--task-queue', taskQueue], env);
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, /still needed: v1 by 1 backup\(s\)/);
      assert.match(text.stdout, /v4 {2}retired .* manual rotation in the KMS only/);

      // --since narrows the rewraps and backups to the period; the versions stay whole.
      const since = key.rewraps[3]!.startedAt;
      const narrowed = await keyops(['report', '--key', keyName, '--since', since, '--json', '--task-queue', taskQueue], env);
      assert.equal(narrowed.code, 0, narrowed.stderr);
      const recent = (JSON.parse(narrowed.stdout) as LifecycleReport).keys[0]!;
      assert.deepEqual(recent.rewraps.map((r) => r.targetVersion), [5]);
      assert.deepEqual(recent.backups.map((b) => b.backupId), [b4]);
      assert.deepEqual(recent.failedNights, []);
      assert.equal(recent.versions.length, 5);

      // The HTML, opened in chromium as an auditor would.
      const file = join(dataDir, 'report.html');
      const written = await keyops(['report', '--key', keyName, '--html', file, '--task-queue', taskQueue], { ...env, KEYOPS_TIME_ZONE: 'Europe/Berlin' });
      assert.equal(written.code, 0, written.stderr);
      assert.equal(written.stdout, `wrote the lifecycle report of 1 key(s) to ${file}\n`);
      assert.ok(!readFileSync(file, 'utf8').includes('<script'), 'a self-contained report: no script');
      const browser = await chromium.launch({
        executablePath: execFileSync(join(ROOT, 'test', 'browser', 'chromium-path.sh'), { encoding: 'utf8' }).trim(),
        args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
      });
      try {
        const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
        await page.goto(pathToFileURL(file).href);
        mkdirSync(ARTIFACTS, { recursive: true });
        const shot = join(ARTIFACTS, 'key-report.png');
        await page.screenshot({ path: shot, fullPage: true });
        await page.locator(`svg[data-key="${keyId}"]`).screenshot({ path: join(ARTIFACTS, 'key-report-timeline.png') });
        t.diagnostic(`screenshots: ${shot}, ${join(ARTIFACTS, 'key-report-timeline.png')}`);

        const svg = page.locator(`svg[data-key="${keyId}"]`);
        const box = await svg.boundingBox();
        assert.ok(box && box.width > 500 && box.height > 150, `the timeline is drawn: ${JSON.stringify(box)}`);
        const count = (kind: string) => svg.locator(`[data-kind="${kind}"]`).count();
        assert.deepEqual(
          { version: await count('version'), rotation: await count('rotation'), rewrap: await count('rewrap'), masterKey: await count('master-key'), backup: await count('backup'), failedNight: await count('failed-night') },
          { version: 5, rotation: 5, rewrap: 4, masterKey: 1, backup: 3, failedNight: 1 },
        );
        // Version bars in time order, coloured by what still needs them.
        const bars: { x: number; fill: string | null }[] = [];
        for (const rect of await svg.locator('[data-kind="version"] rect').all()) bars.push({ x: Number(await rect.getAttribute('x')), fill: await rect.getAttribute('fill') });
        assert.deepEqual(
          bars.map((b) => b.fill),
          ['#f9a825', '#f9a825', '#9e9e9e', '#9e9e9e', '#2e7d32'],
        );
        assert.ok(bars.every((b, i) => i === 0 || b.x > bars[i - 1]!.x), JSON.stringify(bars));
        assert.match((await svg.locator('[data-kind="rotation"] title').allTextContents()).join('\n'), /v3 at .*: schedule/);

        const rows = async (table: string) => {
          const found: string[][] = [];
          for (const tr of await page.locator(`table[data-table="${table}"] tbody tr`).all()) found.push(await tr.locator('td').allTextContents());
          return found;
        };
        const versions = await rows('versions');
        assert.deepEqual(
          versions.map((r) => [r[0], r[2], r[4]]),
          [
            ['v1', 'created with the key', 'retired'],
            ['v2', 'manual rotation (keyops key rotate)', 'retired'],
            ['v3', 'scheduled rotation (keyops schedule)', 'retired'],
            ['v4', 'manual rotation in the KMS only (keyops key rotate --kms-only)', 'retired'],
            ['v5', 'outside keyops (KMS console or API)', 'current'],
          ],
        );
        // Times in the operator's zone, with its offset.
        assert.match(versions[0]![1]!, /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \+0[12]:00$/);
        assert.deepEqual((await rows('rewraps')).map((r) => [r[1], r[9], r[10]]), key.rewraps.map((r) => [`v${r.targetVersion}`, `${r.result!.rewrapped} of ${r.result!.total}`, 'completed']));
        assert.deepEqual((await rows('backups')).map((r) => [r[0], r[4], r[8]]), [
          [b2, 'v1', 'never'],
          [b3, 'v2', 'never'],
          [b4, 'v5', 'never'],
        ]);
        assert.deepEqual((await rows('failed-nights')).map((r) => r[1]), ['2026-11-01']);
        assert.deepEqual(await page.locator('.needed li').allTextContents(), [
          `v1 is retired and still needed by 1 retained backup(s): ${b2}. Keep it until they expire.`,
          `v2 is retired and still needed by 1 retained backup(s): ${b3}. Keep it until they expire.`,
        ]);
        assert.deepEqual((await rows('master-key')).map((r) => r[0]), [masterKeyRotationWorkflowId(unitSetId, 'report')]);
      } finally {
        await browser.close();
      }
    });
  });

  it('names a version the KMS made by policy, and one keyops asked for whose run is past retention', () => {
    const version = (v: number, requestId?: string) => ({ version: v, createdAt: `2026-0${v}-01T00:00:00.000Z`, current: v === 3, destroyed: false, wdeks: v === 3 ? 4 : 0, databases: [], backups: [], requestId });
    const facts = {
      keyId: 'k1',
      name: 'orders',
      state: 'active' as const,
      createdAt: '2026-01-01T00:00:00.000Z',
      rotationPolicy: { intervalMonths: 1 },
      currentVersion: 3,
      versions: [version(1), version(2, rewrapWorkflowId('k1', 2)), version(3)],
      unreadableBackups: [],
      databases: [],
      backups: [],
      omittedBackups: 0,
      nights: [],
    };
    const lifecycle = keyLifecycle(facts, { rewraps: [], others: [] }, undefined);
    assert.deepEqual(
      lifecycle.versions.map((v) => [v.version, v.origin]),
      [
        [1, 'created'],
        [2, 'keyops'],
        [3, 'policy'],
      ],
    );
    assert.deepEqual(lifecycle.retiredStillNeeded, []);
    assert.equal(keyLifecycle({ ...facts, rotationPolicy: undefined }, { rewraps: [], others: [] }, undefined).versions[2]!.origin, 'outside-keyops');

    // Asked is not done: a KMS-only run that found v3 already made, and a rewrap asked to rotate
    // whose rotation found it made too, did not make it: the policy did.
    const rewrap3 = { workflowId: rewrapWorkflowId('k1', 3), targetVersion: 3, rotate: true, rotated: false, startedAt: '2026-03-01T00:00:01.000Z', status: 'COMPLETED', executions: 1, steps: {} };
    const kmsOnly3 = { workflowId: 'kms-rotate/k1/v3', type: 'rotateInKms', startedAt: '2026-03-01T00:00:00.500Z', status: 'COMPLETED', keyVersion: 3, rotated: false };
    const asked = keyLifecycle(facts, { rewraps: [rewrap3], others: [kmsOnly3] }, undefined);
    assert.deepEqual(asked.versions[2], { ...lifecycle.versions[2], run: rewrap3.workflowId });
    assert.equal(asked.versions[2]?.origin, 'policy');
    // Once they did make it, they are its origin.
    const made = keyLifecycle(facts, { rewraps: [{ ...rewrap3, rotated: true }], others: [kmsOnly3] }, undefined);
    assert.deepEqual([made.versions[2]!.origin, made.versions[2]!.run], ['manual', rewrap3.workflowId]);
    const madeInKms = keyLifecycle(facts, { rewraps: [rewrap3], others: [{ ...kmsOnly3, rotated: true }] }, undefined);
    assert.deepEqual([madeInKms.versions[2]!.origin, madeInKms.versions[2]!.run], ['manual-kms-only', kmsOnly3.workflowId]);
  });

  it('the worker sends the newest 2,000 backups of a key and counts the rest, so that its answer stays small', async () => {
    const dataDir = join(suite.dir, 'report-many');
    const kms = LocalKms.open({ path: join(dataDir, 'kms', 'keys.sqlite'), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(dataDir, 'registry', 'wdeks.sqlite'));
    const local = localActivities({ dataDir, kms, registry });
    const { keyId } = await kms.createKey({ name: 'report-many' });
    const night = (i: number) => new Date(Date.parse('2020-01-01T00:00:00Z') + i * 86_400_000).toISOString();
    for (let i = 0; i < 2003; i++) {
      local.catalog.record({
        backupId: backupWorkflowId('many', night(i).slice(0, 10)),
        databaseId: 'many',
        night: night(i).slice(0, 10),
        createdAt: night(i),
        path: join(dataDir, 'gone.kob'),
        bytes: 1,
        sha256: 'tags-sha256:' + '0'.repeat(64),
        keyId,
        keyVersion: 1,
        backupKeyHash: '0'.repeat(64),
        verification: undefined,
        status: 'deleted',
      });
    }
    const { keys, problems } = await local.activities.keyReportFacts({ keyIds: [keyId] });
    assert.deepEqual(problems, []);
    assert.equal(keys[0]!.omittedBackups, 3);
    assert.equal(keys[0]!.backups.length, 2000);
    assert.deepEqual([keys[0]!.backups[0]!.createdAt, keys[0]!.backups.at(-1)!.createdAt], [night(3), night(2002)], 'the newest, oldest first');
    assert.ok(JSON.stringify(keys).length < 1_000_000, 'well under the 2 MB payload limit');
  });

  it('refuses bad input with one line and exit 2, before it connects', async () => {
    const env = { TEMPORAL_ADDRESS: testServerAddress() };
    const since = await keyops(['report', '--since', 'last tuesday', '--json'], env);
    assert.equal(since.code, 2, since.stderr);
    assert.match(since.stderr, /--since "last tuesday" is not a date \(2026-11-01\), an ISO time/);
    for (const [raw, why] of [
      ['2026-02-30', 'is not a day of the calendar'],
      ['2026-11-01T08:00', 'has no time zone: add Z \\(UTC\\) or an offset'],
    ]) {
      const r = await keyops(['report', '--since', raw!, '--json'], env);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, new RegExp(`--since "${raw}" ${why}`));
    }
    assert.equal(parseSince('2026-11-01T08:00:00+01:00'), '2026-11-01T07:00:00.000Z');
    assert.equal(parseSince('30d', Date.parse('2026-12-07T00:00:00Z')), '2026-11-07T00:00:00.000Z');
    const both = await keyops(['report', '--html', 'x.html', '--json'], env);
    assert.equal(both.code, 2, both.stderr);
    assert.match(both.stderr, /--html and --json are two outputs: choose one/);
    assert.ok(!since.stderr.includes('    at ') && !both.stderr.includes('    at '), 'no stack trace');
  });
});
