import type { KeyManagementService, KeyMetadata } from './kms/key-management-service';
import { asKeyId } from './kms/key-id';
import { KmsError, kmsFailure } from './kms/kms-error';
import type { WdekRegistry } from './wdek-registry/wdek-registry';

export interface KeyRefDeps {
  kms: KeyManagementService;
  registry: WdekRegistry;
}

/** A key reference resolved to its id, or why it could not be. */
export type KeyRef = { ref: string; keyId: string; name: string; problem?: undefined } | { ref: string; keyId?: undefined; problem: string };

/**
 * A key's metadata, or undefined when the KMS has no such key. Any other failure (KMS down,
 * throttled) fails the activity: a name looked up among fewer keys than exist could resolve to
 * the wrong one.
 */
async function metadataIfExists(kms: KeyManagementService, keyId: string): Promise<KeyMetadata | undefined> {
  try {
    return await kms.getKeyMetadata(keyId);
  } catch (err) {
    if (!(err instanceof KmsError)) throw err;
    if (err.code === 'KEY_NOT_FOUND') return undefined;
    throw kmsFailure(err);
  }
}

export function createKeyRefActivities({ kms, registry }: KeyRefDeps) {
  return {
    /**
     * Turns what an operator typed (a key id, or the name of a key keyops protects WDEKs with)
     * into key ids. Names are looked up among registered keys only: the KMS may hold thousands of
     * keys keyops has nothing to rotate for, and a name must not silently pick one of them.
     */
    async resolveKeyRefs(refs: string[]): Promise<KeyRef[]> {
      let byName: Map<string, string[]> | undefined;
      const registeredByName = async () => {
        if (!byName) {
          byName = new Map();
          for (const { keyId } of registry.listKeys()) {
            // A registered key deleted from the KMS has no name to match.
            const meta = await metadataIfExists(kms, keyId);
            if (meta) byName.set(meta.name, [...(byName.get(meta.name) ?? []), keyId]);
          }
        }
        return byName;
      };
      const resolved: KeyRef[] = [];
      for (const ref of refs) {
        const id = asKeyId(ref);
        if (id) {
          const meta = await metadataIfExists(kms, id);
          resolved.push(meta ? { ref, keyId: meta.keyId, name: meta.name } : { ref, problem: `key ${ref} does not exist in the KMS` });
          continue;
        }
        const ids = (await registeredByName()).get(ref) ?? [];
        if (ids.length === 1) resolved.push({ ref, keyId: ids[0]!, name: ref });
        else if (ids.length === 0) resolved.push({ ref, problem: `no key named "${ref}" protects WDEKs registered with keyops; give the key's id (a UUID)` });
        else resolved.push({ ref, problem: `${ids.length} keys are named "${ref}" (${ids.join(', ')}); give the key's id` });
      }
      return resolved;
    },
  };
}
