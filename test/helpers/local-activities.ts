import { join } from 'node:path';
import { createActivities } from '../../activities';
import { SqliteBackupCatalog } from '../../activities/catalog/sqlite-backup-catalog';
import { EncryptedSqliteEngine } from '../../activities/engines/encrypted-sqlite-engine';
import type { KeyManagementService } from '../../activities/kms/key-management-service';
import { RotationLedger } from '../../activities/crypto-units/rotation-ledger';
import { SimulatedUnitSets } from '../../activities/crypto-units/simulated-unit-sets';
import { masterKeyRotationState } from '../../activities/master-key-rotation';
import type { WdekRegistry } from '../../activities/wdek-registry/wdek-registry';

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
  const { kmsUnitSet } = options;
  const activities = createActivities({
    ...options,
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
