import { AwsKms } from '../activities/kms/aws-kms';
import type { KeyManagementService } from '../activities/kms/key-management-service';
import { KeyProtectKms } from '../activities/kms/key-protect-kms';
import { VaultTransitKms } from '../activities/kms/vault-transit-kms';
import type { KmsInstanceConfig } from './keyops-config';

/**
 * The adapter for one configured remote KMS instance. The local KMS is opened by adapters.ts,
 * which owns the data directory and the master secret.
 */
export function openKmsInstance(instance: Exclude<KmsInstanceConfig, { type: 'local' }>): KeyManagementService {
  switch (instance.type) {
    case 'vault-transit':
      return VaultTransitKms.open(instance.options);
    case 'aws-kms':
      return AwsKms.create(instance.options);
    case 'key-protect':
      return new KeyProtectKms(instance.options);
  }
}
