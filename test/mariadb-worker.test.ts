/**
 * A MariaDB server backed up by the worker as production runs it: keyops.yaml names the server
 * under `databases:`, and the unchanged nightlyBackup workflow backs it up, waits while MariaDB
 * re-encrypts its pages for a new key version, verifies each backup by a test restore on a
 * scratch server, and catalogues it; `keyops backup restore` brings it back as a data directory.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { LocalKms } from '../activities/kms/local-kms';
import { nightlyBackup } from '../workflows';
import { backupProgressQuery, backupWorkflowId } from '../workflows/backup-messages';
import { freePort, keyops } from './helpers/child-process';
import { type MariaDb, startMariaDbWithOpenBao } from './helpers/mariadb';
import type { MariaDbKeyStore } from '../activities/engines/mariadb-key-store';
import { testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';
import { WorkerProcess } from './helpers/worker-process';

describe('the worker backing up a MariaDB server named in keyops.yaml', () => {
  const suite = useSuiteFixture('mariadb-worker');
  let stack: { db: MariaDb; keys: MariaDbKeyStore; stop(): Promise<void> };
  let worker: WorkerProcess;
  let taskQueue: string;
  let dataDir: string;
  let rootKeyId: string;

  const cli = async (...args: string[]) => {
    const r = await keyops([...args, '--task-queue', taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });
    assert.equal(r.code, 0, `keyops ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };

  before(async () => {
    stack = await startMariaDbWithOpenBao(join(suite.dir, 'servers'), 5_000);
    dataDir = join(suite.dir, 'keyops');
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    // The root key that wraps each backup's key: made in the worker's local KMS before it starts.
    const masterSecret = randomBytes(32);
    const kms = LocalKms.open({ path: join(dataDir, 'kms', 'keys.sqlite'), masterSecret });
    rootKeyId = (await kms.createKey({ name: 'mariadb-backups' })).keyId;
    kms.close();
    const { db } = stack;
    const config = join(dataDir, 'keyops.yaml');
    writeFileSync(
      config,
      [
        'kms:',
        '  instances:',
        '    local: { type: local }',
        'databases:',
        '  shop:',
        '    type: mariadb',
        `    socket: ${db.socket}`,
        `    serverConfig: ${db.config}`,
        `    rootKey: ${rootKeyId}`,
        `    keyStore: { address: "${stack.keys.where.replace(/\/v1\/mariadb$/, '')}", mount: mariadb, tokenFile: "${join(suite.dir, 'servers', 'bao', 'root.token')}" }`,
        '',
      ].join('\n'),
    );
    taskQueue = uniqueTaskQueue('mariadb-worker');
    worker = new WorkerProcess({
      TEMPORAL_ADDRESS: testServerAddress(),
      KEYOPS_TASK_QUEUE: taskQueue,
      KEYOPS_DATA_DIR: dataDir,
      KEYOPS_CONFIG: config,
      KEYOPS_LOG_FORMAT: 'json',
      KEYOPS_METRICS_ADDRESS: `127.0.0.1:${await freePort()}`,
      KEYOPS_KMS_MASTER_SECRET: masterSecret.toString('base64'),
    });
    await worker.waitFor('worker started');
  });
  after(async () => {
    if (worker && worker.child.exitCode === null) {
      worker.child.kill('SIGTERM');
      await new Promise((r) => worker.child.once('exit', r));
    }
    await stack?.stop();
  });

  it('backs up, verifies on a scratch server and catalogues; the backup restores as a data directory', async () => {
    await cli('backup', 'run', 'shop', '--night', '2026-12-01', '--wait');
    const listed = JSON.parse(await cli('backup', 'list', '--database', 'shop', '--json')) as { backupId: string; keyId: string; keyVersion: number; status: string }[];
    assert.deepEqual(
      listed.map((b) => [b.backupId, b.keyId, b.keyVersion, b.status]),
      [['backup/shop/2026-12-01', rootKeyId, 1, 'good']],
    );
    const target = join(suite.dir, 'restored-shop');
    const out = await cli('backup', 'restore', 'backup/shop/2026-12-01', '--to', target);
    assert.match(out, /5000 rows/);
    assert.ok(readdirSync(join(target, 'shop')).includes('orders.ibd'));
  });

  it('holds the night while MariaDB re-encrypts its pages for a new key version, then backs up under it', async () => {
    const { db, keys } = stack;
    // The background threads held: two new versions leave every page more than the key age behind.
    await db.query('SET GLOBAL innodb_encryption_threads = 0');
    await keys.rotate(1, 1);
    await keys.rotate(1, 2);
    const handle = await suite.client.workflow.start(nightlyBackup, {
      taskQueue,
      workflowId: backupWorkflowId('shop', '2026-12-02'),
      args: [{ databaseId: 'shop', night: '2026-12-02', keyChangeRecheckMs: 500 }],
    });
    await waitUntil('the night to wait for the re-encryption', async () => ((await handle.query(backupProgressQuery)).phase === 'awaiting-key-change' ? true : undefined), 60_000);
    await db.query('SET GLOBAL innodb_encryption_threads = 2');
    const done = await handle.result();
    assert.equal(done.phase, 'done');
    const pages = await db.query<{ v: number }>("SELECT MIN(MIN_KEY_VERSION) AS v FROM information_schema.INNODB_TABLESPACES_ENCRYPTION");
    assert.equal(Number(pages[0]!.v), 3, 'the backup started once every page was on version 3');
    const listed = JSON.parse(await cli('backup', 'list', '--database', 'shop', '--json')) as { backupId: string; status: string }[];
    assert.ok(listed.some((b) => b.backupId === 'backup/shop/2026-12-02' && b.status === 'good'));
  });
});
