/**
 * The IBM Key Protect adapter (issue 14 §1) against a FAKE Key Protect: test/fakes/key-protect-fake.ts,
 * a node:http server that follows the public API reference's shapes and status codes (each route
 * cites the documentation it follows) with real AES-256-GCM per key version. It is not Key
 * Protect: no Key Protect is reachable here. What the fake cannot show is listed in its header
 * and in the README ("IBM Key Protect").
 *
 * 1. The adapter on its own: versions, rotation and its hourly limit, wrap/unwrap/rewrap and
 *    their batches, policy, disable/enable, errors, IAM tokens, throttling.
 * 2. End to end: the rotateRootKey workflow rotating a (fake) Key Protect key and rewrapping a
 *    few hundred registered WDEKs, every one verified under the new version.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { KeyManagementService, UnwrapResult } from '../activities/kms/key-management-service';
import { KeyProtectKms, type KeyProtectOptions, parseKeyProtectOptions } from '../activities/kms/key-protect-kms';
import { KmsError, type KmsErrorCode } from '../activities/kms/kms-error';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { rotateRootKey } from '../workflows';
import { keyEntityWorkflowId, rewrapWorkflowId } from '../workflows/root-key-messages';
import { KeyProtectFake } from './fakes/key-protect-fake';
import { freePort } from './helpers/child-process';
import { localActivities } from './helpers/local-activities';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

const HOUR = 3_600_000;
const API_KEY = randomBytes(30).toString('base64url');
const READER_KEY = randomBytes(30).toString('base64url');
const WRITER_KEY = randomBytes(30).toString('base64url');
const OUTSIDER_KEY = randomBytes(30).toString('base64url');
const ENV_NAME = 'KEYOPS_TEST_KP_API_KEY';

/** Every KmsError the tests saw, to check that none carries a secret. */
const seen: KmsError[] = [];

async function rejectsWith(promise: Promise<unknown>, code: KmsErrorCode): Promise<KmsError> {
  let caught: unknown;
  await assert.rejects(promise, (err: unknown) => {
    caught = err;
    return true;
  });
  assert.ok(caught instanceof KmsError, `expected a KmsError ${code}, got ${String(caught)}`);
  seen.push(caught);
  assert.equal(caught.code, code, caught.message);
  return caught;
}

async function wrapMany(kms: KeyManagementService, keyId: string, count: number) {
  const out: { wdek: Buffer; dek: Buffer; keyVersion: number }[] = [];
  for (let i = 0; i < count; i += 50) out.push(...(await Promise.all(Array.from({ length: Math.min(50, count - i) }, () => kms.wrap(keyId)))));
  return out;
}

/** The fake's ciphertext with one byte of its inner AES-GCM ciphertext flipped: still well formed. */
function tamperInner(wdek: Buffer): Buffer {
  const inner = JSON.parse(Buffer.from(wdek.toString('latin1'), 'base64').toString('utf8')) as { ciphertext: string };
  const ct = Buffer.from(inner.ciphertext, 'base64');
  ct[3]! ^= 0x01;
  return Buffer.from(Buffer.from(JSON.stringify({ ...inner, ciphertext: ct.toString('base64') })).toString('base64'), 'latin1');
}

