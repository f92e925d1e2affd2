/**
 * Reference 000 reproduced with real parts: a database's nightly backup is due while its
 * encryption key rotates and the pages are re-encrypted, then the key store becomes unreachable
 * for a window. The real database is MariaDB 10.11 with its keys in a real OpenBao (sealed for the
 * window); the naive job is reference 000's, a `mariadb-backup` loop with 3 attempts and fixed
 * sleeps (compressed to seconds); keyops runs its unchanged nightly workflow on a worker process.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { MariaDbKeyStore } from '../activities/engines/mariadb-key-store';
import { type awaitRewrap, nightlyBackup } from '../workflows';
import { rewrapProgressQuery, rewrapWorkflowId } from '../workflows/root-key-messages';
import { backupProgressQuery, backupWorkflowId } from '../workflows/backup-messages';
import { keyops, runToEnd } from './helpers/child-process';
import { type MariaDb, startMariaDb, startMariaDbWithOpenBao } from './helpers/mariadb';
import { mariadbWorkerSetup } from './helpers/mariadb-worker';
import type { OpenBao } from './helpers/openbao';
import { testServerAddress, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';
import type { WorkerProcess } from './helpers/worker-process';

/** The naive job of reference 000: three attempts, a fixed sleep between them, then give up. */
const NAIVE_JOB = `
for attempt in 1 2 3; do
  if mariadb-backup --defaults-file="$CNF" --backup --stream=xbstream --target-dir="$WORK/attempt-$attempt" --socket="$SOCK" --user=root >"$OUT" 2>>"$LOG"; then
    echo "attempt $attempt: backup written"; exit 0
  fi
  echo "attempt $attempt failed"; sleep 1
done
echo "giving up after 3 attempts"; exit 1
`;

/** Every row's content, folded: equal digests mean identical rows (and a count that matches). */
/** The keyops database id of this file's server (workflow ids on the shared test server are per id). */
const DB = 'ref000';
const DIGEST = "SELECT COUNT(*) AS n, SUM(CRC32(CONCAT_WS(',', id, item, qty))) AS s FROM shop.orders";
const digestOf = async (db: Pick<MariaDb, 'query'>) => {
  const [row] = await db.query<{ n: bigint; s: bigint | string }>(DIGEST);
  return `${String(row!.n)} rows, digest ${String(row!.s)}`;
};

