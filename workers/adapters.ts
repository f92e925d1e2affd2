import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MetricCounter } from '@temporalio/common';
import { Runtime } from '@temporalio/worker';
import type { Logger } from 'pino';
import type { BackupCatalog } from '../activities/catalog/backup-catalog';
import { SqliteBackupCatalog } from '../activities/catalog/sqlite-backup-catalog';
import type { CryptoUnitSet } from '../activities/crypto-units/crypto-unit-set';
import { RotationLedger, type RotationLedgerStore } from '../activities/crypto-units/rotation-ledger';
import type { DemoDatabases } from '../activities/demo-data';
import type { DatabaseEngine } from '../activities/engines/database-engine';
import { SimulatedUnitSets } from '../activities/crypto-units/simulated-unit-sets';
import { masterKeyRotationState } from '../activities/master-key-rotation';
import { EncryptedSqliteEngine } from '../activities/engines/encrypted-sqlite-engine';
import { EngineRouter } from '../activities/engines/engine-router';
import { Db2Cli } from '../activities/engines/db2-cli';
import { Db2DatabaseEngine } from '../activities/engines/db2-database-engine';
import { MariaDbDatabaseEngine } from '../activities/engines/mariadb-database-engine';
import { ProcessCommandRunner } from '../activities/engines/process-command-runner';
import { MariaDbEngine } from '../activities/engines/mariadb-engine';
import { MariaDbEngineKey } from '../activities/engines/mariadb-engine-key';
import { MariaDbKeyStore } from '../activities/engines/mariadb-key-store';
import { ENGINE_KEY_INSTANCE, EngineKeyKms } from '../activities/kms/engine-key-kms';
import type { KeyManagementService } from '../activities/kms/key-management-service';
import { CountingKms } from '../activities/kms/counting-kms';
import { KmsRouter } from '../activities/kms/kms-router';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import type { WdekRegistry } from '../activities/wdek-registry/wdek-registry';
import type { WorkerConfig } from './config';
import { loadKeyopsConfig } from './keyops-config';
import { openKmsInstance } from './kms-instances';
import { loadKmsMasterSecret } from './kms-master-secret';

export interface Adapters {
  kms: KeyManagementService;
  registry: WdekRegistry;
  /** The engine port, and what the demo data needs of it. */
  engine: DatabaseEngine & DemoDatabases;
  catalog: BackupCatalog;
  /** The backup-key passphrase, read from its variable or file when a key is exported. */
  backupKeyPassphrase: () => string | undefined;
  cryptoUnitSet: (unitSetId: string) => CryptoUnitSet;
  rotationLedger: RotationLedgerStore & { close(): void };
  /** The unit set behind the KMS's key storage. */
  kmsUnitSet: string;
  /** Whether the master key protecting the KMS's key storage is being rotated. */
  keyStorageRotation: () => Promise<{ inProgress: boolean; reason: string | undefined }>;
  close(): void;
}

/**
 * The one place that chooses adapters. Today: the embedded defaults, all under the data
 * directory (local KMS, SQLite WDEK registry, encrypted SQLite engine, backup catalog); cloud
 * adapters plug in here by configuration.
 */
