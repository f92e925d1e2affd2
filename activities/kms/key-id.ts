/**
 * Root-key ids. A key of the local KMS (and of any KMS that issues UUIDs, as Key Protect and AWS
 * KMS do) may be given as its bare UUID; a key of a configured KMS instance is
 * `<instance>:<id in that KMS>`, e.g. `bao:orders` (a Vault Transit key name) or
 * `aws:1234abcd-…`. Anything else an operator types is taken as a key name.
 */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** A KMS instance's name in keyops.yaml, and so in its key ids. */
export const INSTANCE_NAME = /^[a-z][a-z0-9-]{0,30}$/;
const QUALIFIED = /^([a-z][a-z0-9-]{0,30}):([A-Za-z0-9][A-Za-z0-9_.\-/]{0,249})$/;

/** The key id in canonical form (UUIDs in lower case), or undefined when `raw` is not a key id. */
export function asKeyId(raw: string): string | undefined {
  const trimmed = raw.trim();
  if (UUID.test(trimmed)) return trimmed.toLowerCase();
  const qualified = QUALIFIED.exec(trimmed);
  if (!qualified) return undefined;
  const [, instance, id] = qualified;
  // `local:<uuid>` is the embedded KMS's key, whose one id is the bare UUID.
  if (instance === 'local') return UUID.test(id!) ? id!.toLowerCase() : undefined;
  // UUIDs (AWS, Key Protect) in one case, so one key never has two ids.
  return `${instance}:${UUID.test(id!) ? id!.toLowerCase() : id}`;
}

/** The instance a key id names (undefined for a bare id: the local KMS) and the id within it. */
export function splitKeyId(keyId: string): { instance: string | undefined; id: string } {
  const qualified = QUALIFIED.exec(keyId);
  return qualified ? { instance: qualified[1]!, id: qualified[2]! } : { instance: undefined, id: keyId };
}
