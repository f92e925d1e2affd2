import { ApplicationFailure } from '@temporalio/common';
import type { BackupCatalog } from './catalog/backup-catalog';
import type { DatabaseEngine } from './engines/database-engine';
import type { EngineKey } from './engines/engine-key';
import type { KeyManagementService } from './kms/key-management-service';
import { typed } from './typed';
import type { WdekRegistry } from './wdek-registry/wdek-registry';

/** One version of a key and what still needs it: ids and counts only. */
export interface KeyVersionUse {
  version: number;
  createdAt: string;
  current: boolean;
  /** Erased from its store (engine keys only: a KMS keeps every version). */
  destroyed: boolean;
  /** WDEKs in the registry wrapped under it. */
  wdeks: number;
  /** Databases whose pages may still be under it (an engine re-encrypting itself). */
  databases: string[];
  /** Good catalogued backups (those retention keeps) that need it to restore. */
  backups: string[];
}

export interface KeyVersions {
  keyId: string;
  currentVersion: number;
  versions: KeyVersionUse[];
  /** Catalogued backups whose file could not be read: what they need is unknown, so nothing is destroyed. */
  unreadableBackups: string[];
  /** Whether a version of this key can be destroyed through keyops at all, and if not, why. */
  destroyable: { ok: true } | { ok: false; why: string };
}

export interface KeyVersionDeps {
  kms: KeyManagementService;
  registry: WdekRegistry;
  catalog: BackupCatalog;
  engine: Pick<DatabaseEngine, 'describeBackup'> & Pick<Partial<DatabaseEngine>, 'engineKeys'>;
}

const range = (from: number, to: number) => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);

/**
 * Retention never orphans a key version: before a version is destroyed, every consumer that may
 * still need it is counted, from the stores themselves. The registry's WDEKs, the engine's pages
 * (an engine re-encrypting itself needs every version from its oldest page's up) and every
 * catalogued backup, read from the file's own header (the versions its pages are under).
 */
export function createKeyVersionActivities({ kms, registry, catalog, engine }: KeyVersionDeps) {
  const engineKeyOf = (keyId: string): EngineKey | undefined => engine.engineKeys?.().get(keyId);

  async function keyVersions(keyId: string): Promise<KeyVersions> {
    const meta = await kms.getKeyMetadata(keyId);
    const engineKey = engineKeyOf(keyId);
    const stored = engineKey ? (await engineKey.versions()).versions : meta.versions.map((v) => ({ ...v, destroyed: false }));
    const wdeks = registry.countByVersion(keyId);
    const pages = engineKey ? await engineKey.reencryption() : undefined;
    const need = new Map<number, { databases: Set<string>; backups: Set<string> }>(stored.map((v) => [v.version, { databases: new Set(), backups: new Set() }]));
    const needs = (version: number) => need.get(version) ?? need.set(version, { databases: new Set(), backups: new Set() }).get(version)!;
    if (engineKey && pages) {
      // Pages sit anywhere between the oldest version one is on and the latest.
      for (const v of range(pages.oldestVersionNeeded ?? pages.latestVersion, pages.latestVersion)) needs(v).databases.add(engineKey.databaseId);
    }
    const unreadableBackups: string[] = [];
    for (const entry of catalog.list({ status: 'good' })) {
      if (engineKey) {
        if (entry.databaseId !== engineKey.databaseId) continue;
        const description = await engine.describeBackup(entry.path).catch(() => undefined);
        if (!description?.engineKeys) {
          unreadableBackups.push(entry.backupId);
          continue;
        }
        for (const v of range(description.engineKeys.oldestVersion, description.engineKeys.latestVersion)) needs(v).backups.add(entry.backupId);
      } else {
        if (entry.keyId === keyId) needs(entry.keyVersion).backups.add(entry.backupId);
        // The backup key inside the file may be wrapped under another version (format 2).
        const description = await engine.describeBackup(entry.path).catch(() => undefined);
        if (description?.backupKeyId === keyId && description.backupKeyVersion !== undefined) needs(description.backupKeyVersion).backups.add(entry.backupId);
      }
    }
    const versions = [...need.keys()]
      .sort((a, b) => a - b)
      .map((version) => {
        const s = stored.find((v) => v.version === version);
        return {
          version,
          createdAt: s?.createdAt ?? '',
          current: version === meta.currentVersion,
          destroyed: s?.destroyed ?? false,
          wdeks: wdeks.get(version) ?? 0,
          databases: [...needs(version).databases],
          backups: [...needs(version).backups],
        };
      });
    return {
      keyId,
      currentVersion: meta.currentVersion,
      versions,
      unreadableBackups,
      destroyable: engineKey
        ? { ok: true }
        : { ok: false, why: `key ${keyId} is a KMS key: the KMS keeps its retired versions (they only unwrap), and keyops cannot destroy one; retire the whole key in the KMS once nothing needs it` },
    };
  }

  return {
    /** Every version of the key and what still needs it (`keyops key versions`). */
    async listKeyVersions(input: { keyId: string }): Promise<KeyVersions> {
      return typed(() => keyVersions(input.keyId));
    },

    /**
     * Destroys one version for good, but only when nothing needs it: counted again here, at the
     * moment of destruction, never from what the operator saw. Idempotent: a version already
     * destroyed is reported so.
     */
    async destroyKeyVersion(input: { keyId: string; version: number }): Promise<{ keyId: string; version: number; destroyed: boolean; alreadyDestroyed: boolean }> {
      return typed(async () => {
        const state = await keyVersions(input.keyId);
        const refuse = (why: string): never => {
          throw ApplicationFailure.create({ type: 'KEY_VERSION_IN_USE', nonRetryable: true, message: `version ${input.version} of key ${input.keyId} is not destroyed: ${why}` });
        };
        if (!state.destroyable.ok) refuse(state.destroyable.why);
        const v = state.versions.find((x) => x.version === input.version);
        if (!v) refuse(`the key has no such version (versions: ${state.versions.map((x) => x.version).join(', ')})`);
        if (v!.destroyed) return { keyId: input.keyId, version: input.version, destroyed: false, alreadyDestroyed: true };
        if (v!.current) refuse('it is the current version, the one everything is encrypted under from now on');
        if (v!.wdeks > 0) refuse(`${v!.wdeks} WDEK(s) are still wrapped under it`);
        if (v!.databases.length > 0) refuse(`the pages of database ${v!.databases.join(', ')} may still be under it (the oldest page is on this version or an older one)`);
        if (v!.backups.length > 0) refuse(`${v!.backups.length} catalogued backup(s) need it to restore: ${v!.backups.slice(0, 5).join(', ')}${v!.backups.length > 5 ? ', …' : ''}`);
        if (state.unreadableBackups.length > 0) refuse(`the header of ${state.unreadableBackups.length} catalogued backup(s) could not be read, so what they need is unknown: ${state.unreadableBackups.slice(0, 5).join(', ')}`);
        await engineKeyOf(input.keyId)!.destroyVersions([input.version]);
        return { keyId: input.keyId, version: input.version, destroyed: true, alreadyDestroyed: false };
      });
    },
  };
}