export function openAdapters(config: WorkerConfig, logger: Logger): Adapters {
  const keyopsConfig = loadKeyopsConfig(config.configFile);
  const local = () => {
    const { secret, generatedAt } = loadKmsMasterSecret(config);
    if (generatedAt) {
      logger.warn({ file: generatedAt }, 'generated a new local KMS master secret; back it up: without it no root key can be read');
    }
    return LocalKms.open({ path: join(config.dataDir, 'kms', 'keys.sqlite'), masterSecret: secret });
  };
  const mariadbServers = new Map(
    [...keyopsConfig.databases].flatMap(([databaseId, db]) =>
      db.type !== 'mariadb'
        ? []
        : [
            [
              databaseId,
              {
                db,
                server: new MariaDbEngine({
                  socket: db.socket,
                  user: db.user,
                  keyStore: new MariaDbKeyStore(db.keyStore),
                  keyId: db.keyId,
                  serverConfig: db.serverConfig,
                  vaultTokenFile: db.keyStore.tokenFile,
                  ...(db.tools ? { tools: db.tools } : {}),
                }),
              },
            ] as const,
          ],
    ),
  );
  // The servers' own keys are keys too (engine:<databaseId>): rotated, watched and awaited as any.
  const engineKeys = new Map([...mariadbServers].map(([databaseId, { server }]) => [databaseId, new MariaDbEngineKey(databaseId, server)]));
  const router = new KmsRouter(
    new Map<string, KeyManagementService>([
      ...[...keyopsConfig.kms].map(([name, instance]) => [name, instance.type === 'local' ? local() : openKmsInstance(instance)] as const),
      ...(engineKeys.size > 0 ? [[ENGINE_KEY_INSTANCE, new EngineKeyKms(engineKeys)] as const] : []),
    ]),
    keyopsConfig.defaultKms,
  );
  logger.info({ kms: router.names, defaultKms: router.defaultInstance, config: keyopsConfig.file ?? 'none (the embedded local KMS)' }, 'KMS instances');
  // What the KMS bills and rate-limits, on the worker's /metrics as keyops_kms_calls{operation}.
  let kmsCalls: MetricCounter | undefined;
  const kms = new CountingKms(router, (operation, n) => {
    kmsCalls ??= Runtime.instance().metricMeter.createCounter('keyops_kms_calls', 'calls', 'requests sent to the KMS (a batch of N WDEKs counts N)');
    kmsCalls.add(n, { operation });
  });
  const registry = SqliteWdekRegistry.open(join(config.dataDir, 'registry', 'wdeks.sqlite'));
  const embedded = EncryptedSqliteEngine.open({ dir: join(config.dataDir, 'databases'), kms, registry });
  const serverEngines = new Map<string, DatabaseEngine & { close?(): Promise<void> }>([
    ...[...mariadbServers].map(([databaseId, { db, server }]) => [databaseId, new MariaDbDatabaseEngine(databaseId, server, kms, db.rootKey, join(config.dataDir, 'mariadb', databaseId))] as const),
    ...[...keyopsConfig.databases].flatMap(([databaseId, db]) =>
      db.type !== 'db2'
        ? []
        : [
            [
              databaseId,
              new Db2DatabaseEngine(databaseId, {
                database: db.database,
                cli: new Db2Cli(new ProcessCommandRunner(), db.tools?.db2, { ...(db.tools?.db2ckbkp ? { db2ckbkp: db.tools.db2ckbkp } : {}), ...(db.timeoutMs ? { timeoutMs: db.timeoutMs } : {}) }),
                rootKeyId: db.rootKey,
                kms,
                workDir: join(config.dataDir, 'db2', databaseId),
              }),
            ] as const,
          ],
    ),
  ]);
  if (serverEngines.size > 0) logger.info({ databases: [...keyopsConfig.databases].map(([id, db]) => `${id} (${db.type})`) }, 'database servers backed up besides the embedded databases');
  const engine = new EngineRouter(embedded, serverEngines);
  for (const databaseId of engine.shadowed) {
    logger.error({ databaseId }, 'an embedded database has the id of a database server in keyops.yaml: the server answers for the id, and the embedded database is out of reach until one of them is renamed');
  }
  if (embedded.recovered.databases.length > 0 || embedded.recovered.wdeks > 0) {
    logger.warn(
      { adoptedDatabases: embedded.recovered.databases, reregisteredWdeks: embedded.recovered.wdeks },
      'rebuilt lost engine state from the databases\' key files (a lost or replaced WDEK registry or engine metadata)',
    );
  }
  for (const problem of embedded.recovered.problems) logger.error({ problem }, 'a database key file could not be used; its database is not adopted until it is fixed');
  const catalog = SqliteBackupCatalog.open(join(config.dataDir, 'catalog', 'backups.sqlite'));
  const unitSets = new SimulatedUnitSets(join(config.dataDir, 'crypto-units'));
  const rotationLedger = RotationLedger.open(join(config.dataDir, 'ledger', 'mk-rotations.sqlite'));
  // The embedded default (DESIGN.md): a simulated unit set behind the local KMS, ready to rotate.
  if (!unitSets.exists(config.kmsUnitSet)) {
    unitSets.create(config.kmsUnitSet);
    logger.info({ unitSet: config.kmsUnitSet }, 'created the simulated crypto-unit set (3 units, 16 key-storage entries)');
  }
  return {
    kms,
    registry,
    engine,
    catalog,
    backupKeyPassphrase: () => {
      const source = config.backupKeyPassphrase;
      if (!source) return undefined;
      return 'value' in source ? source.value : readFileSync(source.file, 'utf8').replace(/\r?\n$/, '');
    },
    cryptoUnitSet: (unitSetId) => unitSets.get(unitSetId),
    rotationLedger,
    kmsUnitSet: config.kmsUnitSet,
    // No unit set of that name: no HSM behind this KMS, so never a rotation to wait for.
    keyStorageRotation: async () =>
      unitSets.exists(config.kmsUnitSet) ? masterKeyRotationState(await unitSets.get(config.kmsUnitSet).listUnits()) : { inProgress: false, reason: undefined },
    close() {
      unitSets.close();
      rotationLedger.close();
      catalog.close();
      void engine.close().catch(() => undefined);
      embedded.close();
      registry.close();
      kms.close();
    },
  };
}
