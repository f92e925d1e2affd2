import type { EngineKey, EngineKeyVersion, Reencryption } from './engine-key';
import type { MariaDbEngine } from './mariadb-engine';

/**
 * A MariaDB server's key (a KV v2 secret its plugin reads) as an engine key: rotated by a new KV
 * version, consumed by the server re-encrypting its tablespaces, which keyops follows through
 * INNODB_TABLESPACES_ENCRYPTION.
 */
export class MariaDbEngineKey implements EngineKey {
  constructor(
    readonly databaseId: string,
    private readonly server: MariaDbEngine,
  ) {}

  get description(): string {
    return `${this.server.keyDescription} (database ${this.databaseId})`;
  }

  async versions(): Promise<{ current: number; versions: EngineKeyVersion[] }> {
    const { current, versions } = await this.server.keyVersions();
    return { current, versions: versions.map((v) => ({ version: v.version, createdAt: v.createdAt, destroyed: v.destroyed })) };
  }

  rotate(expected: number): Promise<{ version: number; rotated: boolean }> {
    return this.server.rotateKey(expected);
  }

  async reencryption(): Promise<Reencryption> {
    const state = await this.server.encryptionState();
    const behind = state.tablespaces.filter((t) => t.rotating || (state.rotateKeyAge > 0 && t.minKeyVersion + state.rotateKeyAge < state.latestVersion));
    // MariaDB reports the page being re-encrypted only while a tablespace rotates.
    const moving = behind.filter((t) => t.page !== undefined && t.maxPage !== undefined && t.maxPage > 0);
    return {
      latestVersion: state.latestVersion,
      settled: state.settled,
      oldestVersionNeeded: state.oldestVersionNeeded,
      spaces: state.tablespaces.length,
      spacesBehind: behind.length,
      pages: moving.length > 0 ? { done: moving.reduce((n, t) => n + t.page!, 0), total: moving.reduce((n, t) => n + t.maxPage!, 0) } : undefined,
      lostKey: state.serverLostKey,
    };
  }

  destroyVersions(versions: number[]): Promise<void> {
    return this.server.destroyKeyVersions(versions);
  }
}
