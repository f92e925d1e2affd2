import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LocalKms } from '../../activities/kms/local-kms';
import { freePort } from './child-process';
import type { MariaDb } from './mariadb';
import type { OpenBao } from './openbao';
import { testServerAddress, uniqueTaskQueue } from './temporal';
import { WorkerProcess } from './worker-process';

/**
 * A keyops data directory whose keyops.yaml names the MariaDB server as database `databaseId`
 * (distinct per test file: the test server's workflow ids, such as key/engine:<id>, are shared), with a
 * root key made in its local KMS for the backups, and a way to start worker processes on it (a
 * test may SIGKILL one and start another on the same directory).
 */
export async function mariadbWorkerSetup(dir: string, servers: { db: MariaDb; bao: OpenBao }, databaseId = 'shop') {
  const dataDir = join(dir, 'keyops');
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const masterSecret = randomBytes(32);
  const kms = LocalKms.open({ path: join(dataDir, 'kms', 'keys.sqlite'), masterSecret });
  const rootKeyId = (await kms.createKey({ name: 'mariadb-backups' })).keyId;
  kms.close();
  const config = join(dataDir, 'keyops.yaml');
  writeFileSync(
    config,
    [
      'kms:',
      '  instances:',
      '    local: { type: local }',
      'databases:',
      `  ${databaseId}:`,
      '    type: mariadb',
      `    socket: ${servers.db.socket}`,
      `    serverConfig: ${servers.db.config}`,
      `    rootKey: ${rootKeyId}`,
      `    keyStore: { address: "${servers.bao.address}", mount: mariadb, tokenFile: "${servers.bao.tokenFile}" }`,
      '',
    ].join('\n'),
  );
  const taskQueue = uniqueTaskQueue('mariadb-worker');
  const startWorker = async () => {
    const worker = new WorkerProcess({
      TEMPORAL_ADDRESS: testServerAddress(),
      KEYOPS_TASK_QUEUE: taskQueue,
      KEYOPS_DATA_DIR: dataDir,
      KEYOPS_CONFIG: config,
      KEYOPS_LOG_FORMAT: 'json',
      KEYOPS_METRICS_ADDRESS: `127.0.0.1:${await freePort()}`,
      KEYOPS_KMS_MASTER_SECRET: masterSecret.toString('base64'),
    });
    await worker.waitFor('worker started');
    return worker;
  };
  const stopWorker = async (worker: WorkerProcess | undefined) => {
    if (!worker || worker.child.exitCode !== null || worker.child.signalCode !== null) return;
    const gone = new Promise((r) => worker.child.once('exit', r));
    worker.child.kill('SIGTERM');
    await gone;
  };
  return { dataDir, rootKeyId, taskQueue, startWorker, stopWorker };
}
