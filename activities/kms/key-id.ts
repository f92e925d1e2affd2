/**
 * Root-key ids as the KMSs keyops speaks to issue them (Key Protect, AWS KMS): UUIDs. Anything
 * else an operator types is taken as a key name.
 */
const KEY_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The key id in canonical (lower) case, or undefined when `raw` is not a key id. */
export function asKeyId(raw: string): string | undefined {
  const trimmed = raw.trim();
  return KEY_ID.test(trimmed) ? trimmed.toLowerCase() : undefined;
}
