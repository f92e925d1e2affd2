import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { LocalKms } from '../activities/kms/local-kms';
import type { KeyManagementService } from '../activities/kms/key-management-service';
import { KmsRouter } from '../activities/kms/kms-router';
import { VaultTransitKms } from '../activities/kms/vault-transit-kms';
import { createNightReadiness } from '../activities/night-readiness';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { formatChecks, runDoctor, searchAttributeCheck, type DoctorCheck } from '../client/commands/doctor';
import { temporal } from '@temporalio/proto';
import { backupScheduleId } from '../client/schedules/nightly-backup-schedule';
import { rotationScheduleId } from '../client/schedules/root-key-rotation-schedule';
import { nightlyBackup } from '../workflows';
import { backupWorkflowId } from '../workflows/backup-messages';
import { lookupDeskWorkflowId } from '../workflows/lookup-messages';
import { PhaseAttribute } from '../workflows/search-attributes';
import { bulkTaskQueue } from '../workflows/task-queue';
import { keyops } from './helpers/child-process';
import { recordHistory } from './helpers/record-history';
import { localActivities } from './helpers/local-activities';
import { createTestWorker, testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';

const ADDRESS_ENV = () => ({ TEMPORAL_ADDRESS: testServerAddress() });

/**
 * A worker as production wires it for the doctor: a local KMS whose master secret is a file
 * (0600) under the data directory, and the embedded engine, registry and catalog beside it.
 */
async function doctorWorker(suite: ReturnType<typeof useSuiteFixture>, label: string) {
  const dataDir = join(suite.dir, label);
  const secretFile = join(dataDir, 'kms', 'master.secret');
  mkdirSync(join(dataDir, 'kms'), { recursive: true, mode: 0o700 });
  const secret = randomBytes(32);
  writeFileSync(secretFile, `${secret.toString('base64')}\n`, { mode: 0o600 });
  const kms = LocalKms.open({ path: join(dataDir, 'kms', 'keys.sqlite'), masterSecret: secret });
  const registry = SqliteWdekRegistry.open(join(dataDir, 'registry', 'wdeks.sqlite'));
  const local = localActivities({ dataDir, kms, registry });
  const activities = {
    ...local.activities,
    checkNightReadiness: createNightReadiness({ dataDir, kms, registry, engine: local.engine, catalog: local.catalog, localKmsMasterSecret: { file: secretFile } }),
  };
  const taskQueue = uniqueTaskQueue(label);
  const worker = await createTestWorker(suite.env, { taskQueue, activities });
  return { dataDir, secretFile, kms, taskQueue, worker, ...local };
}

const failed = (checks: DoctorCheck[]) => checks.filter((c) => c.ok !== true);

describe('keyops doctor (dev server)', () => {
  const suite = useSuiteFixture('doctor');

  it('all OK with a worker and applied schedules; then a paused schedule and a 0644 master secret FAIL with their fix', async () => {
    const s = await doctorWorker(suite, 'doctor-ok');
    const suffix = randomUUID().slice(0, 8);
    const databaseId = `doctor-${suffix}`;
    const keyName = `doctor-key-${suffix}`;
    const { keyId } = await s.kms.createKey({ name: keyName });
    await s.engine.createDatabase(databaseId, keyId);
    const file = join(suite.dir, `schedules-${suffix}.yaml`);
    writeFileSync(file, `backups:\n  - database: ${databaseId}\n    at: "02:00"\nrotations:\n  - key: ${keyName}\n    every: 30d\n`);
    const backupId = backupScheduleId(databaseId);
    const rotationId = rotationScheduleId(keyId);
    try {
      await s.worker.runUntil(async () => {
        await s.engine.withDatabase(databaseId, (db) => db.exec('CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1), (2), (3);'));
        await suite.client.workflow.execute(nightlyBackup, { taskQueue: s.taskQueue, workflowId: backupWorkflowId(databaseId, '2026-12-06'), args: [{ databaseId, night: '2026-12-06' }] });
        const lastBackup = s.catalog.lastGood(databaseId);
        assert.ok(lastBackup && lastBackup.bytes > 0);
        const applied = await keyops(['schedule', 'apply', '-f', file, '--task-queue', s.taskQueue], ADDRESS_ENV());
        assert.equal(applied.code, 0, applied.stderr);

        const checks = await runDoctor(suite.client, suite.env.connection, 'default', testServerAddress(), { taskQueue: s.taskQueue, scheduleFile: file, timeoutSeconds: 60 });
        assert.deepEqual(failed(checks), [], formatChecks(checks).join('\n'));
        assert.deepEqual(
          checks.map((c) => c.check),
          [
            `server reachable at ${testServerAddress()}`,
            'namespace exists',
            'search attributes registered',
            `workers poll task queue "${s.taskQueue}"`,
            `workers poll task queue "${bulkTaskQueue(s.taskQueue)}"`,
            'KMS local',
            'engines',
            'backup space',
            'local KMS master secret',
            `schedule ${backupId}`,
            `schedule ${rotationId}`,
            'no run waits for an operator',
          ],
        );
        assert.equal(checks.find((c) => c.check === 'KMS local')?.detail, 'answers for 1 key(s) keyops uses');
        assert.equal(checks.find((c) => c.check === 'engines')?.detail, 'answer for 1 database(s)');
        assert.match(checks.find((c) => c.check === 'backup space')?.detail ?? '', new RegExp(`free in ${join(s.dataDir, 'backups')}, tonight needs about ${lastBackup.bytes} B$`));
        assert.equal(checks.find((c) => c.check === 'local KMS master secret')?.detail, `${s.secretFile} mode 0600`);
        // Nothing secret in what the worker answered: ids, counts, sizes and paths only.
        assert.ok(!JSON.stringify(checks).includes((await import('node:fs')).readFileSync(s.secretFile, 'utf8').trim()));

        // The CLI, as an operator runs it: exit 0, one OK line per check.
        const healthy = await keyops(['doctor', '--task-queue', s.taskQueue, '--file', file], ADDRESS_ENV());
        assert.equal(healthy.code, 0, healthy.stdout + healthy.stderr);
        assert.ok(healthy.stdout.trimEnd().split('\n').every((line) => line.startsWith('OK   ')), healthy.stdout);

        // Tonight would fail: a schedule paused by hand, and a master secret others can read.
        await suite.client.schedule.getHandle(backupId).pause('paused by the doctor test');
        chmodSync(s.secretFile, 0o644);
        const sick = await keyops(['doctor', '--task-queue', s.taskQueue, '--file', file], ADDRESS_ENV());
        assert.equal(sick.code, 1, sick.stdout + sick.stderr);
        const lines = sick.stdout.trimEnd().split('\n');
        const after = (head: string) => lines[lines.indexOf(head) + 1];
        const pausedLine = `FAIL schedule ${backupId}: paused (paused by the doctor test), and ${file} does not say so`;
        assert.ok(lines.includes(pausedLine), sick.stdout);
        assert.equal(after(pausedLine), `  fix: keyops schedule unpause ${backupId}`);
        const secretLine = `FAIL local KMS master secret: ${s.secretFile} has mode 0644, expected 0600`;
        assert.ok(lines.includes(secretLine), sick.stdout);
        assert.equal(after(secretLine), `  fix: chmod 600 ${s.secretFile}`);
        assert.equal(lines.filter((l) => l.startsWith('FAIL ')).length, 2, sick.stdout);
        assert.equal(sick.stderr, '');

        // --json: the same checks as {check, ok, detail, fix}.
        const json = await keyops(['doctor', '--task-queue', s.taskQueue, '--file', file, '--json'], ADDRESS_ENV());
        assert.equal(json.code, 1);
        const parsed = JSON.parse(json.stdout) as DoctorCheck[];
        assert.deepEqual(
          parsed.find((c) => c.check === `schedule ${backupId}`),
          { check: `schedule ${backupId}`, ok: false, detail: `paused (paused by the doctor test), and ${file} does not say so`, fix: `keyops schedule unpause ${backupId}` },
        );
        if (process.env.KEYOPS_RECORD_HISTORIES) {
          const desk = suite.client.workflow.getHandle(lookupDeskWorkflowId(s.taskQueue));
          await desk.terminate('recorded for the replay test');
          await recordHistory(desk.workflowId, 'lookup-desk-check-night.json');
        }
      });
    } finally {
      for (const id of [backupId, rotationId]) await suite.client.schedule.getHandle(id).delete().catch(() => undefined);
      await suite.client.workflow.getHandle(lookupDeskWorkflowId(s.taskQueue)).terminate('test finished').catch(() => undefined);
    }
  });

  it('no worker on the task queue: both queues FAIL with the command that starts one, and the worker-side checks are not run', async () => {
    const taskQueue = uniqueTaskQueue('doctor-no-worker');
    const checks = await runDoctor(suite.client, suite.env.connection, 'default', testServerAddress(), { taskQueue, scheduleFile: undefined, timeoutSeconds: 5 });
    const lines = formatChecks(checks);
    const start = `  fix: ./temporal-dev.sh up -d (or KEYOPS_TASK_QUEUE=${taskQueue} npm run worker)`;
    assert.deepEqual(lines.slice(3, 8), [
      `FAIL workers poll task queue "${taskQueue}": no live workflow or activity poller`,
      start,
      `FAIL workers poll task queue "${bulkTaskQueue(taskQueue)}": no live activity poller (rewraps and verifications would wait)`,
      start,
      `SKIP worker-side checks (KMS, engines, backup space, master secret): not run: no worker polls task queue "${taskQueue}"`,
    ]);
  });

  it('a run waiting in needs-operator FAILs with the mk commands that answer it', async () => {
    const taskQueue = uniqueTaskQueue('doctor-needs-operator');
    const unitSetId = `doctor-${randomUUID().slice(0, 8)}`;
    const workflowId = `mk-rotation/${unitSetId}/req-1`;
    // A run that only carries the phase: no worker polls its queue, so it stays Running as it is.
    const handle = await suite.client.workflow.start('rotateMasterKey', { taskQueue, workflowId, args: [], typedSearchAttributes: [{ key: PhaseAttribute, value: 'needs-operator' }] });
    try {
      const line = await waitUntil('the doctor to see the run in needs-operator', async () => {
        const checks = await runDoctor(suite.client, suite.env.connection, 'default', testServerAddress(), { taskQueue, scheduleFile: undefined, timeoutSeconds: 5 });
        const lines = formatChecks(checks);
        const i = lines.findIndex((l) => l.startsWith('FAIL no run waits for an operator'));
        return i >= 0 ? lines.slice(i, i + 2) : undefined;
      });
      assert.deepEqual(line, [
        `FAIL no run waits for an operator: 1 run(s) wait in needs-operator: ${workflowId}`,
        `  fix: keyops mk status ${unitSetId} req-1 then keyops mk decide ${unitSetId} req-1 --action <action>`,
      ]);
    } finally {
      await handle.terminate('test finished');
    }
  });

  it('an unreachable server: one FAIL line, every other check not run, exit 3, no stack trace', async () => {
    const r = await keyops(['doctor', '--address', '127.0.0.1:1', '--file', '/nonexistent.yaml']);
    assert.equal(r.code, 3);
    const lines = r.stdout.trimEnd().split('\n');
    assert.match(lines[0] ?? '', /^FAIL server reachable at 127\.0\.0\.1:1: /);
    assert.equal(lines[1], '  fix: ./temporal-dev.sh up -d (or --address / TEMPORAL_ADDRESS for your cluster)');
    assert.equal(lines.slice(2).length, 7);
    assert.ok(lines.slice(2).every((l) => / not run: the server is unreachable$/.test(l)), r.stdout);
    assert.equal(r.stderr, '');
  });

  it('worker side: a disabled key, a database the engine no longer has, and too little room for tonight each FAIL with their fix', async () => {
    const dataDir = join(suite.dir, 'doctor-worker-side');
    const kms = LocalKms.open({ path: join(dataDir, 'kms', 'keys.sqlite'), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(dataDir, 'registry', 'wdeks.sqlite'));
    const local = localActivities({ dataDir, kms, registry });
    const check = createNightReadiness({ dataDir, kms, registry, engine: local.engine, catalog: local.catalog });
    const suffix = randomUUID().slice(0, 8);
    const { keyId: good } = await kms.createKey({ name: `doctor-good-${suffix}` });
    const { keyId: disabled } = await kms.createKey({ name: `doctor-disabled-${suffix}` });
    await local.engine.createDatabase(`sales-${suffix}`, good);
    await local.engine.createDatabase(`hr-${suffix}`, disabled);
    const healthy = await check();
    assert.deepEqual(healthy.filter((c) => !c.ok), [], JSON.stringify(healthy));

    await kms.disableKey(disabled);
    // A database dropped from the engine while its last backup, 1 EiB, is still catalogued.
    const gone = `gone-${suffix}`;
    local.catalog.record({
      backupId: backupWorkflowId(gone, '2026-12-06'),
      databaseId: gone,
      night: '2026-12-06',
      createdAt: new Date().toISOString(),
      path: join(dataDir, 'backups', gone, 'x.kob'),
      bytes: 2 ** 60,
      sha256: '0'.repeat(64),
      keyId: good,
      keyVersion: 1,
      backupKeyHash: '0'.repeat(64),
      verification: undefined,
      status: 'good',
    });
    const checks = await check();
    const failing = Object.fromEntries(checks.filter((c) => !c.ok).map((c) => [c.check, [c.detail, c.fix]]));
    assert.deepEqual(Object.keys(failing).sort(), ['KMS local', 'backup space', 'engines'], JSON.stringify(checks));
    assert.equal(failing['KMS local']![0], `1 of 2 key(s) fail: ${disabled} is disabled`);
    assert.match(failing['KMS local']![1]!, /^check the local KMS store .*kms and its master secret on the worker$/);
    assert.match(failing.engines![0]!, new RegExp(`^1 of 3 database\\(s\\) fail: ${gone}: `));
    assert.match(failing['backup space']![0]!, /free in .*backups, tonight needs about 1073741824\.0 GiB$/);
    assert.match(failing['backup space']![1]!, /^free space on the file system of /);
  });

  it('a KMS that never answers (packets dropped) FAILs within its limit, named, while the others are still checked', async () => {
    // Accepts connections and never answers, as a KMS behind a firewall that drops packets.
    const sockets = new Set<Socket>();
    const blackhole = createNetServer((socket) => void sockets.add(socket));
    await new Promise<void>((r) => blackhole.listen(0, '127.0.0.1', r));
    after(() => {
      for (const socket of sockets) socket.destroy();
      blackhole.close();
    });
    const dataDir = join(suite.dir, 'doctor-blackhole');
    mkdirSync(dataDir, { recursive: true });
    const tokenFile = join(dataDir, 'bao.token');
    writeFileSync(tokenFile, 'doctor-test-token\n', { mode: 0o600 });
    const local = LocalKms.open({ path: join(dataDir, 'kms', 'keys.sqlite'), masterSecret: randomBytes(32) });
    const bao = VaultTransitKms.open({ address: `http://127.0.0.1:${(blackhole.address() as AddressInfo).port}`, tokenFile, mount: 'transit' });
    const kms = new KmsRouter(new Map<string, KeyManagementService>([['local', local], ['bao', bao]]), 'local');
    const registry = SqliteWdekRegistry.open(join(dataDir, 'registry', 'wdeks.sqlite'));
    const adapters = localActivities({ dataDir, kms, registry });
    const { keyId } = await kms.createKey({ name: 'doctor-local' });
    await adapters.engine.createDatabase('blackhole-local', keyId);
    // Two keys keyops uses in the unreachable KMS, through the catalog.
    for (const [n, baoKey] of ['bao:orders', 'bao:payroll'].entries()) {
      const base = { databaseId: `blackhole-${n}`, night: '2026-12-06', createdAt: new Date().toISOString(), path: join(dataDir, `${n}.kob`), bytes: 1, sha256: '0'.repeat(64) };
      adapters.catalog.record({ ...base, backupId: backupWorkflowId(base.databaseId, base.night), keyId: baoKey, keyVersion: 1, backupKeyHash: '0'.repeat(64), verification: undefined, status: 'good' });
    }
    const checks = await createNightReadiness({ dataDir, kms, registry, engine: adapters.engine, catalog: adapters.catalog, kmsAnswerWithinMs: 1000 })();
    assert.deepEqual(
      checks.filter((c) => c.check.startsWith('KMS ')),
      [
        { check: 'KMS bao', ok: false, detail: 'no answer within 1 s (waiting on key 1 of 2)', fix: "check kms.bao in the worker's keyops.yaml and its credentials, and that the worker reaches its address" },
        { check: 'KMS local', ok: true, detail: 'answers for 1 key(s) keyops uses', fix: null },
      ],
    );
    assert.ok(sockets.size >= 1, 'the Vault adapter did connect, and heard nothing back');
  });

  it('a namespace that does not exist FAILs with the command that creates it; the checks after it are not run', async () => {
    const namespace = `doctor-missing-${randomUUID().slice(0, 8)}`;
    const checks = await runDoctor(suite.client, suite.env.connection, namespace, testServerAddress(), { taskQueue: 'keyops', scheduleFile: undefined, timeoutSeconds: 5 });
    const lines = formatChecks(checks);
    assert.deepEqual(lines.slice(1, 3), [`FAIL namespace exists: namespace "${namespace}" does not exist`, `  fix: temporal operator namespace create --namespace ${namespace}`]);
    assert.equal(lines.length, 9, lines.join('\n'));
    assert.ok(lines.slice(3).every((l) => l.endsWith(`not run: namespace "${namespace}" is not usable`)), lines.join('\n'));
  });

  it('search attributes missing or of another type FAIL with the command that registers them', () => {
    const { INDEXED_VALUE_TYPE_KEYWORD: KEYWORD, INDEXED_VALUE_TYPE_TEXT: TEXT } = temporal.api.enums.v1.IndexedValueType;
    const check = searchAttributeCheck({ KeyId: KEYWORD, DatabaseId: KEYWORD, Phase: KEYWORD, Outcome: TEXT }, 'prod');
    assert.deepEqual(check, {
      check: 'search attributes registered',
      ok: false,
      detail: 'missing or of another type: Outcome, KeyVersion',
      fix: 'temporal operator search-attribute create --namespace prod --name Outcome --type Keyword --name KeyVersion --type Int',
    });
  });

  it('--help shows an example', async () => {
    const r = await keyops(['doctor', '--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /Examples:\n {2}keyops doctor /);
    assert.match(r.stdout, /What it prints \(keyops doctor -f schedules.yaml\):\n {2}OK {3}server reachable/);
    assert.match(r.stdout, / {4}fix: keyops schedule unpause nightly-backup\/demo/);
  });
});
