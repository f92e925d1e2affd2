/**
 * A key a database engine reads itself from its own key store and re-encrypts its own pages
 * under (MariaDB: a KV v2 secret its hashicorp_key_management plugin reads). keyops rotates it
 * and follows the engine, instead of rewrapping WDEKs: the engine is the key's consumer.
 *
 * keyops names it `engine:<databaseId>` (ENGINE_KEY_INSTANCE), so the root-key workflows, the
 * watcher, waiting backups and the CLI treat it as any other key: "complete (key, version)"
 * means every consumer of the key is on that version, whether WDEKs or pages.
 */
export interface EngineKeyVersion {
  version: number;
  createdAt: string;
  /** Erased from the key store: pages or backups still under it can never be read again. */
  destroyed: boolean;
}

/** Where the engine's pages are against the key's versions. */
export interface Reencryption {
  /** The key's latest version in the key store. */
  latestVersion: number;
  /** Nothing is left for the engine to re-encrypt for the latest version. */
  settled: boolean;
  /** The oldest version any page still needs (undefined: nothing is encrypted under the key). */
  oldestVersionNeeded: number | undefined;
  /** Encrypted spaces (tablespaces) under the key, and those still being moved. */
  spaces: number;
  spacesBehind: number;
  /** Pages re-encrypted so far of those being re-encrypted now, when the engine reports it. */
  pages: { done: number; total: number } | undefined;
  /** The engine itself cannot read the key (its key store unreachable or the key gone). */
  lostKey: boolean;
}

export interface EngineKey {
  /** For messages and `keyops key show`: which key in which store, for which database. */
  readonly description: string;
  readonly databaseId: string;
  versions(): Promise<{ current: number; versions: EngineKeyVersion[] }>;
  /** Fresh material as version `expected + 1`; a key already past `expected` is left as it is. */
  rotate(expected: number): Promise<{ version: number; rotated: boolean }>;
  reencryption(): Promise<Reencryption>;
  /** Erases versions for good (callers check first that nothing needs them). */
  destroyVersions(versions: number[]): Promise<void>;
}
