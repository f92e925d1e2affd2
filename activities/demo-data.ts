import { randomBytes } from 'node:crypto';
import type Database from 'better-sqlite3-multiple-ciphers';
import type { DatabaseKeyState } from './engines/database-engine';
import type { KeyManagementService } from './kms/key-management-service';
import type { WdekRecord, WdekRegistry } from './wdek-registry/wdek-registry';

export interface DemoDeps {
  kms: KeyManagementService;
  registry: WdekRegistry;
  /** The embedded engine: the demo database is one of its encrypted files. */
  engine: DemoDatabases;
}

/** What the demo needs of an engine: databases it can create and fill (the embedded SQLite one). */
export interface DemoDatabases {
  listDatabases(): { databaseId: string; keyId: string; createdAt: string }[];
  createDatabase(databaseId: string, keyId: string): Promise<DatabaseKeyState>;
  withDatabase<T>(databaseId: string, fn: (db: Database.Database) => T): Promise<T>;
}

export const DEMO_DATABASE = 'demo';
const DEMO_ROWS = 1000;
const DEMO_WDEKS = 2000;
/** Wrap requests in flight while the demo WDEKs are made (a remote KMS answers each in a round trip). */
const WRAP_CONCURRENCY = 16;

export interface DemoOptions {
  /** Application WDEKs to create under the demo key (default 2,000). */
  wdeks?: number;
}

export interface DemoData {
  keyId: string;
  databaseId: string;
  rows: number;
  wdeks: number;
  created: boolean;
}

/**
 * Everything a first run needs to try each workflow at once: a root key, an encrypted database
 * with rows protected by it, and application WDEKs for a rewrap to move. Idempotent: the demo
 * database, once it exists, is the proof that the rest does too.
 */
export function createDemoActivities({ kms, registry, engine }: DemoDeps) {
  return {
    async initDemoData(options: DemoOptions = {}): Promise<DemoData> {
      const count = options.wdeks ?? DEMO_WDEKS;
      const existing = engine.listDatabases().find((d) => d.databaseId === DEMO_DATABASE);
      if (existing) {
        const { total } = registry.countBelowVersion(existing.keyId, Number.MAX_SAFE_INTEGER);
        const rows = await engine.withDatabase(DEMO_DATABASE, (db) => db.prepare<[], { n: number }>('SELECT count(*) AS n FROM orders').get()?.n ?? 0);
        return { keyId: existing.keyId, databaseId: DEMO_DATABASE, rows, wdeks: total, created: false };
      }
      const { keyId } = await kms.createKey({ name: 'demo' });
      // A remote KMS wraps one DEK per request (AWS GenerateDataKey, Key Protect wrap): one after
      // another, 2,000 round trips would outlast `keyops init`'s wait. Some at a time instead.
      const wdeks: WdekRecord[] = new Array<WdekRecord>(count);
      let next = 0;
      const lane = async () => {
        for (let i = next++; i < count; i = next++) {
          const { wdek, keyVersion } = await kms.wrap(keyId);
          wdeks[i] = { id: `demo-app/${String(i).padStart(5, '0')}`, keyId, keyVersion, wdek, owner: 'demo application' };
        }
      };
      await Promise.all(Array.from({ length: WRAP_CONCURRENCY }, lane));
      registry.registerMany(wdeks);
      registry.setRewrappedVersion(keyId, 1);
      // The database last: a run cut short before it is simply started again.
      await engine.createDatabase(DEMO_DATABASE, keyId);
      await engine.withDatabase(DEMO_DATABASE, (db) => {
        db.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, amount_cents INTEGER NOT NULL, note BLOB)');
        const insert = db.prepare('INSERT INTO orders (customer, amount_cents, note) VALUES (?, ?, ?)');
        db.transaction(() => {
          for (let i = 0; i < DEMO_ROWS; i++) insert.run(`customer-${i % 97}`, (i * 7919) % 100_000, randomBytes(64));
        })();
      });
      const { total } = registry.countBelowVersion(keyId, Number.MAX_SAFE_INTEGER);
      return { keyId, databaseId: DEMO_DATABASE, rows: DEMO_ROWS, wdeks: total, created: true };
    },
  };
}
