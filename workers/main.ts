#!/usr/bin/env node
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { NativeConnection, Runtime, makeTelemetryFilterString } from '@temporalio/worker';
import { createActivities } from '../activities';
import { ConnectionConfigError, resolveConnection } from '../client/connection';
import { KmsError } from '../activities/kms/kms-error';
import { ActivityJournal, resumeOrphanedActivities } from './activity-journal';
import { PREBUILT_BUNDLE } from './bundle-workflows';
import { preloadModules, workflowsPath } from './workflow-bundle-options';
import { openAdapters } from './adapters';
import { localKmsMasterSecretSource } from './night-readiness-deps';
import { ConfigError, loadWorkerConfig } from './config';
import { KeyopsConfigError } from './keyops-config';
import { MasterSecretError } from './kms-master-secret';
import { PayloadKeyError, loadPayloadCodec } from './payload-keys';
import { KeyopsWorkers } from './keyops-workers';
import { createLogger } from './logger';
import { PinoSdkLogger } from './sdk-logger';
import { keyopsVersion, temporalSdkVersion } from './version';

async function main(): Promise<number> {
  // Everything the worker writes under its data directory (SQLite WAL and SHM files, scratch
  // restores, exports, logs) is for this user only, whatever umask it was started with.
  process.umask(0o077);
  let config;
  try {
    config = loadWorkerConfig(process.env, process.stdout.isTTY === true);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`keyops-worker: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const logger = createLogger(config);
  const coreLevel = config.logLevel === 'trace' || config.logLevel === 'debug' ? 'DEBUG' : 'WARN';

  // Must precede every NativeConnection and Worker: they pick up the runtime on first use.
  // The runtime also owns SIGINT/SIGTERM: it asks every worker to drain, and run() then returns.
  try {
    Runtime.install({
      logger: new PinoSdkLogger(logger),
      telemetryOptions: {
        logging: { filter: makeTelemetryFilterString({ core: coreLevel }), forward: {} },
        ...(config.metricsAddress ? { metrics: { prometheus: { bindAddress: config.metricsAddress } } } : {}),
      },
    });
  } catch (err) {
    // In practice: the metrics port is taken, e.g. by a second worker on the same host.
    logger.error(
      { metricsAddress: config.metricsAddress, err: err instanceof Error ? err.message : String(err) },
      'cannot start the Temporal runtime; set KEYOPS_METRICS_ADDRESS to a free host:port, or off',
    );
    return 2;
  }
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => logger.info({ signal }, 'shutdown requested: finishing in-flight tasks'));
  }

  let target;
  let adapters;
  let payloadCodec;
  try {
    mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
    target = resolveConnection();
    payloadCodec = loadPayloadCodec(process.env);
    adapters = openAdapters(config, logger);
  } catch (err) {
    // Configuration the operator can fix: one line, no stack trace.
    if (err instanceof KeyopsConfigError) {
      // file:line:col: field: problem, one line each; the worker does not start on a guess.
      for (const problem of err.problems) logger.error(problem);
      return 2;
    }
    const reason =
      err instanceof ConnectionConfigError || err instanceof MasterSecretError || err instanceof KmsError || err instanceof PayloadKeyError
        ? err.message
        : `cannot prepare KEYOPS_DATA_DIR ${config.dataDir}: ${String(err)}`;
    logger.error(reason);
    return 2;
  }
  let connection: NativeConnection;
  try {
    connection = await NativeConnection.connect(target.connectionOptions);
  } catch (err) {
    logger.error(
      { address: target.address, err: err instanceof Error ? err.message : String(err) },
      'cannot reach the Temporal server; start the local stack with ./temporal-dev.sh or set TEMPORAL_ADDRESS',
    );
    adapters.close();
    return 3;
  }
  const journal = new ActivityJournal(join(config.dataDir, 'workers'), logger);
  let sweeper: NodeJS.Timeout | undefined;
  try {
    const workers = await KeyopsWorkers.create({
      connection,
      namespace: target.namespace,
      taskQueue: config.taskQueue,
      // From dist, the bundle `npm run build` made; from source, bundled here.
      ...(existsSync(PREBUILT_BUNDLE) ? { workflowBundle: { codePath: PREBUILT_BUNDLE } } : { workflowsPath, bundlerOptions: { preloadModules } }),
      activities: createActivities({ dataDir: config.dataDir, keyopsVersion, alertWebhook: config.alertWebhook, localKmsMasterSecret: localKmsMasterSecretSource(config), ...adapters }),
      shutdownGraceTime: `${config.shutdownGraceSeconds} seconds`,
      interceptors: { activity: [journal.interceptor] },
      // A workflow task held for a worker that died goes to any worker after this, not 10 s.
      stickyQueueScheduleToStartTimeout: '3 seconds',
      ...(payloadCodec ? { dataConverter: { payloadCodecs: [payloadCodec] } } : {}),
    });
    // What a killed worker on this data directory left running is retried now, not after its
    // heartbeat or start-to-close timeout; then every few seconds, for one that dies meanwhile.
    let sweeping: Promise<unknown> | undefined;
    // One sweep at a time: a slow one must not overlap the next and fail an attempt twice.
    const sweep = () =>
      (sweeping ??= resumeOrphanedActivities(journal, connection, target.namespace, logger)
        .catch((err: unknown) => logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'could not check for activities of dead workers'))
        .finally(() => (sweeping = undefined)));
    await sweep();
    sweeper = setInterval(() => void sweep(), 5_000);
    sweeper.unref();
    logger.info(
      {
        address: target.address,
        namespace: target.namespace,
        taskQueue: config.taskQueue,
        dataDir: config.dataDir,
        metrics: config.metricsAddress ? `http://${config.metricsAddress}/metrics` : 'off',
        payloadEncryption: payloadCodec ? { currentKeyId: payloadCodec.currentKeyId, keyIds: payloadCodec.keyIds } : 'off',
        keyopsVersion,
        temporalSdkVersion,
      },
      'worker started',
    );
    await workers.run();
    logger.info('worker stopped');
    return 0;
  } finally {
    clearInterval(sweeper);
    journal.close();
    await connection.close();
    adapters.close();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`keyops-worker: fatal: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
