import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { readBackupHeader } from '../activities/engines/backup-file-format';
import { readBackupKeyExport, writeBackupKeyExport } from '../activities/engines/backup-key-export';
import { EngineError } from '../activities/engines/engine-error';
import { ConfigError, loadWorkerConfig } from '../workers/config';
import { MasterSecretError, loadKmsMasterSecret } from '../workers/kms-master-secret';

const configError = (env: NodeJS.ProcessEnv): string => {
  try {
    loadWorkerConfig(env, false);
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    return err.message;
  }
  assert.fail('expected a configuration error');
};

describe('secrets stay secret: configuration, master secret, unauthenticated header fields', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keyops-secrets-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a configuration error names a secret variable without showing its value', () => {
    const passphrase = 'short-pass';
    const message = configError({ KEYOPS_BACKUP_KEY_PASSPHRASE: passphrase, KEYOPS_LOG_LEVEL: 'loud' });
    assert.match(message, /KEYOPS_BACKUP_KEY_PASSPHRASE=\(value hidden\): a backup-key passphrase needs at least 12 characters/);
    assert.match(message, /KEYOPS_LOG_LEVEL="loud"/, 'other values are shown, to be fixed');
    assert.ok(!message.includes(passphrase));
  });

  it('refuses a webhook URL with credentials when the configuration loads, without echoing them', () => {
    const message = configError({ KEYOPS_ALERT_WEBHOOK: 'https://alice:s3cr3t-token@hooks.example.com/keyops' });
    assert.match(message, /KEYOPS_ALERT_WEBHOOK=\(value hidden\): must not carry credentials \(user:pass@\)/);
    assert.ok(!message.includes('s3cr3t-token'));
    assert.equal(loadWorkerConfig({ KEYOPS_ALERT_WEBHOOK: 'https://hooks.example.com/keyops/T0K3N' }, false).alertWebhook, 'https://hooks.example.com/keyops/T0K3N');
  });

  it('takes only strict base64 of at least 32 bytes as the master secret', () => {
    const config = (value: string) => loadWorkerConfig({ KEYOPS_KMS_MASTER_SECRET: value, KEYOPS_DATA_DIR: join(dir, 'strict') }, false);
    const good = randomBytes(32).toString('base64');
    assert.equal(loadKmsMasterSecret(config(good)).secret.length, 32);
    // Node's decoder would skip the "!" and the spaces and return 32 other bytes.
    for (const bad of [`${good.slice(0, 10)}!${good.slice(10)}`, good.replace(/(.{8})/g, '$1 '), randomBytes(31).toString('base64')]) {
      assert.throws(() => loadKmsMasterSecret(config(bad)), (err: unknown) => err instanceof MasterSecretError && !err.message.includes(bad));
    }
  });

  it('refuses to start when the KMS store exists but its generated master secret is missing', () => {
    const dataDir = join(dir, 'lost-secret');
    const config = loadWorkerConfig({ KEYOPS_DATA_DIR: dataDir }, false);
    const first = loadKmsMasterSecret(config);
    assert.ok(first.generatedAt, 'a fresh data directory gets a generated secret');
    writeFileSync(join(dataDir, 'kms', 'keys.sqlite'), 'a key store');
    assert.deepEqual(loadKmsMasterSecret(config).secret, first.secret);
    writeFileSync(join(dataDir, 'kms', 'master.secret.bak'), readFileSync(join(dataDir, 'kms', 'master.secret')));
    rmSync(join(dataDir, 'kms', 'master.secret'));
    assert.throws(() => loadKmsMasterSecret(config), /the local KMS store .*keys\.sqlite exists but its master secret .*master\.secret is missing: restore the secret/);
  });

  it('bounds the unauthenticated chunk size of a backup header and the scrypt cost of a key export before allocating', async () => {
    const header = JSON.stringify({ databaseId: 'x', createdAt: 'now', keyId: 'k', keyVersion: 1, wdek: 'AA==', backupKeyHash: 'a'.repeat(64), plainBytes: 1, chunkBytes: 4 * 1024 ** 3 });
    const prefix = Buffer.alloc(9);
    prefix.write('KOBK', 0, 'ascii');
    prefix[4] = 1;
    prefix.writeUInt32BE(Buffer.byteLength(header), 5);
    const backup = join(dir, 'huge-chunks.kob');
    writeFileSync(backup, Buffer.concat([prefix, Buffer.from(header)]));
    await assert.rejects(readBackupHeader(backup), (err: unknown) => err instanceof EngineError && err.code === 'BACKUP_INVALID' && /header is malformed \(chunkBytes\)/.test(err.message));

    const exportPath = join(dir, 'key.json');
    mkdirSync(dir, { recursive: true });
    await writeBackupKeyExport(exportPath, 'x', randomBytes(32), 'a long enough passphrase');
    const parsed = JSON.parse(readFileSync(exportPath, 'utf8')) as { kdf: { N: number } };
    parsed.kdf.N = 2 ** 30;
    const greedy = join(dir, 'greedy.json');
    writeFileSync(greedy, JSON.stringify(parsed));
    await assert.rejects(readBackupKeyExport(greedy, 'a long enough passphrase'), (err: unknown) => err instanceof EngineError && err.code === 'BACKUP_INVALID');
    assert.equal((await readBackupKeyExport(exportPath, 'a long enough passphrase')).databaseId, 'x');
  });
});
