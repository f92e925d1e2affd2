import { ApplicationFailure } from '@temporalio/common';
import { heartbeat, sleep } from '@temporalio/activity';
import type { DatabaseEngine } from './engines/database-engine';
import type { EngineKey, Reencryption } from './engines/engine-key';
import { EngineError } from './engines/engine-error';
import { typed } from './typed';

/**
 * A key's consumers are whatever holds data under its versions: WDEKs keyops rewraps (the
 * registry), and database engines that re-encrypt their own pages under a key they read
 * themselves (engine-key.ts). A key is complete at a version once every consumer is on it; the
 * rewrap workflow, the watcher, waiting backups and the CLI all use that one notion.
 */
/** One engine consuming a key: which database, and where its pages are (engine-key.ts). */
export type EngineConsumer = Omit<Reencryption, 'latestVersion'> & {
  databaseId: string;
  /** Which key in which store (a label, never material). */
  description: string;
};

export interface KeyConsumerDeps {
  engine?: Pick<DatabaseEngine, 'engineKeys'>;
  /** How often a rewrap re-reads an engine's re-encryption (ms); default 1 s. */
  reencryptionPollMs?: number;
}

export const consumerOf = (key: EngineKey, { latestVersion: _latest, ...where }: Reencryption): EngineConsumer => ({
  databaseId: key.databaseId,
  description: key.description,
  ...where,
});

/** What a follow reports as it goes (its heartbeat, shown by the Web UI) and when it ends. */
export interface ReencryptionFollowed {
  keyId: string;
  version: number;
  consumers: EngineConsumer[];
  /** Reads of the engines' state it took. */
  polls: number;
}

export function createKeyConsumerActivities({ engine, reencryptionPollMs = 1_000 }: KeyConsumerDeps) {
  const engineKey = (keyId: string): EngineKey | undefined => engine?.engineKeys?.().get(keyId);

  return {
    /**
     * Waits, heartbeating the pages still to move, until the engine that reads `keyId` itself
     * has re-encrypted everything the key's `version` makes it re-encrypt. Idempotent: it only
     * reads. An engine that lost its key (the store unreachable) fails retryably: the pages do
     * not move until it is back.
     */
    async followReencryption(input: { keyId: string; version: number }): Promise<ReencryptionFollowed> {
      return typed(async () => {
        const key = engineKey(input.keyId);
        if (!key) throw new EngineError('INVALID_CONFIGURATION', `key ${input.keyId} is no database engine's own key on this worker (its keyops.yaml databases do not name it)`);
        for (let polls = 1; ; polls++) {
          const r = await key.reencryption();
          const consumer = consumerOf(key, r);
          heartbeat({ polls, spacesBehind: r.spacesBehind, spaces: r.spaces, pages: r.pages });
          if (r.lostKey) throw new EngineError('KEY_UNAVAILABLE', `${key.description}: the engine reports no valid version of its key (its key store is unreachable); re-encryption waits until it is back`);
          if (r.latestVersion < input.version) {
            throw ApplicationFailure.nonRetryable(`${key.description} is at version ${r.latestVersion}, below the version ${input.version} being followed`, 'STALE_TARGET_VERSION');
          }
          if (r.settled) return { keyId: input.keyId, version: input.version, consumers: [consumer], polls };
          await sleep(reencryptionPollMs);
        }
      });
    },
  };
}

/** The engines consuming `keyId` and where each is (none for a KMS root key). */
export async function engineConsumers(engine: Pick<DatabaseEngine, 'engineKeys'> | undefined, keyId: string): Promise<{ consumers: EngineConsumer[]; latestVersion: number | undefined }> {
  const key = engine?.engineKeys?.().get(keyId);
  if (!key) return { consumers: [], latestVersion: undefined };
  const r = await key.reencryption();
  return { consumers: [consumerOf(key, r)], latestVersion: r.latestVersion };
}
