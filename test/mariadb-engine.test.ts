/**
 * The MariaDB engine against a real MariaDB 10.11 (Debian's packages, a private server under the
 * test's directory) whose tables are encrypted with keys it reads from a real OpenBao's KV v2
 * mount through the hashicorp_key_management plugin.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EngineError } from '../activities/engines/engine-error';
import { MariaDbEngine } from '../activities/engines/mariadb-engine';
import { MariaDbKeyStore } from '../activities/engines/mariadb-key-store';
import { type MariaDb, startMariaDb } from './helpers/mariadb';
import { type OpenBao, startOpenBao } from './helpers/openbao';
import { waitUntil } from './helpers/wait-until';

describe('MariaDB engine: a real MariaDB with its keys in a real OpenBao', () => {
  let dir: string;
  let bao: OpenBao;
  let db: MariaDb;
  let keys: MariaDbKeyStore;
  let engine: MariaDbEngine;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keyops-mariadb-'));
    bao = await startOpenBao({ dir: join(dir, 'bao') });
    const mounted = await bao.api('POST', 'sys/mounts/mariadb', { type: 'kv', options: { version: '2' } });
    assert.ok(mounted.status === 204 || mounted.status === 200, JSON.stringify(mounted.body));
    keys = new MariaDbKeyStore({ address: bao.address, mount: 'mariadb', tokenFile: bao.tokenFile });
    // Key 1 must exist before the server starts: with encrypt_tables=FORCE it needs it at once.
    assert.deepEqual(await keys.rotate(1, 0), { version: 1, rotated: true });
    db = await startMariaDb({ dir: join(dir, 'mariadb'), vault: { address: bao.address, mount: 'mariadb', tokenFile: bao.tokenFile } });
    await db.query('CREATE DATABASE shop');
    await db.query('CREATE TABLE shop.orders (id INT PRIMARY KEY, item VARCHAR(100) NOT NULL, qty INT NOT NULL) ENGINE=InnoDB');
    await db.query("INSERT INTO shop.orders SELECT seq, CONCAT('item-', seq), seq % 7 FROM shop.seq_1_to_20000");
    engine = new MariaDbEngine({ socket: db.socket, keyStore: keys });
  });
  after(async () => {
    await engine?.close();
    await db?.stop();
    await bao?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('reads every tablespace on key 1, version 1, from information_schema and the key store', async () => {
    const state = await engine.encryptionState();
    assert.equal(state.latestVersion, 1);
    assert.equal(state.rotateKeyAge, 1);
    assert.ok(state.encryptionThreads > 0);
    assert.ok(
      state.tablespaces.some((t) => t.name === 'shop/orders'),
      `shop/orders is encrypted (${state.tablespaces.map((t) => t.name).join(', ')})`,
    );
    for (const t of state.tablespaces) assert.deepEqual([t.keyId, t.minKeyVersion, t.currentKeyVersion], [1, 1, 1], t.name);
    assert.equal(state.oldestVersionNeeded, 1);
    assert.equal(state.settled, true);
    // The pages on disk are ciphertext: a row's text is nowhere in the table's file.
    assert.equal((await readFile(join(db.dataDir, 'shop', 'orders.ibd'))).includes('item-12345'), false);
  });

  it("rotates through new KV versions; MariaDB re-encrypts pages once they are more than the key age behind", async () => {
    const first = await engine.rotateKey(1);
    assert.deepEqual(first, { version: 2, rotated: true });
    // Asked again from the same starting point (a retry after a lost answer): nothing added.
    assert.deepEqual(await engine.rotateKey(1), { version: 2, rotated: false });
    assert.equal((await keys.versions(1)).versions.length, 2);

    // Version 2 is one behind the pages' 1: with key age 1 MariaDB leaves them (1 + 1 < 2 is false).
    const two = await waitUntil('MariaDB to see version 2', async () => {
      const s = await engine.encryptionState();
      return s.tablespaces.every((t) => t.currentKeyVersion === 2) ? s : undefined;
    });
    assert.equal(two.settled, true);
    assert.equal(two.oldestVersionNeeded, 1, 'version 1 is still needed: pages stay on it');

    assert.deepEqual(await engine.rotateKey(2), { version: 3, rotated: true });
    // Two behind: the background threads re-encrypt every page under version 3.
    const three = await waitUntil(
      'every tablespace re-encrypted under version 3',
      async () => {
        const s = await engine.encryptionState();
        return s.settled && s.tablespaces.every((t) => t.minKeyVersion === 3) ? s : undefined;
      },
      120_000,
    );
    assert.equal(three.oldestVersionNeeded, 3);
    assert.deepEqual((await db.query<{ n: bigint }>('SELECT COUNT(*) AS n FROM shop.orders'))[0]!.n, 20000n);
    assert.deepEqual((await db.query<{ Msg_text: string }>('CHECK TABLE shop.orders')).at(-1)!.Msg_text, 'OK');
  });

  it('names the key store when it cannot be reached, as a retryable key-unavailable', async () => {
    const unreachable = new MariaDbKeyStore({ address: 'http://127.0.0.1:9', mount: 'mariadb', tokenFile: bao.tokenFile, requestTimeoutMs: 2000 });
    await assert.rejects(unreachable.versions(1), (err: unknown) => {
      assert.ok(err instanceof EngineError);
      assert.equal(err.code, 'KEY_UNAVAILABLE');
      assert.equal(err.retryable, true);
      assert.match(err.message, /127\.0\.0\.1:9\/v1\/mariadb/);
      return true;
    });
  });
});
