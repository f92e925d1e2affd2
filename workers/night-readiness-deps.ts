import { join } from 'node:path';
import type { MasterSecretSource } from '../activities/night-readiness';
import type { WorkerConfig } from './config';
import { loadKeyopsConfig } from './keyops-config';

/**
 * Where this worker's local KMS master secret comes from, for `keyops doctor`: the file named by
 * KEYOPS_KMS_MASTER_SECRET_FILE, the variable, or the data directory's generated one (as
 * kms-master-secret.ts reads it); undefined when keyops.yaml configures no local KMS.
 */
export function localKmsMasterSecretSource(config: WorkerConfig): MasterSecretSource | undefined {
  const usesLocal = [...loadKeyopsConfig(config.configFile).kms.values()].some((instance) => instance.type === 'local');
  if (!usesLocal) return undefined;
  const source = config.kmsMasterSecret;
  if (source && 'base64' in source) return { variable: 'KEYOPS_KMS_MASTER_SECRET' };
  if (source) return { file: source.file };
  return { file: join(config.dataDir, 'kms', 'master.secret') };
}
