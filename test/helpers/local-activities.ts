import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { createActivities } from '../../activities';
import { SqliteBackupCatalog } from '../../activities/catalog/sqlite-backup-catalog';
import { EncryptedSqliteEngine } from '../../activities/engines/encrypted-sqlite-engine';
import type { KeyManagementService } from '../../activities/kms/key-management-service';
import { RotationLedger } from '../../activities/crypto-units/rotation-ledger';
import { SimulatedUnitSets } from '../../activities/crypto-units/simulated-unit-sets';
import { masterKeyRotationState } from '../../activities/master-key-rotation';
import { LocalKms } from '../../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../../activities/wdek-registry/sqlite-wdek-registry';
import type { WdekRegistry } from '../../activities/wdek-registry/wdek-registry';
import { rememberSecret } from './key-material';
import { createTestWorker, uniqueTaskQueue } from './temporal';

/**
 * Every activity on the embedded adapters, as the worker wires them: the given KMS and registry,
 * and an encrypted SQLite engine, backup catalog and simulated crypto-unit sets under `dataDir`
 * (`kmsUnitSet`, when given, is the set whose rotation backups and rewraps wait for).
 */
export function localActivities(options: {
  dataDir: string;
  kms: KeyManagementService;
  registry: WdekRegistry;
  backupKeyPassphrase?: () => string | undefined;
  alertWebhook?: string;
  kmsUnitSet?: string;
}) {
  const engine = EncryptedSqliteEngine.open({ dir: join(options.dataDir, 'databases'), kms: options.kms, registry: options.registry });
  const catalog = SqliteBackupCatalog.open(join(options.dataDir, 'catalog', 'backups.sqlite'));
  const unitSets = new SimulatedUnitSets(join(options.dataDir, 'crypto-units'));
  const { kmsUnitSet, backupKeyPassphrase } = options;
  const activities = createActivities({
    ...options,
    // The key-material scan looks for the passphrase the activities are given (key-material.ts).
    ...(backupKeyPassphrase
      ? {
          backupKeyPassphrase: () => {
            const passphrase = backupKeyPassphrase();
            if (passphrase) rememberSecret('backup-key passphrase (localActivities)', passphrase);
            return passphrase;
          },
        }
      : {}),
    keyopsVersion: 'test',
    engine,
    catalog,
    cryptoUnitSet: (id) => unitSets.get(id),
    rotationLedger: RotationLedger.open(join(options.dataDir, 'ledger', 'mk-rotations.sqlite')),
    keyStorageRotation: async () =>
      kmsUnitSet && unitSets.exists(kmsUnitSet) ? masterKeyRotationState(await unitSets.get(kmsUnitSet).listUnits()) : { inProgress: false, reason: undefined },
  });
  return { activities, engine, catalog, unitSets };
}

/**
 * A fresh local KMS, WDEK registry and the embedded adapters under `dataDir`, and a worker on its
 * own task queue running every activity on them.
 */
export async function localWorker(env: TestWorkflowEnvironment, dataDir: string, label: string, kmsUnitSet?: string) {
  const kms = LocalKms.open({ path: join(dataDir, 'kms', 'keys.sqlite'), masterSecret: randomBytes(32) });
  const registry = SqliteWdekRegistry.open(join(dataDir, 'registry', 'wdeks.sqlite'));
  const local = localActivities({ dataDir, kms, registry, ...(kmsUnitSet ? { kmsUnitSet } : {}) });
  const taskQueue = uniqueTaskQueue(label);
  const worker = await createTestWorker(env, { taskQueue, activities: local.activities });
  return { dataDir, kms, registry, taskQueue, worker, ...local };
}
