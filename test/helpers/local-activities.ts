import { join } from 'node:path';
import { createActivities } from '../../activities';
import { SqliteBackupCatalog } from '../../activities/catalog/sqlite-backup-catalog';
import { EncryptedSqliteEngine } from '../../activities/engines/encrypted-sqlite-engine';
import type { KeyManagementService } from '../../activities/kms/key-management-service';
import type { WdekRegistry } from '../../activities/wdek-registry/wdek-registry';

/**
 * Every activity on the embedded adapters, as the worker wires them: the given KMS and registry,
 * and an encrypted SQLite engine and backup catalog under `dataDir`.
 */
export function localActivities(options: { dataDir: string; kms: KeyManagementService; registry: WdekRegistry; backupKeyPassphrase?: () => string | undefined; alertWebhook?: string }) {
  const engine = EncryptedSqliteEngine.open({ dir: join(options.dataDir, 'databases'), kms: options.kms, registry: options.registry });
  const catalog = SqliteBackupCatalog.open(join(options.dataDir, 'catalog', 'backups.sqlite'));
  return { activities: createActivities({ ...options, keyopsVersion: 'test', engine, catalog }), engine, catalog };
}