describe('KeyProtectKms against a FAKE Key Protect (test/fakes/key-protect-fake.ts, not Key Protect)', () => {
  let fake: KeyProtectFake;
  let dir: string;
  let apiKeyFile: string;
  let kms: KeyProtectKms;
  const adapter = (options: Partial<KeyProtectOptions> = {}) =>
    new KeyProtectKms({ endpoint: fake.endpoint, iamEndpoint: fake.endpoint, instanceId: fake.instanceId, apiKeyFile, now: () => fake.now(), ...options });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keyops-kp-'));
    apiKeyFile = join(dir, 'api.key');
    await writeFile(apiKeyFile, `${API_KEY}\n`, { mode: 0o600 });
    // A clock that moves only by fake.advance(): token expiry, the hourly rotation limit, the
    // 30-s enable wait and rate-limit windows are exact, however slowly the machine runs.
    const frozen = Date.now();
    fake = await KeyProtectFake.start({
      apiKeys: { [API_KEY]: {}, [READER_KEY]: { role: 'Reader' }, [WRITER_KEY]: { role: 'Writer' }, [OUTSIDER_KEY]: { instances: [randomUUID()] } },
      now: () => frozen,
    });
    kms = adapter();
  });
  after(async () => {
    await fake?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
    delete process.env[ENV_NAME];
    // No error message of any test carried the API key, a DEK or plaintext.
    for (const err of seen) {
      for (const secret of [API_KEY, READER_KEY, WRITER_KEY, OUTSIDER_KEY]) assert.ok(!err.message.includes(secret), `an API key in: ${err.message}`);
    }
  });

  it('creates a root key at version 1, named, active, with no policy', async () => {
    const meta = await kms.createKey({ name: 'orders root key' });
    assert.match(meta.keyId, /^[0-9a-f-]{36}$/);
    assert.deepEqual(
      { name: meta.name, state: meta.state, currentVersion: meta.currentVersion, lastRotateDate: meta.lastRotateDate, rotationPolicy: meta.rotationPolicy },
      { name: 'orders root key', state: 'active', currentVersion: 1, lastRotateDate: undefined, rotationPolicy: undefined },
    );
    assert.equal(fake.versionIds(meta.keyId).length, 1);
    assert.equal(meta.versions[0]?.createdAt, meta.createdAt);
  });

  it('wraps a generated and a given DEK; the WDEK is Key Protect’s ciphertext, naming its version', async () => {
    const { keyId } = await kms.createKey({ name: 'wrap key' });
    const generated = await kms.wrap(keyId);
    assert.equal(generated.dek.length, 32);
    assert.equal(generated.keyVersion, 1);
    const given = randomBytes(32);
    const wrapped = await kms.wrap(keyId, given);
    assert.ok(wrapped.dek.equals(given));
    // No envelope: the WDEK is the ciphertext text itself, whose handle is the key version.
    const inner = JSON.parse(Buffer.from(wrapped.wdek.toString('latin1'), 'base64').toString('utf8')) as { handle: string };
    assert.equal(inner.handle, fake.versionIds(keyId)[0]);
    for (const [w, dek] of [[generated.wdek, generated.dek], [wrapped.wdek, given]] as const) {
      const out = await kms.unwrap(keyId, w);
      assert.ok(out.dek.equals(dek));
      assert.equal(out.keyVersion, 1);
    }
    await rejectsWith(kms.wrap(keyId, randomBytes(16)), 'INVALID_INPUT');
  });

  it('rotates to version 2 (ordinals from version UUIDs), once per request id, once per hour', async () => {
    const { keyId } = await kms.createKey({ name: 'rotating key' });
    const v1 = await kms.wrap(keyId);
    assert.deepEqual(await kms.rotateKey(keyId, 'rewrap/k/v2'), { version: 2, rotated: true });
    const meta = await kms.getKeyMetadata(keyId);
    assert.equal(meta.currentVersion, 2);
    assert.deepEqual(
      meta.versions.map((v) => v.version),
      [1, 2],
    );
    assert.equal(meta.versions[1]?.requestId, 'rewrap/k/v2');
    assert.ok(meta.lastRotateDate && Date.parse(meta.lastRotateDate) >= Date.parse(meta.versions[0]!.createdAt));
    // The same request again (its answer lost, say) does not rotate again, nor ask Key Protect to.
    const rotations = fake.count('rotate');
    assert.deepEqual(await kms.rotateKey(keyId, 'rewrap/k/v2'), { version: 2, rotated: false });
    assert.equal(fake.count('rotate'), rotations);
    // Retired v1 still unwraps; new wraps are v2.
    assert.equal((await kms.unwrap(keyId, v1.wdek)).keyVersion, 1);
    assert.equal((await kms.wrap(keyId)).keyVersion, 2);
    // Another rotation within the hour: Key Protect's 409, with when it is allowed again.
    const refused = await rejectsWith(kms.rotateKey(keyId, 'rewrap/k/v3'), 'KEY_ROTATION_NOT_PERMITTED');
    assert.equal(refused.retryAfter, new Date(Date.parse(meta.lastRotateDate) + HOUR + 1_000).toISOString(), 'lastRotateDate + 1 h (+ 1 s: dates are to the second)');
    assert.equal(refused.retryable, false);
    fake.advance(HOUR + 1_000);
    assert.deepEqual(await kms.rotateKey(keyId, 'rewrap/k/v3'), { version: 3, rotated: true });
    assert.equal((await kms.unwrap(keyId, v1.wdek)).keyVersion, 1);
  });

  it('finds a rotation made outside keyops when an answer names an unknown version', async () => {
    const { keyId } = await kms.createKey({ name: 'policy-rotated key' });
    await kms.wrap(keyId);
    fake.rotateOutsideKeyops(keyId);
    assert.equal((await kms.wrap(keyId)).keyVersion, 2);
    const meta = await kms.getKeyMetadata(keyId);
    assert.equal(meta.currentVersion, 2);
    assert.equal(meta.versions[1]?.requestId, undefined);
    assert.ok(meta.lastRotateDate);
  });

  it('rewraps to v2 with keyVersion/rewrappedKeyVersion mapped, the same DEK', async () => {
    const { keyId } = await kms.createKey({ name: 'rewrap key' });
    const w = await kms.wrap(keyId);
    fake.rotateOutsideKeyops(keyId);
    const r = await kms.rewrap(keyId, w.wdek);
    assert.deepEqual({ keyVersion: r.keyVersion, previousVersion: r.previousVersion }, { keyVersion: 2, previousVersion: 1 });
    const out = await kms.unwrap(keyId, r.wdek);
    assert.ok(out.dek.equals(w.dek));
    assert.equal(out.keyVersion, 2);
    const again = await kms.rewrap(keyId, r.wdek);
    assert.deepEqual({ keyVersion: again.keyVersion, previousVersion: again.previousVersion }, { keyVersion: 2, previousVersion: 2 });
  });

  it('rewraps a batch of 300 WDEKs to v2, each verified, reading the version list once', async () => {
    const { keyId } = await kms.createKey({ name: 'batch key' });
    const wrapped = await wrapMany(kms, keyId, 300);
    assert.ok(wrapped.every((w) => w.keyVersion === 1));
    // Rotated behind the adapter's back: its cached version table is stale, and the first answers
    // naming the new version (16 in flight) share one reading of the list.
    fake.rotateOutsideKeyops(keyId);
    const listed = fake.count('versions');
    const rewrapped = await kms.rewrapBatch(keyId, wrapped.map((w) => w.wdek));
    assert.equal(fake.count('versions') - listed, 1, 'the version list was read once for the whole batch');
    assert.equal(fake.count('rewrap') >= 300, true);
    const fresh = await kms.unwrapBatch(keyId, rewrapped.map((r) => (r instanceof KmsError ? Buffer.alloc(0) : r.wdek)));
    rewrapped.forEach((r, i) => {
      assert.ok(!(r instanceof KmsError), `item ${i}: ${r instanceof KmsError ? r.message : ''}`);
      assert.deepEqual({ keyVersion: r.keyVersion, previousVersion: r.previousVersion }, { keyVersion: 2, previousVersion: 1 });
      const f = fresh[i] as UnwrapResult;
      assert.ok(!(f instanceof KmsError) && f.keyVersion === 2 && f.dek.equals(wrapped[i]!.dek), `item ${i} unwraps under v2 to its DEK`);
    });
  });

  it('fails only the tampered or foreign WDEKs of a batch, each with CIPHERTEXT_INVALID', async () => {
    const { keyId } = await kms.createKey({ name: 'tamper key' });
    const other = await kms.createKey({ name: 'another key' });
    const good = await wrapMany(kms, keyId, 3);
    const batch = [
      good[0]!.wdek,
      tamperInner(good[1]!.wdek), // well-formed, fails authentication: Key Protect's 422
      Buffer.from('not a ciphertext!'), // not base64: refused before any request
      Buffer.from('bm90IGpzb24gYXQgYWxs', 'latin1'), // base64 of no ciphertext: 422
      (await kms.wrap(other.keyId)).wdek, // another key's: 422
      good[2]!.wdek,
    ];
    for (const results of [await kms.rewrapBatch(keyId, batch), await kms.unwrapBatch(keyId, batch)]) {
      assert.deepEqual(
        results.map((r) => (r instanceof KmsError ? r.code : 'ok')),
        ['ok', 'CIPHERTEXT_INVALID', 'CIPHERTEXT_INVALID', 'CIPHERTEXT_INVALID', 'CIPHERTEXT_INVALID', 'ok'],
      );
      for (const r of results) if (r instanceof KmsError) seen.push(r);
    }
    await rejectsWith(kms.unwrap(keyId, tamperInner(good[0]!.wdek)), 'CIPHERTEXT_INVALID');
  });

  it('sets, reads back and removes a rotation policy (interval_month 1–12)', async () => {
    const { keyId } = await kms.createKey({ name: 'policy key' });
    assert.deepEqual((await kms.setRotationPolicy(keyId, { intervalMonths: 3 })).rotationPolicy, { intervalMonths: 3 });
    assert.deepEqual(fake.policyOf(keyId), { enabled: true, interval_month: 3 });
    assert.deepEqual((await kms.setRotationPolicy(keyId, { intervalMonths: 12 })).rotationPolicy, { intervalMonths: 12 });
    assert.equal((await kms.getKeyMetadata(keyId)).rotationPolicy?.intervalMonths, 12);
    assert.equal((await kms.setRotationPolicy(keyId, undefined)).rotationPolicy, undefined);
    assert.deepEqual(fake.policyOf(keyId), { enabled: false, interval_month: 12 });
    const puts = fake.count('policies');
    assert.equal((await kms.setRotationPolicy(keyId, undefined)).rotationPolicy, undefined);
    assert.equal(fake.count('policies'), puts + 2, 'removing an absent policy only reads (twice), never writes');
    for (const intervalMonths of [0, 13, 1.5]) await rejectsWith(kms.setRotationPolicy(keyId, { intervalMonths }), 'INVALID_INPUT');
  });

  it('refuses every use of a disabled key with KEY_DISABLED, and works again once enabled (after 30 s)', async () => {
    const { keyId } = await kms.createKey({ name: 'disabled key' });
    const w = await kms.wrap(keyId);
    await kms.disableKey(keyId);
    assert.equal(fake.stateOf(keyId), 2);
    await kms.disableKey(keyId); // idempotent
    const meta = await kms.getKeyMetadata(keyId); // versions with allKeyStates=true
    assert.deepEqual({ state: meta.state, currentVersion: meta.currentVersion }, { state: 'disabled', currentVersion: 1 });
    await rejectsWith(kms.wrap(keyId), 'KEY_DISABLED');
    await rejectsWith(kms.unwrap(keyId, w.wdek), 'KEY_DISABLED');
    await rejectsWith(kms.rewrap(keyId, w.wdek), 'KEY_DISABLED');
    await rejectsWith(kms.rewrapBatch(keyId, [w.wdek, w.wdek]), 'KEY_DISABLED');
    await rejectsWith(kms.rotateKey(keyId, 'while-disabled'), 'KEY_DISABLED');
    // Key Protect's REQ_TOO_EARLY_ERR: enabling within 30 s of disabling; retryable, with when.
    const early = await rejectsWith(kms.enableKey(keyId), 'KMS_THROTTLED');
    assert.equal(early.retryAfter, new Date(fake.now() + 30_000).toISOString());
    fake.advance(31_000);
    await kms.enableKey(keyId);
    await kms.enableKey(keyId); // idempotent
    assert.equal(fake.stateOf(keyId), 1);
    assert.ok((await kms.unwrap(keyId, w.wdek)).dek.equals(w.dek));
  });

  it('answers KEY_NOT_FOUND for an unknown key and INVALID_INPUT for what is not a key id', async () => {
    const unknown = randomUUID();
    await rejectsWith(kms.getKeyMetadata(unknown), 'KEY_NOT_FOUND');
    await rejectsWith(kms.wrap(unknown), 'KEY_NOT_FOUND');
    await rejectsWith(kms.rotateKey(unknown, 'r'), 'KEY_NOT_FOUND');
    await rejectsWith(kms.rewrapBatch(unknown, [Buffer.from('AAAA')]), 'KEY_NOT_FOUND');
    await rejectsWith(kms.wrap('orders'), 'INVALID_INPUT');
    await rejectsWith(kms.wrap('kp:orders'), 'INVALID_INPUT');
  });

  it('caches the IAM token, refreshes it before expiry, and once after a 401', async () => {
    const kp = adapter();
    const { keyId } = await kp.createKey({ name: 'token key' });
    const exchanges = fake.count('token');
    await kp.wrap(keyId);
    await kp.wrap(keyId);
    assert.equal(fake.count('token'), exchanges, 'the cached token serves every call');
    fake.advance(HOUR); // the token's expires_in (3600 s) has run out, on both clocks
    await Promise.all(Array.from({ length: 10 }, () => kp.wrap(keyId)));
    assert.equal(fake.count('token'), exchanges + 1, 'ten calls share one new token');
    fake.revokeTokens(); // the server stops taking the token the adapter still holds
    await kp.wrap(keyId);
    assert.equal(fake.count('token'), exchanges + 2, 'a 401 refreshes the token once, transparently');
    // The variable works as the file does.
    process.env[ENV_NAME] = API_KEY;
    const fromEnv = adapter({ apiKeyFile: undefined, apiKeyEnv: ENV_NAME });
    assert.equal((await fromEnv.wrap(keyId)).keyVersion, 1);
  });

  it('fails with KMS_AUTH_FAILED for a bad API key, no access to the instance, a role too small, no key', async () => {
    const { keyId } = await kms.createKey({ name: 'auth key' });
    const badFile = join(dir, 'bad.key');
    await writeFile(badFile, 'not-an-api-key', { mode: 0o600 });
    const bad = await rejectsWith(adapter({ apiKeyFile: badFile }).wrap(keyId), 'KMS_AUTH_FAILED');
    assert.match(bad.message, /BXNIM0415E/);
    assert.ok(bad.message.includes(badFile) && !bad.message.includes('not-an-api-key'));

    const outsiderFile = join(dir, 'outsider.key');
    await writeFile(outsiderFile, OUTSIDER_KEY, { mode: 0o600 });
    const before = fake.count('token');
    const outsider = await rejectsWith(adapter({ apiKeyFile: outsiderFile }).wrap(keyId), 'KMS_AUTH_FAILED');
    assert.equal(fake.count('token') - before, 2, 'one token, then one refresh after the 401, then given up');
    assert.match(outsider.message, /HTTP 401 UNAUTHORIZED_ERR/);

    // Roles as documented: a Reader wraps but does not rotate; a Writer rotates but does not
    // disable. A 403 is final: no token refresh.
    const readerFile = join(dir, 'reader.key');
    await writeFile(readerFile, READER_KEY, { mode: 0o600 });
    const reader = adapter({ apiKeyFile: readerFile });
    assert.equal((await reader.getKeyMetadata(keyId)).currentVersion, 1);
    assert.equal((await reader.wrap(keyId)).keyVersion, 1);
    const exchanges = fake.count('token');
    const forbidden = await rejectsWith(reader.rotateKey(keyId, 'reader-rotation'), 'KMS_AUTH_FAILED');
    assert.match(forbidden.message, /HTTP 403/);
    assert.equal(fake.count('token'), exchanges, 'no token refresh after a 403');
    const writerFile = join(dir, 'writer.key');
    await writeFile(writerFile, WRITER_KEY, { mode: 0o600 });
    await rejectsWith(adapter({ apiKeyFile: writerFile }).disableKey(keyId), 'KMS_AUTH_FAILED');
    assert.equal(fake.stateOf(keyId), 1);
    await rejectsWith(adapter({ apiKeyFile: join(dir, 'missing.key') }).wrap(keyId), 'KMS_AUTH_FAILED');
    delete process.env[ENV_NAME];
    await rejectsWith(adapter({ apiKeyFile: undefined, apiKeyEnv: ENV_NAME }).wrap(keyId), 'KMS_AUTH_FAILED');
  });

  it('maps 429 to KMS_THROTTLED with retryAfter from Retry-After, for one call and for a whole batch', async () => {
    const { keyId } = await kms.createKey({ name: 'throttled key' });
    const wrapped = await wrapMany(kms, keyId, 8);
    fake.setRateLimit({ requests: 3, windowMs: 10_000 });
    try {
      const started = fake.now();
      for (let i = 0; i < 3; i++) await kms.unwrap(keyId, wrapped[i]!.wdek);
      const throttled = await rejectsWith(kms.unwrap(keyId, wrapped[3]!.wdek), 'KMS_THROTTLED');
      assert.equal(throttled.retryable, true);
      assert.equal(throttled.retryAfter, new Date(started + 10_000).toISOString());
      await rejectsWith(kms.rewrapBatch(keyId, wrapped.map((w) => w.wdek)), 'KMS_THROTTLED');
      fake.advance(10_000);
      assert.ok((await kms.unwrap(keyId, wrapped[3]!.wdek)).dek.equals(wrapped[3]!.dek));
    } finally {
      fake.setRateLimit(undefined);
    }
  });

  it('maps 5xx and a KMS that does not answer to KMS_UNAVAILABLE', async () => {
    const { keyId } = await kms.createKey({ name: 'flaky key' });
    fake.failNext(1, 503);
    const err = await rejectsWith(kms.wrap(keyId), 'KMS_UNAVAILABLE');
    assert.equal(err.retryable, true);
    assert.equal((await kms.wrap(keyId)).keyVersion, 1);
    const closed = `http://127.0.0.1:${await freePort()}`;
    const nowhere = adapter({ endpoint: closed, iamEndpoint: closed, requestTimeoutMs: 2_000 });
    const down = await rejectsWith(nowhere.wrap(keyId), 'KMS_UNAVAILABLE');
    assert.match(down.message, /ECONNREFUSED/);
  });

  it('refuses inline secrets and reports every bad option as field: problem', () => {
    const base = { endpoint: 'https://us-south.kms.cloud.ibm.com', instanceId: randomUUID() };
    assert.throws(
      () => parseKeyProtectOptions({ ...base, apiKey: 'SECRET-VALUE-123' }),
      (e: unknown) => e instanceof KmsError && /apiKey: secrets are never given inline/.test(e.message) && !e.message.includes('SECRET-VALUE-123'),
    );
    assert.throws(() => parseKeyProtectOptions(base), /apiKeyFile: give exactly one of apiKeyFile or apiKeyEnv/);
    assert.throws(() => parseKeyProtectOptions({ ...base, apiKeyFile: 'f', apiKeyEnv: 'E' }), /give exactly one/);
    assert.throws(
      () => parseKeyProtectOptions({ endpoint: 'ftp://x', instanceId: 'nope', apiKeyEnv: 'lower', concurrency: 0 }),
      (e: unknown) => e instanceof KmsError && ['endpoint:', 'instanceId:', 'apiKeyEnv:', 'concurrency:'].every((f) => e.message.includes(f)),
    );
    assert.throws(() => parseKeyProtectOptions({ ...base, endpoint: 'https://user:pw@kp.example', apiKeyEnv: 'K' }), /must not carry credentials/);
    const ok = parseKeyProtectOptions({ ...base, apiKeyEnv: 'IBMCLOUD_API_KEY' });
    assert.equal(ok.iamEndpoint, 'https://iam.cloud.ibm.com');
  });
});