describe('reference 000 with real parts: MariaDB re-encrypting under a new key version, OpenBao sealed for a window', () => {
  const suite = useSuiteFixture('reference-000-mariadb');
  let stack: { db: MariaDb; bao: OpenBao; keys: MariaDbKeyStore; stop(): Promise<void> };
  let setup: Awaited<ReturnType<typeof mariadbWorkerSetup>>;
  let worker: WorkerProcess | undefined;

  before(async () => {
    stack = await startMariaDbWithOpenBao(join(suite.dir, 'servers'), 50_000);
    setup = await mariadbWorkerSetup(suite.dir, stack, DB);
    worker = await setup.startWorker();
  });
  after(async () => {
    await setup?.stopWorker(worker);
    // The test may have restarted MariaDB: the server running now is stack.db.
    await stack?.db.stop();
    await stack?.stop();
  });

  it('the naive job fails; keyops waits out the rotation and the outage and ends with a verified, catalogued backup that restores with identical rows', async () => {
    const { db, bao, keys } = stack;
    const t0 = Date.now();
    const timeline: string[] = [];
    const mark = (what: string, at = Date.now()) => timeline.push(`${((at - t0) / 1000).toFixed(1).padStart(6)} s  ${what}`);
    const original = await digestOf(db);

    // The key rotates; the background threads are held so that the re-encryption is still due.
    await db.query('SET GLOBAL innodb_encryption_threads = 0');
    await keys.rotate(1, 1);
    await keys.rotate(1, 2);
    mark('MariaDB key rotated to version 3; every page still on version 1, re-encryption pending');
    const night = '2026-12-03';
    const handle = await suite.client.workflow.start(nightlyBackup, {
      taskQueue: setup.taskQueue,
      workflowId: backupWorkflowId(DB, night),
      // Re-checks far apart: the night is released by the announcement, not by polling.
      args: [{ databaseId: DB, night, recheckEveryMs: 3_600_000 }],
    });
    await waitUntil('the night to wait for the re-encryption', async () => ((await handle.query(backupProgressQuery)).phase === 'awaiting-rewrap' ? true : undefined), 60_000);
    await waitUntil('the run that follows the re-encryption', async () => {
      const p = await suite.client.workflow.getHandle(rewrapWorkflowId(`engine:${DB}`, 3)).query(rewrapProgressQuery).catch(() => undefined);
      return p?.phase === 'following' ? true : undefined;
    }, 60_000);
    mark(`keyops: nightly backup started, waits for "complete (engine:${DB}, v3)" (awaiting-rewrap); its wait started the run that follows the re-encryption`);

    await bao.seal();
    mark('OpenBao sealed: MariaDB keys unreachable');
    const out = join(suite.dir, 'naive.xb');
    const log = join(suite.dir, 'naive.log');
    const naive = await runToEnd('bash', ['-c', NAIVE_JOB], {
      env: { CNF: db.config, SOCK: db.socket, WORK: join(suite.dir, 'naive'), OUT: out, LOG: log, VAULT_TOKEN: readFileSync(bao.tokenFile, 'utf8').trim() },
      timeoutMs: 120_000,
    });
    mark(`naive job: ${naive.stdout.trim().split('\n').join('; ')} (exit ${naive.code})`);
    assert.notEqual(naive.code, 0, 'the naive job failed');
    assert.match(readFileSync(log, 'utf8'), /encryption key version \d+ failed/i, "mariadb-backup said it could not get the key");
    assert.equal(statSync(out).size, 0, 'and left no usable backup');

    await bao.unseal();
    mark('OpenBao unsealed');
    // MariaDB 10.11 can keep a failed key lookup after the store is back (it reports version
    // 4294967295, and 10.11 has no way to flush the plugin's cache short of a restart); keyops
    // reports that as key-unavailable and keeps retrying. The operator's fix is a restart.
    const [lost] = await db.query<{ n: bigint }>('SELECT COUNT(*) AS n FROM information_schema.INNODB_TABLESPACES_ENCRYPTION WHERE CURRENT_KEY_VERSION = 4294967295');
    if (Number(lost!.n) > 0) {
      await db.stop();
      stack.db = await startMariaDb({ dir: join(suite.dir, 'servers', 'mariadb'), vault: { address: bao.address, mount: 'mariadb', tokenFile: bao.tokenFile } });
      mark('MariaDB still reported no valid key version after the unseal: restarted it');
    }
    await stack.db.query('SET GLOBAL innodb_encryption_threads = 2');
    mark('MariaDB re-encryption resumed');
    const done = await handle.result();
    const released = await suite.client.workflow.getHandle<typeof awaitRewrap>(`${backupWorkflowId(DB, night)}/await-rewrap`).result();
    assert.equal(released.releasedBy, 'signal');
    mark(`keyops: "complete (engine:${DB}, v${released.version})" announced; the night released by its signal`, done.releasedAt);
    mark('keyops: backup started', done.backupStartedAt);
    mark(`keyops: night done (${done.phase}), ${done.bytes} bytes, verified on a scratch server and catalogued`);
    assert.equal(done.phase, 'done');
    const pages = await stack.db.query<{ v: number }>('SELECT MIN(MIN_KEY_VERSION) AS v FROM information_schema.INNODB_TABLESPACES_ENCRYPTION');
    assert.equal(Number(pages[0]!.v), 3, 'every page is on version 3');

    // Restored into a data directory of its own and started: the same rows, byte for byte.
    const restored = join(suite.dir, 'restored');
    const r = await keyops(['backup', 'restore', backupWorkflowId(DB, night), '--to', join(restored, 'data'), '--task-queue', setup.taskQueue], { TEMPORAL_ADDRESS: testServerAddress() });
    assert.equal(r.code, 0, r.stderr);
    const copy = await startMariaDb({ dir: restored, vault: { address: bao.address, mount: 'mariadb', tokenFile: bao.tokenFile } });
    try {
      assert.equal(await digestOf(copy), original);
    } finally {
      await copy.stop();
    }
    mark(`restored and started: ${original}, identical`);
    console.log(`reference 000 timeline:\n${timeline.join('\n')}`);
  });

  it('SIGKILL of the worker during the backup stream: the night still ends with one good backup and no partial file', async () => {
    const night = '2026-12-04';
    const backups = join(setup.dataDir, 'backups', DB);
    const handle = await suite.client.workflow.start(nightlyBackup, { taskQueue: setup.taskQueue, workflowId: backupWorkflowId(DB, night), args: [{ databaseId: DB, night }] });
    // The partial file exists from the header on; past its first 4 MiB chunk, mariadb-backup is streaming.
    await waitUntil(
      'the backup stream to be under way',
      () => {
        try {
          return readdirSync(backups).some((f) => f.includes(night) && f.includes('.partial-') && statSync(join(backups, f)).size > 4 * 1024 * 1024) ? true : undefined;
        } catch {
          return undefined;
        }
      },
      120_000,
    );
    worker!.child.kill('SIGKILL');
    await new Promise((r) => worker!.child.once('exit', r));
    worker = await setup.startWorker();
    const done = await handle.result();
    assert.equal(done.phase, 'done');
    const files = readdirSync(backups).filter((f) => f.includes(night));
    // The killed worker's scratch directory of mariadb-backup is gone too (removed by the retry).
    const scratch = readdirSync(join(setup.dataDir, 'mariadb', DB)).filter((f) => f.startsWith('mariadb-backup-') || f.startsWith('check-'));
    assert.deepEqual(scratch, [], 'no scratch directory of the killed worker is left');
    assert.equal(files.filter((f) => f.includes('.partial-')).length, 0, `no partial file is left (${files.join(', ')})`);
    assert.equal(files.length, 1, `one backup file for the night (${files.join(', ')})`);
    const listed = JSON.parse(
      (await keyops(['backup', 'list', '--database', DB, '--json', '--task-queue', setup.taskQueue], { TEMPORAL_ADDRESS: testServerAddress() })).stdout,
    ) as { backupId: string; status: string; path: string }[];
    const tonight = listed.filter((b) => b.backupId === backupWorkflowId(DB, night));
    assert.deepEqual(
      tonight.map((b) => [b.status, b.path.split('/').pop()]),
      [['good', files[0]]],
    );
  });
});
