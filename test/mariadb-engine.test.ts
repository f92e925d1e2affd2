/**
 * The MariaDB engine against a real MariaDB 10.11 (Debian's packages, a private server under the
 * test's directory) whose tables are encrypted with keys it reads from a real OpenBao's KV v2
 * mount through the hashicorp_key_management plugin.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { EngineError } from '../activities/engines/engine-error';
import { LocalKms } from '../activities/kms/local-kms';
import { writeCheckServerOptions } from '../activities/engines/mariadb-check-options';
import { MariaDbEngine } from '../activities/engines/mariadb-engine';
import { MariaDbKeyStore } from '../activities/engines/mariadb-key-store';
import { type MariaDb, startMariaDbWithOpenBao } from './helpers/mariadb';
import type { OpenBao } from './helpers/openbao';
import { waitUntil } from './helpers/wait-until';

describe('MariaDB engine: a real MariaDB with its keys in a real OpenBao', () => {
  let dir: string;
  let bao: OpenBao;
  let db: MariaDb;
  let keys: MariaDbKeyStore;
  let engine: MariaDbEngine;
  let kms: LocalKms;
  let rootKeyId: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keyops-mariadb-'));
    ({ bao, db, keys } = await startMariaDbWithOpenBao(dir));
    engine = new MariaDbEngine({ socket: db.socket, keyStore: keys, serverConfig: db.config, vaultTokenFile: bao.tokenFile });
    kms = LocalKms.open({ path: join(dir, 'kms.sqlite'), masterSecret: randomBytes(32) });
    rootKeyId = (await kms.createKey({ name: 'mariadb backups' })).keyId;
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

  it('backs up through mariadb-backup into an encrypted file that restores: every table checks OK with every row', async () => {
    const path = join(dir, 'shop-1.kob');
    const backup = await engine.backup({ path, databaseId: 'shop', backupId: 'backup/shop/2026-12-07', night: '2026-12-07', kms, rootKeyId, workDir: dir });
    assert.deepEqual(backup.engineKeys, { keyId: 1, oldestVersion: 3, latestVersion: 3 });
    assert.equal(backup.keyVersion, 1);
    assert.ok(backup.plainBytes > 1_000_000, `the stream held the data files (${backup.plainBytes} bytes)`);
    const file = await readFile(path);
    assert.equal(file.includes('xbstream'), false, 'nothing of the stream is readable in the file');
    assert.equal(file.includes('XBSTCK01'), false, "no xbstream chunk magic: the whole stream is keyops' ciphertext");
    assert.equal(file[4], 4, 'backup file format 4');
    assert.match(backup.sha256, /^tags-sha256:[0-9a-f]{64}$/, 'its integrity value is the hash of its chunk tags');

    const target = join(dir, 'restored');
    const check = await engine.verifyBackup({ path, kms, targetDir: target, keep: true, expectedSha256: backup.sha256 });
    assert.equal(check.counts['shop.orders'], 20000);
    assert.equal(check.sha256, backup.sha256);
    assert.ok((await readdir(join(target, 'shop'))).includes('orders.ibd'), 'the prepared data directory stays when asked to (a restore)');
    await assert.rejects(engine.verifyBackup({ path, kms, targetDir: target }), /already exists/, 'a restore never writes over a directory');

    // One altered byte in the file: refused before anything is restored.
    const altered = join(dir, 'shop-altered.kob');
    const bytes = Buffer.from(file);
    bytes[bytes.length - 100]! ^= 1;
    await writeFile(altered, bytes);
    await assert.rejects(engine.verifyBackup({ path: altered, kms, targetDir: join(dir, 'restored-altered') }), /fails authentication/);
    assert.equal((await readdir(dir)).includes('restored-altered'), false, 'nothing is left of a failed restore');
  });

  it('refuses to back up while MariaDB still re-encrypts pages for a new key version (KEY_IN_TRANSITION, retryable)', async () => {
    // The background threads held: two new versions leave every page more than the key age behind.
    await db.query('SET GLOBAL innodb_encryption_threads = 0');
    await engine.rotateKey(3);
    await engine.rotateKey(4);
    const behind = await engine.encryptionState();
    assert.equal(behind.settled, false);
    await assert.rejects(engine.backup({ path: join(dir, 'shop-2.kob'), databaseId: 'shop', backupId: 'backup/shop/2026-12-08', night: '2026-12-08', kms, rootKeyId, workDir: dir }), (err: unknown) => {
      assert.ok(err instanceof EngineError);
      assert.equal(err.code, 'KEY_IN_TRANSITION');
      assert.equal(err.retryable, true);
      assert.match(err.message, /re-encrypting \d+ tablespace\(s\) for key 1 version 5/);
      return true;
    });
    assert.equal((await readdir(dir)).includes('shop-2.kob'), false);
    await db.query('SET GLOBAL innodb_encryption_threads = 2');
    await waitUntil('MariaDB to settle on version 5', async () => ((await engine.encryptionState()).settled ? true : undefined), 120_000);
    const backup = await engine.backup({ path: join(dir, 'shop-2.kob'), databaseId: 'shop', backupId: 'backup/shop/2026-12-08', night: '2026-12-08', kms, rootKeyId, workDir: dir });
    assert.deepEqual(backup.engineKeys, { keyId: 1, oldestVersion: 5, latestVersion: 5 });
  });

  it('names a missing tool or a missing KV mount as a configuration error, and the worker process survives it', async () => {
    const broken = new MariaDbEngine({ socket: db.socket, keyStore: keys, serverConfig: db.config, vaultTokenFile: bao.tokenFile, tools: { mbstream: join(dir, 'no-such-mbstream') } });
    try {
      const path = join(dir, 'shop-tools.kob');
      await engine.backup({ path, databaseId: 'shop', backupId: 'backup/shop/2026-12-09', night: '2026-12-09', kms, rootKeyId, workDir: dir });
      await assert.rejects(broken.verifyBackup({ path, kms, targetDir: join(dir, 'restored-no-tool') }), (err: unknown) => {
        assert.ok(err instanceof EngineError);
        assert.equal(err.code, 'INVALID_CONFIGURATION');
        assert.match(err.message, /no-such-mbstream could not be started/);
        return true;
      });
      assert.equal((await readdir(dir)).includes('restored-no-tool'), false);
    } finally {
      await broken.close();
    }
    const nowhere = new MariaDbKeyStore({ address: bao.address, mount: 'no-such-mount', tokenFile: bao.tokenFile });
    await assert.rejects(nowhere.versions(1), /there is no KV version 2 mount at .*\/v1\/no-such-mount/);
  });

  it("gives a check server the key settings and the backup's InnoDB layout, and nothing else of a production option file", async () => {
    const conf = join(dir, 'production');
    await mkdir(join(conf, 'conf.d'), { recursive: true });
    await writeFile(join(conf, 'my.cnf'), `!include ${db.config}\n!includedir ${join(conf, 'conf.d')}\n`);
    await writeFile(
      join(conf, 'conf.d', 'tuning.cnf'),
      '[mysqld]\ninnodb_buffer_pool_size=64G\nport=3306\nlog-bin=/var/log/mysql/binlog\nserver-id=7\nplugin-load-add=server_audit.so\n[mariadb]\ninnodb-encryption-threads=8\n',
    );
    const prepared = join(conf, 'prepared');
    await mkdir(prepared);
    await writeFile(join(prepared, 'backup-my.cnf'), '# This options file was generated by innobackupex.\n\n[mysqld]\ninnodb_checksum_algorithm=full_crc32\ninnodb_data_file_path=ibdata1:12M:autoextend\ninnodb_log_file_size=50331648\ninnodb_page_size=16384\n');
    const target = join(conf, 'check.cnf');
    await writeCheckServerOptions({ serverConfig: join(conf, 'my.cnf'), dataDir: prepared, target });
    const written = (await readFile(target, 'utf8')).split('\n');
    assert.equal(written[0], '[mariadbd]');
    for (const line of ['innodb_data_file_path=ibdata1:12M:autoextend', 'innodb_page_size=16384', 'plugin-load-add=hashicorp_key_management.so', 'innodb_encrypt_tables=FORCE', 'innodb-encryption-threads=8']) {
      assert.ok(written.includes(line), `${line} in ${written.join(' | ')}`);
    }
    assert.ok(written.some((l) => l.startsWith('hashicorp-key-management-vault-url=')));
    for (const unwanted of [/buffer_pool/, /^port=/, /log-bin/, /server-id/, /server_audit/, /^datadir=/, /^socket=/]) {
      assert.ok(!written.some((l) => unwanted.test(l)), `${String(unwanted)} kept: ${written.join(' | ')}`);
    }
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
