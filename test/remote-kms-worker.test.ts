import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { AwsKms } from '../activities/kms/aws-kms';
import type { KeyManagementService } from '../activities/kms/key-management-service';
import { splitKeyId } from '../activities/kms/key-id';
import { KeyProtectKms } from '../activities/kms/key-protect-kms';
import type { nightlyBackup } from '../workflows';
import { backupProgressQuery, backupWorkflowId } from '../workflows/backup-messages';
import { freePort, keyops } from './helpers/child-process';
import { type Moto, startMoto } from './helpers/moto';
import { testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';
import { WorkerProcess } from './helpers/worker-process';
import { KeyProtectFake } from './fakes/key-protect-fake';

const HOUR = 3_600_000;

interface Remote {
  /** keyops.yaml's instance for it. */
  yaml: string;
  /** Extra worker environment (credentials by reference). */
  env: NodeJS.ProcessEnv;
  /** The same KMS, as an operator's own tool would reach it: rotations made outside keyops. */
  outside: KeyManagementService;
  /** Lets a second rotation within the hour through (the fake's clock; AWS: nothing to do). */
  anHourLater(): void;
}

/**
 * Issue 14 §4 through the worker as production runs it: keyops.yaml names a remote KMS as the
 * default, `keyops init` puts the demo key there, and the walkthrough's operations run through
 * it: a backup, a rotation made outside keyops found by the watcher and rewrapped, a backup
 * under the new version, and the restore of the backup taken under the old one.
 */
describe('the worker on a remote KMS from keyops.yaml', () => {
  const suite = useSuiteFixture('remote-kms-worker');
  const stops: (() => Promise<void>)[] = [];
  after(async () => {
    for (const stop of stops) await stop();
  });

  const run = async (label: string, instance: string, remote: Remote) => {
    const dataDir = join(suite.dir, label);
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const config = join(dataDir, 'keyops.yaml');
    writeFileSync(config, `kms:\n  default: ${instance}\n  instances:\n    local: { type: local }\n    ${instance}: ${remote.yaml}\n`);
    const taskQueue = uniqueTaskQueue(label);
    const worker = new WorkerProcess({
      TEMPORAL_ADDRESS: testServerAddress(),
      KEYOPS_TASK_QUEUE: taskQueue,
      KEYOPS_DATA_DIR: dataDir,
      KEYOPS_CONFIG: config,
      KEYOPS_LOG_FORMAT: 'json',
      KEYOPS_METRICS_ADDRESS: `127.0.0.1:${await freePort()}`,
      KEYOPS_KMS_MASTER_SECRET: randomBytes(32).toString('base64'),
      ...remote.env,
    });
    const cli = async (...args: string[]) => {
      const r = await keyops([...args, '--task-queue', taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });
      assert.equal(r.code, 0, `keyops ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    try {
      await worker.waitFor('worker started');
      // A tenth of the demo's WDEKs: moto answers about 50 requests/s on a loaded 2-core machine.
      await cli('init', '--wdeks', '200');
      const key = JSON.parse(await cli('key', 'show', 'demo', '--json')) as { keyId: string; currentVersion: number };
      assert.equal(splitKeyId(key.keyId).instance, instance, `the demo key lives in ${instance}: ${key.keyId}`);
      assert.equal(key.currentVersion, 1);
      // key create puts a key in the default instance, or the one --kms names.
      const created = JSON.parse(await cli('key', 'create', 'spare-key', '--json')) as { keyId: string };
      assert.equal(splitKeyId(created.keyId).instance, instance);
      const onLocal = JSON.parse(await cli('key', 'create', 'spare-key', '--kms', 'local', '--json')) as { keyId: string };
      assert.match(onLocal.keyId, /^[0-9a-f-]{36}$/, 'a local key keeps its bare UUID');
      const nowhere = await keyops(['key', 'create', 'spare-key', '--kms', 'nowhere', '--task-queue', taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });
      assert.notEqual(nowhere.code, 0);
      assert.match(nowhere.stderr, /no KMS instance "nowhere" is configured \(configured: local, \w+\)/);
      assert.doesNotMatch(nowhere.stderr, /^\s+at /m);
      await cli('backup', 'run', 'demo', '--night', '2026-11-01', '--wait');

      // Rotated by the operator's own tooling, not keyops; the watcher finds it and rewraps.
      remote.anHourLater();
      await remote.outside.rotateKey(splitKeyId(key.keyId).id, `outside-${randomUUID()}`);
      // Tonight's backup comes first: it must wait for the rewrap (reference 000), not fail.
      await cli('backup', 'run', 'demo', '--night', '2026-11-02');
      const backup = suite.client.workflow.getHandle<typeof nightlyBackup>(backupWorkflowId('demo', '2026-11-02'));
      await waitUntil('the backup to wait for the rewrap', async () => ((await backup.query(backupProgressQuery)).phase === 'awaiting-rewrap' ? true : undefined), 120_000);
      const watched = JSON.parse(await cli('key', 'watch', '--json')) as { started: string[] };
      assert.deepEqual(watched.started, [`rewrap/${key.keyId}/v2`]);
      await waitUntil(`the rewrap of ${key.keyId} to finish`, async () => {
        const status = JSON.parse(await cli('key', 'show', key.keyId, '--json')) as { rewrappedVersion?: number };
        return status.rewrappedVersion === 2 ? true : undefined;
      }, 120_000);

      const released = await backup.result();
      assert.deepEqual({ phase: released.phase, awaitedVersion: released.awaitedVersion, keyVersion: released.keyVersion }, { phase: 'done', awaitedVersion: 2, keyVersion: 2 });
      const listed = JSON.parse(await cli('backup', 'list', '--database', 'demo', '--json')) as { backupId: string; keyId: string; keyVersion: number }[];
      const byNight = new Map(listed.map((b) => [b.backupId, b]));
      assert.equal(byNight.get('backup/demo/2026-11-01')?.keyVersion, 1);
      assert.equal(byNight.get('backup/demo/2026-11-02')?.keyVersion, 2);
      assert.ok(listed.every((b) => b.keyId === key.keyId));

      // The backup taken under version 1 still restores: the retired version still unwraps.
      const target = join(dataDir, 'restored-v1.db');
      await cli('backup', 'restore', 'backup/demo/2026-11-01', '--to', target);
      assert.ok(existsSync(target), 'the v1 backup restored');
    } finally {
      worker.child.kill('SIGTERM');
      await new Promise((r) => worker.child.once('exit', r));
    }
  };

  it('AWS KMS (moto, an emulator whose rotation does not change key material)', async () => {
    const moto: Moto = await startMoto();
    stops.push(() => moto.stop());
    const credentials = { AWS_ACCESS_KEY_ID: 'moto-emulator', AWS_SECRET_ACCESS_KEY: 'moto-emulator', AWS_REGION: 'us-east-1' };
    Object.assign(process.env, credentials);
    await run('aws', 'aws', {
      yaml: `{ type: aws-kms, region: us-east-1, endpoint: "${moto.endpoint}" }`,
      env: credentials,
      outside: AwsKms.create({ region: 'us-east-1', endpoint: moto.endpoint, minRotationIntervalMs: 0 }),
      anHourLater: () => undefined,
    });
  });

  it('IBM Key Protect (a fake of its public API: no Key Protect is reachable here)', async () => {
    const apiKey = `kp-${randomBytes(12).toString('hex')}`;
    let offset = 0;
    const fake = await KeyProtectFake.start({ apiKeys: { [apiKey]: {} }, now: () => Date.now() + offset });
    stops.push(() => fake.close());
    process.env.KEYOPS_TEST_KP_API_KEY = apiKey;
    await run('kp', 'kp', {
      yaml: `{ type: key-protect, endpoint: "${fake.endpoint}", iamEndpoint: "${fake.endpoint}", instanceId: ${fake.instanceId}, apiKeyEnv: KEYOPS_TEST_KP_API_KEY }`,
      env: { KEYOPS_TEST_KP_API_KEY: apiKey },
      outside: new KeyProtectKms({ endpoint: fake.endpoint, iamEndpoint: fake.endpoint, instanceId: fake.instanceId, apiKeyEnv: 'KEYOPS_TEST_KP_API_KEY' }),
      anHourLater: () => void (offset += HOUR + 60_000),
    });
  });
});
