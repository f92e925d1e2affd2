/**
 * A MariaDB server backed up by the worker as production runs it: keyops.yaml names the server
 * under `databases:`, and the nightlyBackup workflow backs it up, waits while MariaDB re-encrypts
 * its pages for a new version of its own key (`engine:shop`), verifies each backup by a test restore on a
 * scratch server, and catalogues it; `keyops backup restore` brings it back as a data directory.
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type awaitRewrap, nightlyBackup, type rotateRootKey } from '../workflows';
import { rewrapProgressQuery, rewrapWorkflowId } from '../workflows/root-key-messages';
import { recordHistory } from './helpers/record-history';
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

  it('holds the night while MariaDB re-encrypts its pages for a key version written outside keyops; the follow run announces "complete" and the signal releases it', async () => {
    const { db, keys } = stack;
    // The background threads held: two versions written by hand leave every page more than the key age behind.
    await db.query('SET GLOBAL innodb_encryption_threads = 0');
    await keys.rotate(1, 1);
    await keys.rotate(1, 2);
    const night = '2026-12-02';
    const handle = await suite.client.workflow.start(nightlyBackup, {
      taskQueue,
      workflowId: backupWorkflowId('shop', night),
      // Re-checks far apart: only the announcement can release the night within the test.
      args: [{ databaseId: 'shop', night, recheckEveryMs: 3_600_000 }],
    });
    const waiting = await waitUntil('the night to wait for the engine key', async () => {
      const p = await handle.query(backupProgressQuery);
      return p.phase === 'awaiting-rewrap' ? p : undefined;
    }, 60_000);
    assert.equal(waiting.awaitedVersion, 3);
    // The waiting backup started the run that follows the engine (no watcher, no operator).
    const follow = suite.client.workflow.getHandle<typeof rotateRootKey>(rewrapWorkflowId('engine:shop', 3));
    const following = await waitUntil('the follow run to watch the pages', async () => {
      const p = await follow.query(rewrapProgressQuery).catch(() => undefined);
      return p?.phase === 'following' ? p : undefined;
    }, 60_000);
    assert.equal(following.total, 0, 'an engine key has no WDEKs to rewrap');
    const status = JSON.parse(await cli('rewrap', 'status', 'engine:shop', '--json')) as { upToDate: boolean; consumers: { engines: { databaseId: string; settled: boolean; spacesBehind: number }[] }; waiting: { workflowId: string }[] };
    assert.equal(status.upToDate, false);
    assert.equal(status.consumers.engines[0]!.databaseId, 'shop');
    assert.equal(status.consumers.engines[0]!.settled, false);
    assert.ok(status.consumers.engines[0]!.spacesBehind > 0);
    assert.ok(status.waiting.some((w) => w.workflowId === `${backupWorkflowId('shop', night)}/await-rewrap`), JSON.stringify(status.waiting));

    await db.query('SET GLOBAL innodb_encryption_threads = 2');
    const done = await handle.result();
    assert.equal(done.phase, 'done');
    const released = await suite.client.workflow.getHandle<typeof awaitRewrap>(`${backupWorkflowId('shop', night)}/await-rewrap`).result();
    assert.deepEqual([released.keyId, released.version, released.releasedBy], ['engine:shop', 3, 'signal']);
    assert.deepEqual((await follow.result()).engines?.map((e) => e.databaseId), ['shop']);
    const pages = await db.query<{ v: number }>('SELECT MIN(MIN_KEY_VERSION) AS v FROM information_schema.INNODB_TABLESPACES_ENCRYPTION');
    assert.equal(Number(pages[0]!.v), 3, 'the backup started once every page was on version 3');
    const listed = JSON.parse(await cli('backup', 'list', '--database', 'shop', '--json')) as { backupId: string; status: string }[];
    assert.ok(listed.some((b) => b.backupId === `backup/shop/${night}` && b.status === 'good'));
    if (process.env.KEYOPS_RECORD_HISTORIES) {
      await recordHistory(backupWorkflowId('shop', night), 'nightly-backup-engine-key.json');
      await recordHistory(rewrapWorkflowId('engine:shop', 3), 'rotate-root-key-follow-engine.json');
    }
  });

  it('keyops key rotate engine:shop rotates the server\'s own key and returns once MariaDB has re-encrypted what the version asks; key show and the watcher see it', async () => {
    // Version 4: with innodb_encryption_rotate_key_age=1 the pages on 3 are not behind enough to move.
    const four = JSON.parse(await cli('key', 'rotate', 'engine:shop', '--wait', '--json')) as { targetVersion: number; rotated: boolean; engines: { databaseId: string }[] };
    assert.deepEqual([four.targetVersion, four.rotated, four.engines.map((e) => e.databaseId)], [4, true, ['shop']]);
    // Version 5: pages on 3 are now two behind; "complete" comes only once all of them moved.
    const five = JSON.parse(await cli('key', 'rotate', 'engine:shop', '--wait', '--json')) as { targetVersion: number; engines: { oldestVersionNeeded: number }[] };
    assert.equal(five.targetVersion, 5);
    const pages = await stack.db.query<{ v: number }>('SELECT MIN(MIN_KEY_VERSION) AS v FROM information_schema.INNODB_TABLESPACES_ENCRYPTION');
    assert.equal(Number(pages[0]!.v), 5, 'every page was on version 5 when the rotation answered');
    assert.equal(five.engines[0]!.oldestVersionNeeded, 5);
    const shown = await cli('key', 'show', 'engine:shop');
    assert.match(shown, /version 5/);
    assert.match(shown, /complete at: version 5/);
    assert.match(shown, /database shop \(MariaDB key 1 in http:\/\/127\.0\.0\.1:\d+\/v1\/mariadb \(database shop\)\): settled/);
    const watched = JSON.parse(await cli('key', 'watch', '--json')) as { checked: number; started: string[] };
    assert.equal(watched.started.length, 0, 'nothing behind: the watcher starts nothing');
    assert.ok(watched.checked >= 1);
    if (process.env.KEYOPS_RECORD_HISTORIES) await recordHistory(rewrapWorkflowId('engine:shop', 5), 'rotate-root-key-engine-key.json');
  });

  it('key versions says what needs each version; destroy-version erases one nothing needs and refuses the rest, saying why', async () => {
    type Versions = { currentVersion: number; versions: { version: number; current: boolean; destroyed: boolean; databases: string[]; backups: string[] }[] };
    const listed = JSON.parse(await cli('key', 'versions', 'engine:shop', '--json')) as Versions;
    assert.equal(listed.currentVersion, 5);
    // Backups of nights 1 and 2 were taken with every page on version 1 and on version 3.
    assert.deepEqual(
      listed.versions.map((v) => [v.version, v.current, v.databases, v.backups]),
      [
        [1, false, [], ['backup/shop/2026-12-01']],
        [2, false, [], []],
        [3, false, [], ['backup/shop/2026-12-02']],
        [4, false, [], []],
        [5, true, ['shop'], []],
      ],
    );
    const unconfirmed = await keyops(['key', 'destroy-version', 'engine:shop', '2', '--task-queue', taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });
    assert.equal(unconfirmed.code, 2);
    assert.match(unconfirmed.stderr, /cannot be undone: add --yes/);
    const refusals: [string, RegExp][] = [
      ['1', /1 catalogued backup\(s\) need it to restore: backup\/shop\/2026-12-01/],
      ['5', /it is the current version/],
      ['9', /the key has no such version/],
    ];
    for (const [version, why] of refusals) {
      const r = await keyops(['key', 'destroy-version', 'engine:shop', version, '--yes', '--task-queue', taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });
      assert.equal(r.code, 1, `version ${version}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, why);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    }
    assert.match(await cli('key', 'destroy-version', 'engine:shop', '2', '--yes'), /destroyed version 2 of key engine:shop/);
    assert.match(await cli('key', 'destroy-version', 'engine:shop', '2', '--yes'), /was already destroyed/);
    const stored = await stack.keys.versions(1);
    assert.deepEqual(stored.versions.map((v) => [v.version, v.destroyed]), [[1, false], [2, true], [3, false], [4, false], [5, false]]);
    // A KMS root key keeps its retired versions: keyops refuses before touching anything.
    const kmsKey = await keyops(['key', 'destroy-version', rootKeyId, '1', '--yes', '--task-queue', taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });
    assert.equal(kmsKey.code, 1);
    assert.match(kmsKey.stderr, /is a KMS key: the KMS keeps its retired versions/);
    // MariaDB still reads every page: none was under the destroyed version.
    const rows = await stack.db.query<{ n: bigint }>('SELECT COUNT(*) AS n FROM shop.orders');
    assert.equal(Number(rows[0]!.n), 5000);
    if (process.env.KEYOPS_RECORD_HISTORIES) {
      // The CLI's run ids carry a timestamp: found through visibility, which may lag a moment.
      const idOf = (type: string) =>
        waitUntil(`a ${type} run in visibility`, async () => {
          for await (const run of suite.client.workflow.list({ query: `WorkflowType = '${type}' AND TaskQueue = '${taskQueue}' AND ExecutionStatus = 'Completed'` })) return run.workflowId;
          return undefined;
        }, 30_000);
      // (list-root-key-versions.json is from before `key versions` became a look-up-desk update.)
      await recordHistory(await idOf('destroyRootKeyVersion'), 'destroy-root-key-version.json');
    }
  });
});