// -----------------------------------------------------------------------------------------------

describe('rotateRootKey on a Key Protect key (the FAKE Key Protect)', () => {
  const suite = useSuiteFixture('key-protect');
  let fake: KeyProtectFake;
  let kms: KeyProtectKms;
  before(async () => {
    fake = await KeyProtectFake.start({ apiKeys: { [API_KEY]: {} } });
    process.env[ENV_NAME] = API_KEY;
    kms = new KeyProtectKms({ endpoint: fake.endpoint, iamEndpoint: fake.endpoint, instanceId: fake.instanceId, apiKeyEnv: ENV_NAME });
  });
  after(async () => {
    delete process.env[ENV_NAME];
    await fake?.close();
  });

  it('behind its rate limit, rewraps and verifies each WDEK once: a 429 costs one request again, not the batch it came in', async () => {
    const count = 200;
    const { keyId } = await kms.createKey({ name: 'rate-limited root key' });
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'rate-limited.sqlite'));
    const wrapped = await wrapMany(kms, keyId, count);
    registry.registerMany(wrapped.map((w, i) => ({ id: `db/kp-limited/dek-${String(i).padStart(6, '0')}`, keyId, keyVersion: w.keyVersion, wdek: w.wdek, owner: 'test' })));
    const taskQueue = uniqueTaskQueue('key-protect-limited');
    const worker = await createTestWorker(suite.env, { taskQueue, activities: localActivities({ dataDir: suite.dir, kms, registry }).activities });
    const before = { received: fake.count('rewrap'), served: fake.servedCount('rewrap'), unwrapsReceived: fake.count('unwrap'), unwrapsServed: fake.servedCount('unwrap') };
    // Low enough to be hit however slowly a loaded machine sends: 16 requests in flight reach 60
    // well within 2 s.
    fake.setRateLimit({ requests: 60, windowMs: 2000 });
    try {
      const result = await worker.runUntil(
        suite.client.workflow.execute(rotateRootKey, {
          taskQueue,
          workflowId: rewrapWorkflowId(keyId, 2),
          args: [{ keyId, targetVersion: 2, rotate: true, chunkSize: count, batchSize: 50 }],
        }),
      );
      assert.deepEqual({ phase: result.phase, rewrapped: result.rewrapped, verified: result.verified }, { phase: 'done', rewrapped: count, verified: count });
      assert.ok((result.kms?.throttled ?? 0) > 0, 'the rate limit throttled the rewrap');
    } finally {
      fake.setRateLimit(undefined);
    }
    const received = fake.count('rewrap') - before.received;
    const served = fake.servedCount('rewrap') - before.served;
    assert.ok(received > served, `some rewrap requests were refused with 429 (${received} received)`);
    assert.equal(served, count, 'each WDEK was rewrapped by Key Protect exactly once');
    // Verification unwraps under the same limit: an unwrap batch refused half way keeps the DEKs
    // it got (zeroed at once) and resends only the rest. A batch of 50 against 60 per window.
    const unwrapsReceived = fake.count('unwrap') - before.unwrapsReceived;
    const unwrapsServed = fake.servedCount('unwrap') - before.unwrapsServed;
    assert.ok(unwrapsReceived > unwrapsServed, `some unwrap requests were refused with 429 (${unwrapsReceived} received)`);
    assert.equal(unwrapsServed, count, 'each WDEK was unwrapped by Key Protect exactly once to verify it');
    assert.ok(registry.list(keyId, {}, count + 1).every((r) => r.keyVersion === 2));
    await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished');
    registry.close();
  });

  it('rotates the key, rewraps 300 registered WDEKs to version 2 and verifies every one', async () => {
    const count = 300;
    const { keyId } = await kms.createKey({ name: 'e2e root key' });
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'wdeks.sqlite'));
    const wrapped = await wrapMany(kms, keyId, count);
    const deks = new Map<string, Buffer>();
    const originals = new Map<string, Buffer>();
    registry.registerMany(
      wrapped.map((w, i) => {
        const id = `db/kp/dek-${String(i).padStart(6, '0')}`;
        deks.set(id, w.dek);
        originals.set(id, w.wdek);
        return { id, keyId, keyVersion: w.keyVersion, wdek: w.wdek, owner: 'test' };
      }),
    );
    const taskQueue = uniqueTaskQueue('key-protect-rotate');
    const worker = await createTestWorker(suite.env, { taskQueue, activities: localActivities({ dataDir: suite.dir, kms, registry }).activities });
    const started = Date.now();
    const result = await worker.runUntil(
      suite.client.workflow.execute(rotateRootKey, {
        taskQueue,
        workflowId: rewrapWorkflowId(keyId, 2),
        args: [{ keyId, targetVersion: 2, rotate: true, chunkSize: 100, batchSize: 50 }],
      }),
    );
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    assert.deepEqual(
      { phase: result.phase, total: result.total, rewrapped: result.rewrapped, verified: result.verified, rotated: result.rotated },
      { phase: 'done', total: count, rewrapped: count, verified: count, rotated: true },
    );
    assert.equal(fake.versionIds(keyId).length, 2, 'Key Protect rotated exactly once');
    const meta = await kms.getKeyMetadata(keyId);
    assert.equal(meta.currentVersion, 2);
    assert.equal(meta.versions[1]?.requestId, rewrapWorkflowId(keyId, 2), 'the rotation is recorded as this run’s');
    assert.equal(registry.getRewrappedVersion(keyId), 2);

    const records = registry.list(keyId, {}, 1_000_000);
    assert.equal(records.length, count);
    assert.ok(records.every((r) => r.keyVersion === 2));
    const fresh = await kms.unwrapBatch(keyId, records.map((r) => r.wdek));
    const old = await kms.unwrapBatch(keyId, records.map((r) => originals.get(r.id)!));
    records.forEach((r, i) => {
      const f = fresh[i] as UnwrapResult;
      const o = old[i] as UnwrapResult;
      assert.ok(!(f instanceof KmsError) && f.keyVersion === 2 && f.dek.equals(deks.get(r.id)!), `${r.id} unwraps under v2 to its DEK`);
      assert.ok(!(o instanceof KmsError) && o.keyVersion === 1 && o.dek.equals(deks.get(r.id)!), `the v1 copy of ${r.id} still unwraps`);
    });
    process.stdout.write(`# key-protect fake: rotateRootKey rewrapped and verified ${count} WDEKs in ${seconds} s\n`);
    await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished');
    registry.close();
  });
});
