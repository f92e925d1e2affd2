/**
 * A MariaDB server backed up by the worker as production runs it: keyops.yaml names the server
 * under `databases:`, and the unchanged nightlyBackup workflow backs it up, waits while MariaDB
 * re-encrypts its pages for a new key version, verifies each backup by a test restore on a
 * scratch server, and catalogues it; `keyops backup restore` brings it back as a data directory.
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { nightlyBackup } from '../workflows';
import { backupProgressQuery, backupWorkflowId } from '../workflows/backup-messages';
import { keyops } from './helpers/child-process';
import { type MariaDb, startMariaDbWithOpenBao } from './helpers/mariadb';
import type { MariaDbKeyStore } from '../activities/engines/mariadb-key-store';
import { mariadbWorkerSetup } from './helpers/mariadb-worker';
import type { OpenBao } from './helpers/openbao';
import { testServerAddress, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';
import type { WorkerProcess } from './helpers/worker-process';

describe('the worker backing up a MariaDB server named in keyops.yaml', () => {
  const suite = useSuiteFixture('mariadb-worker');
  let stack: { db: MariaDb; bao: OpenBao; keys: MariaDbKeyStore; stop(): Promise<void> };
  let worker: WorkerProcess;
  let stopWorker: (w: WorkerProcess | undefined) => Promise<void>;
  let taskQueue: string;
  let rootKeyId: string;

  const cli = async (...args: string[]) => {
    const r = await keyops([...args, '--task-queue', taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });
    assert.equal(r.code, 0, `keyops ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };

  before(async () => {
    stack = await startMariaDbWithOpenBao(join(suite.dir, 'servers'), 5_000);
    const setup = await mariadbWorkerSetup(suite.dir, stack);
    ({ taskQueue, rootKeyId, stopWorker } = setup);
    worker = await setup.startWorker();
  });
  after(async () => {
    await stopWorker?.(worker);
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
