/**
 * The AWS KMS adapter (issue 14 §1), in three parts:
 *
 * 1. Against **moto's server mode**: an AWS emulator, not AWS. Its KMS speaks the real wire
 *    protocol and keeps real per-key AES-GCM material, but its rotation does not change key
 *    material (RotateKeyOnDemand only appends an entry to ListKeyRotations), EnableKeyRotation
 *    ignores RotationPeriodInDays and GetKeyRotationStatus returns only KeyRotationEnabled,
 *    Encrypt/Decrypt/GenerateDataKey/ReEncrypt do not refuse a disabled key, a rotation completes
 *    at once (no OnDemandRotationStartDate), and nothing is ever throttled. The assertions here
 *    stay within what it implements: "old WDEKs unwrap after rotation" shows keyops' envelope and
 *    encryption context at work, not AWS keeping old material.
 * 2. What moto cannot show, against **recorded AWS response shapes** served by a stub HTTP
 *    handler under the real SDK client: throttling, AWS's own refusals of a disabled key, auth
 *    and server errors, the period of a rotation policy, an on-demand rotation AWS completes in
 *    the background.
 * 3. End to end: the rotateRootKey workflow on a moto key, rewrapping a few hundred WDEKs.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  DescribeKeyCommand,
  GetKeyRotationStatusCommand,
  KMSClient,
  ListKeyRotationsCommand,
  ListResourceTagsCommand,
} from '@aws-sdk/client-kms';
import { AwsKms, decodeAwsWdek, encodeAwsWdek, parseAwsKmsOptions, toKmsError } from '../activities/kms/aws-kms';
import type { KeyManagementService, UnwrapResult } from '../activities/kms/key-management-service';
import { KmsError, type KmsErrorCode } from '../activities/kms/kms-error';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { rotateRootKey } from '../workflows';
import { keyEntityWorkflowId, rewrapWorkflowId } from '../workflows/root-key-messages';
import { freePort } from './helpers/child-process';
import { localActivities } from './helpers/local-activities';
import { type Moto, startMoto } from './helpers/moto';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

const REGION = 'eu-west-1';

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

/** moto takes any credentials; the adapter finds these through the SDK's default chain. */
function useEmulatorCredentials(): void {
  for (const name of ['AWS_PROFILE', 'AWS_SESSION_TOKEN', 'AWS_ROLE_ARN', 'AWS_WEB_IDENTITY_TOKEN_FILE']) delete process.env[name];
  Object.assign(process.env, {
    AWS_ACCESS_KEY_ID: 'moto-emulator',
    AWS_SECRET_ACCESS_KEY: 'moto-emulator',
    AWS_EC2_METADATA_DISABLED: 'true',
  });
}

/** Wraps `count` fresh DEKs, a few at a time. */
async function wrapMany(kms: KeyManagementService, keyId: string, count: number) {
  const out: { wdek: Buffer; dek: Buffer; keyVersion: number }[] = [];
  for (let i = 0; i < count; i += 25) {
    out.push(...(await Promise.all(Array.from({ length: Math.min(25, count - i) }, () => kms.wrap(keyId)))));
  }
  return out;
}

function flipLastByte(wdek: Buffer): Buffer {
  const copy = Buffer.from(wdek);
  copy[copy.length - 1]! ^= 0x01;
  return copy;
}

describe('AwsKms against moto server mode (an AWS emulator whose rotation does not change key material)', () => {
  let moto: Moto;
  let kms: AwsKms;
  /** A plain SDK client on the same emulator, to look at what the adapter left there. */
  let raw: KMSClient;

  before(async () => {
    useEmulatorCredentials();
    moto = await startMoto();
    kms = AwsKms.create({ region: REGION, endpoint: moto.endpoint, minRotationIntervalMs: 0 });
    raw = new KMSClient({ region: REGION, endpoint: moto.endpoint });
  });
  after(async () => {
    kms?.close();
    raw?.destroy();
    await moto?.stop();
  });

  it('creates a SYMMETRIC_DEFAULT key named by its keyops:name tag, at version 1 with no policy', async () => {
    const meta = await kms.createKey({ name: 'orders root key' });
    assert.match(meta.keyId, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.deepEqual(
      { name: meta.name, state: meta.state, currentVersion: meta.currentVersion, versions: meta.versions.map((v) => v.version), lastRotateDate: meta.lastRotateDate, policy: meta.rotationPolicy },
      { name: 'orders root key', state: 'active', currentVersion: 1, versions: [1], lastRotateDate: undefined, policy: undefined },
    );
    const described = (await raw.send(new DescribeKeyCommand({ KeyId: meta.keyId }))).KeyMetadata!;
    assert.deepEqual({ spec: described.KeySpec, usage: described.KeyUsage, state: described.KeyState }, { spec: 'SYMMETRIC_DEFAULT', usage: 'ENCRYPT_DECRYPT', state: 'Enabled' });
    const tags = (await raw.send(new ListResourceTagsCommand({ KeyId: meta.keyId }))).Tags ?? [];
    assert.deepEqual(tags, [{ TagKey: 'keyops:name', TagValue: 'orders root key' }]);
    // The same metadata read back, and the id in upper case is the same key.
    const again = await kms.getKeyMetadata(meta.keyId.toUpperCase());
    assert.deepEqual(again, { ...meta, createdAt: again.createdAt, versions: [{ version: 1, createdAt: again.createdAt }] });
    await rejectsWith(kms.createKey({ name: 'x' }), 'INVALID_INPUT');
  });

  it('wraps a generated or a given DEK and unwraps it, in the documented envelope bound to its version', async () => {
    const { keyId } = await kms.createKey({ name: 'round trip' });
    const generated = await kms.wrap(keyId);
    assert.equal(generated.dek.length, 32);
    assert.equal(generated.keyVersion, 1);
    assert.deepEqual([...generated.wdek.subarray(0, 8)], [0x4b, 0x4f, 0x41, 1, 0, 0, 0, 1], 'magic "KOA", format 1, version 1');
    const unwrapped = await kms.unwrap(keyId, generated.wdek);
    assert.ok(unwrapped.dek.equals(generated.dek));
    assert.equal(unwrapped.keyVersion, 1);

    const mine = randomBytes(32);
    const given = await kms.wrap(keyId, Buffer.from(mine));
    assert.ok((await kms.unwrap(keyId, given.wdek)).dek.equals(mine));
    await rejectsWith(kms.wrap(keyId, randomBytes(16)), 'INVALID_INPUT');

    // The version in the header is authenticated (encryption context): changing it breaks the WDEK.
    const relabelled = encodeAwsWdek(2, decodeAwsWdek(generated.wdek).blob);
    await rejectsWith(kms.unwrap(keyId, relabelled), 'CIPHERTEXT_INVALID');
    await rejectsWith(kms.unwrap(keyId, flipLastByte(generated.wdek)), 'CIPHERTEXT_INVALID');
    await rejectsWith(kms.unwrap(keyId, Buffer.from('not a wdek at all')), 'CIPHERTEXT_INVALID');
  });

  it('rotates on demand once per request id: version 2, old WDEKs still unwrap, rewrap moves them to v2', async () => {
    const { keyId } = await kms.createKey({ name: 'rotated' });
    const before = await wrapMany(kms, keyId, 5);

    const first = await kms.rotateKey(keyId, 'rewrap/test/v2');
    assert.deepEqual(first, { version: 2, rotated: true });
    assert.deepEqual(await kms.rotateKey(keyId, 'rewrap/test/v2'), { version: 2, rotated: false }, 'a retry of the same request does not rotate again');
    const rotations = (await raw.send(new ListKeyRotationsCommand({ KeyId: keyId }))).Rotations ?? [];
    assert.equal(rotations.length, 1, 'one RotateKeyOnDemand reached the emulator');
    assert.equal(rotations[0]!.RotationType, 'ON_DEMAND');

    const meta = await kms.getKeyMetadata(keyId);
    assert.equal(meta.currentVersion, 2);
    assert.deepEqual(meta.versions.map((v) => [v.version, v.requestId]), [[1, undefined], [2, 'rewrap/test/v2']]);
    assert.equal(meta.lastRotateDate, rotations[0]!.RotationDate!.toISOString());

    for (const w of before) {
      const old = await kms.unwrap(keyId, w.wdek);
      assert.deepEqual({ version: old.keyVersion, same: old.dek.equals(w.dek) }, { version: 1, same: true });
      const moved = await kms.rewrap(keyId, w.wdek);
      assert.deepEqual({ version: moved.keyVersion, previous: moved.previousVersion }, { version: 2, previous: 1 });
      const fresh = await kms.unwrap(keyId, moved.wdek);
      assert.deepEqual({ version: fresh.keyVersion, same: fresh.dek.equals(w.dek) }, { version: 2, same: true });
    }
    assert.equal((await kms.wrap(keyId)).keyVersion, 2, 'new wraps are on the latest version');

    // The port's one manual rotation per hour, kept by the adapter (its default).
    const hourly = AwsKms.create({ region: REGION, endpoint: moto.endpoint });
    try {
      const refused = await rejectsWith(hourly.rotateKey(keyId, 'another request'), 'KEY_ROTATION_NOT_PERMITTED');
      assert.ok(refused.retryAfter && Date.parse(refused.retryAfter) > Date.now() + 59 * 60_000, `retryAfter ${refused.retryAfter}`);
    } finally {
      hourly.close();
    }
    await rejectsWith(kms.rotateKey(keyId, ''), 'INVALID_INPUT');
  });

  it('rewraps a batch of 300 WDEKs to v2, every one verified by a batch unwrap, a tampered one failing alone', async () => {
    const { keyId } = await kms.createKey({ name: 'batch' });
    const wrapped = await wrapMany(kms, keyId, 300);
    await kms.rotateKey(keyId, 'batch-rotation');

    const batch = wrapped.map((w) => w.wdek);
    const tampered = new Set([7, 150, 299]);
    for (const i of tampered) batch[i] = flipLastByte(batch[i]!);
    batch.push(Buffer.from('KOA')); // not even an envelope
    const started = Date.now();
    const results = await kms.rewrapBatch(keyId, batch);
    const rewrapMs = Date.now() - started;
    assert.equal(results.length, 301);
    const rewrapped: Buffer[] = [];
    results.forEach((r, i) => {
      if (tampered.has(i) || i === 300) {
        assert.ok(r instanceof KmsError && r.code === 'CIPHERTEXT_INVALID', `item ${i} should fail alone`);
        return;
      }
      if (r instanceof KmsError) assert.fail(`item ${i}: ${r.message}`);
      assert.deepEqual({ v: r.keyVersion, prev: r.previousVersion }, { v: 2, prev: 1 });
      rewrapped[i] = r.wdek;
    });

    const kept = wrapped.map((w, i) => ({ ...w, i })).filter((w) => !tampered.has(w.i));
    const unwrapped = await kms.unwrapBatch(keyId, kept.map((w) => rewrapped[w.i]!));
    unwrapped.forEach((u, j) => {
      if (u instanceof KmsError) assert.fail(u.message);
      assert.equal(u.keyVersion, 2);
      assert.ok(u.dek.equals(kept[j]!.dek), `WDEK ${kept[j]!.i} unwraps to its DEK`);
    });
    assert.deepEqual(await kms.rewrapBatch(keyId, []), []);
    process.stdout.write(`# moto: rewrapBatch of 301 (3 tampered, 1 malformed) in ${rewrapMs} ms at concurrency 16\n`);
  });

  it('refuses every use of a disabled key with KEY_DISABLED and works again once enabled', async () => {
    const { keyId } = await kms.createKey({ name: 'suspected compromise' });
    const w = await kms.wrap(keyId);
    await kms.disableKey(keyId);
    assert.equal((await kms.getKeyMetadata(keyId)).state, 'disabled');
    // moto itself would still decrypt: the adapter's reading of KeyState refuses (AWS's own
    // DisabledException is mapped in the recorded-shape tests below).
    await rejectsWith(kms.wrap(keyId), 'KEY_DISABLED');
    await rejectsWith(kms.unwrap(keyId, w.wdek), 'KEY_DISABLED');
    await rejectsWith(kms.rewrap(keyId, w.wdek), 'KEY_DISABLED');
    await rejectsWith(kms.unwrapBatch(keyId, [w.wdek]), 'KEY_DISABLED');
    await rejectsWith(kms.rewrapBatch(keyId, [w.wdek]), 'KEY_DISABLED');
    await rejectsWith(kms.rotateKey(keyId, 'while disabled'), 'KEY_DISABLED');

    await kms.enableKey(keyId);
    assert.equal((await kms.getKeyMetadata(keyId)).state, 'active');
    assert.ok((await kms.unwrap(keyId, w.wdek)).dek.equals(w.dek));
  });

  it('turns automatic rotation on and off (moto keeps the switch, not the period)', async () => {
    const { keyId } = await kms.createKey({ name: 'policy' });
    const on = await kms.setRotationPolicy(keyId, { intervalMonths: 6 });
    assert.ok(on.rotationPolicy, 'a policy after EnableKeyRotation');
    assert.equal((await raw.send(new GetKeyRotationStatusCommand({ KeyId: keyId }))).KeyRotationEnabled, true);
    // moto drops RotationPeriodInDays, so it reads back as AWS's default of 365 days (12 months);
    // the 6 ↔ 180 days mapping is shown against AWS's shapes below.
    assert.deepEqual(on.rotationPolicy, { intervalMonths: 12 });
    const off = await kms.setRotationPolicy(keyId, undefined);
    assert.equal(off.rotationPolicy, undefined);
    assert.equal((await raw.send(new GetKeyRotationStatusCommand({ KeyId: keyId }))).KeyRotationEnabled, false);
    // AWS rotates every 90 to 2560 days: 1 or 2 months cannot be expressed.
    await rejectsWith(kms.setRotationPolicy(keyId, { intervalMonths: 2 }), 'INVALID_INPUT');
    await rejectsWith(kms.setRotationPolicy(keyId, { intervalMonths: 13 }), 'INVALID_INPUT');
  });

  it('answers KEY_NOT_FOUND for an unknown key and INVALID_INPUT for what is not a key id', async () => {
    const unknown = '0f8e2a51-7c3d-4b6a-9e1f-2d4c6b8a0e13';
    const { keyId } = await kms.createKey({ name: 'known' });
    const w = await kms.wrap(keyId);
    await rejectsWith(kms.getKeyMetadata(unknown), 'KEY_NOT_FOUND');
    await rejectsWith(kms.wrap(unknown), 'KEY_NOT_FOUND');
    await rejectsWith(kms.unwrap(unknown, w.wdek), 'KEY_NOT_FOUND');
    await rejectsWith(kms.rewrapBatch(unknown, [w.wdek]), 'KEY_NOT_FOUND');
    await rejectsWith(kms.rotateKey(unknown, 'r'), 'KEY_NOT_FOUND');
    await rejectsWith(kms.disableKey(unknown), 'KEY_NOT_FOUND');
    for (const bad of [`aws:${keyId}`, `alias/known`, `arn:aws:kms:${REGION}:123456789012:key/${keyId}`, ` ${keyId}`]) {
      await rejectsWith(kms.getKeyMetadata(bad), 'INVALID_INPUT');
    }
  });
});

// -----------------------------------------------------------------------------------------------

/** One recorded AWS JSON answer: 200 with a body, or an error as AWS sends it (awsJson1_1). */
type Answer = { status?: number; body?: unknown; error?: string; message?: string; headers?: Record<string, string> };

/**
 * The real SDK client with a stub HTTP handler in place of the network: `answer` gets the
 * operation (X-Amz-Target) and the decoded request, and returns what AWS would. Every request
 * is recorded.
 */
function stubbedKms(answer: (op: string, input: Record<string, unknown>) => Answer, options: ConstructorParameters<typeof AwsKms>[1] = {}) {
  const requests: { op: string; input: Record<string, unknown> }[] = [];
  const client = new KMSClient({
    region: REGION,
    credentials: { accessKeyId: 'stub', secretAccessKey: 'stub' },
    maxAttempts: options.maxAttempts ?? 1,
    requestHandler: {
      handle: (request: { headers: Record<string, string>; body?: unknown }) => {
        const op = String(request.headers['x-amz-target']).replace('TrentService.', '');
        const input = JSON.parse(Buffer.from(request.body as Uint8Array).toString('utf8')) as Record<string, unknown>;
        requests.push({ op, input });
        const a = answer(op, input);
        const body = a.error ? { __type: a.error, message: a.message ?? '' } : (a.body ?? {});
        return Promise.resolve({
          response: {
            statusCode: a.status ?? (a.error ? 400 : 200),
            headers: { 'content-type': 'application/x-amz-json-1.1', ...a.headers },
            body: Buffer.from(JSON.stringify(body)),
          },
        });
      },
    } as never,
  });
  return { kms: new AwsKms(client, options), requests, client };
}

const KEY = '1234abcd-12ab-34cd-56ef-1234567890ab';
const CREATED = 1_767_225_600; // 2026-01-01T00:00:00Z, in AWS's epoch seconds
const describeAnswer = (state = 'Enabled'): Answer => ({
  body: { KeyMetadata: { KeyId: KEY, CreationDate: CREATED, Enabled: state === 'Enabled', KeyState: state, KeySpec: 'SYMMETRIC_DEFAULT', KeyUsage: 'ENCRYPT_DECRYPT', Description: 'keyops root key "k"' } },
});
const rotationsAnswer = (count: number): Answer => ({
  body: { Rotations: Array.from({ length: count }, (_, i) => ({ KeyId: KEY, RotationDate: CREATED + (i + 1) * 86_400, RotationType: 'ON_DEMAND' })), Truncated: false },
});
/** A WDEK as the adapter makes it; the stub never decrypts, so its blob is opaque bytes. */
const someWdek = (version = 1) => encodeAwsWdek(version, randomBytes(150));

describe('AwsKms against recorded AWS response shapes (what moto does not implement)', () => {
  it('maps ThrottlingException to KMS_THROTTLED after the SDK retries, with Retry-After when AWS sends one', async () => {
    const { kms, requests } = stubbedKms((op) => (op === 'Decrypt' ? { error: 'ThrottlingException', message: 'Rate exceeded' } : op === 'DescribeKey' ? describeAnswer() : {}), { maxAttempts: 3 });
    const err = await rejectsWith(kms.unwrap(KEY, someWdek()), 'KMS_THROTTLED');
    assert.equal(err.retryable, true);
    assert.equal(err.retryAfter, undefined, 'AWS said nothing about when');
    assert.equal(requests.filter((r) => r.op === 'Decrypt').length, 3, 'the SDK spent its 3 attempts first');
    assert.match(err.message, /Decrypt for key 1234abcd-.*ThrottlingException \(HTTP 400\): Rate exceeded/);

    const said = stubbedKms((op) => (op === 'Decrypt' ? { error: 'ThrottlingException', headers: { 'retry-after': '7' } } : describeAnswer()));
    const before = Date.now();
    const withWhen = await rejectsWith(said.kms.unwrap(KEY, someWdek()), 'KMS_THROTTLED');
    const at = Date.parse(withWhen.retryAfter ?? '');
    assert.ok(at >= before + 7000 && at <= Date.now() + 7000, `retryAfter ${withWhen.retryAfter}`);
  });

  it('maps LimitExceededException to KMS_THROTTLED, except the per-key cap on on-demand rotations', async () => {
    const limited = stubbedKms((op) => (op === 'ReEncrypt' ? { error: 'LimitExceededException' } : op === 'DescribeKey' ? describeAnswer() : op === 'ListKeyRotations' ? rotationsAnswer(0) : {}));
    await rejectsWith(limited.kms.rewrapBatch(KEY, [someWdek()]), 'KMS_THROTTLED');

    const capped = stubbedKms((op) => {
      if (op === 'RotateKeyOnDemand') return { error: 'LimitExceededException', message: 'on-demand rotations quota' };
      if (op === 'DescribeKey') return describeAnswer();
      if (op === 'ListKeyRotations') return rotationsAnswer(0);
      return {};
    });
    const err = await rejectsWith(capped.kms.rotateKey(KEY, 'r1'), 'KEY_ROTATION_NOT_PERMITTED');
    assert.equal(err.retryable, false);
  });

  it("maps AWS's own refusals of a disabled key, a foreign or bad ciphertext, auth and server failures", async () => {
    const cases: [string, number, KmsErrorCode][] = [
      ['DisabledException', 400, 'KEY_DISABLED'],
      ['KMSInvalidStateException', 400, 'KEY_DISABLED'],
      ['NotFoundException', 400, 'KEY_NOT_FOUND'],
      ['InvalidCiphertextException', 400, 'CIPHERTEXT_INVALID'],
      ['IncorrectKeyException', 400, 'CIPHERTEXT_INVALID'],
      ['AccessDeniedException', 400, 'KMS_AUTH_FAILED'],
      ['UnrecognizedClientException', 400, 'KMS_AUTH_FAILED'],
      ['InvalidSignatureException', 400, 'KMS_AUTH_FAILED'],
      ['KMSInternalException', 500, 'KMS_UNAVAILABLE'],
      ['DependencyTimeoutException', 503, 'KMS_UNAVAILABLE'],
      ['SomethingNewException', 502, 'KMS_UNAVAILABLE'],
    ];
    for (const [error, status, code] of cases) {
      // The key reads as Enabled: the refusal comes from Decrypt itself, as AWS answers.
      const { kms } = stubbedKms((op) => (op === 'Decrypt' ? { error, status } : describeAnswer()));
      const err = await rejectsWith(kms.unwrap(KEY, someWdek()), code);
      assert.equal(err.retryable, code === 'KMS_UNAVAILABLE', `${error} retryable`);
      assert.equal(err.keyId, KEY);
    }
    // In a batch, a ciphertext AWS refuses is that WDEK's error; anything else fails the call.
    let n = 0;
    const mixed = stubbedKms((op) => {
      if (op !== 'Decrypt') return describeAnswer();
      return n++ === 1 ? { error: 'InvalidCiphertextException' } : { body: { KeyId: KEY, Plaintext: randomBytes(32).toString('base64'), EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' } };
    });
    const results = await mixed.kms.unwrapBatch(KEY, [someWdek(), someWdek(), someWdek()]);
    assert.deepEqual(results.map((r) => (r instanceof KmsError ? r.code : r.keyVersion)), [1, 'CIPHERTEXT_INVALID', 1]);
    const failing = stubbedKms((op) => (op === 'Decrypt' ? { error: 'AccessDeniedException' } : describeAnswer()));
    await rejectsWith(failing.kms.unwrapBatch(KEY, [someWdek(), someWdek()]), 'KMS_AUTH_FAILED');
    // A key in another state than Enabled, as DescribeKey reports it.
    const pending = stubbedKms(() => describeAnswer('PendingDeletion'));
    assert.match((await rejectsWith(pending.kms.unwrap(KEY, someWdek()), 'KEY_DISABLED')).message, /PendingDeletion/);
  });

  it('maps a KMS that does not answer to KMS_UNAVAILABLE and missing credentials to KMS_AUTH_FAILED', async () => {
    const port = await freePort(); // nothing listens there
    const closed = AwsKms.create({ region: REGION, endpoint: `http://127.0.0.1:${port}`, maxAttempts: 1 });
    const saved = { ...process.env };
    try {
      Object.assign(process.env, { AWS_ACCESS_KEY_ID: 'x', AWS_SECRET_ACCESS_KEY: 'x' });
      const err = await rejectsWith(closed.getKeyMetadata(KEY), 'KMS_UNAVAILABLE');
      assert.match(err.message, /ECONNREFUSED/);
      // No credentials anywhere in the default chain (no env, no files, no instance role).
      for (const name of Object.keys(process.env)) if (name.startsWith('AWS_')) delete process.env[name];
      Object.assign(process.env, { AWS_EC2_METADATA_DISABLED: 'true', AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/credentials', AWS_CONFIG_FILE: '/nonexistent/config' });
      const nobody = AwsKms.create({ region: REGION, endpoint: `http://127.0.0.1:${port}`, maxAttempts: 1 });
      try {
        const none = await rejectsWith(nobody.getKeyMetadata(KEY), 'KMS_AUTH_FAILED');
        assert.match(none.message, /CredentialsProviderError/);
        assert.equal(none.retryable, false);
      } finally {
        nobody.close();
      }
    } finally {
      closed.close();
      for (const name of Object.keys(process.env)) if (!(name in saved)) delete process.env[name];
      Object.assign(process.env, saved);
    }
  });

  it('sends a policy of N months as RotationPeriodInDays N×30 and reads the period back', async () => {
    let status: Record<string, unknown> = { KeyRotationEnabled: false };
    const { kms, requests } = stubbedKms((op, input) => {
      if (op === 'EnableKeyRotation') status = { KeyRotationEnabled: true, KeyId: KEY, RotationPeriodInDays: input.RotationPeriodInDays, NextRotationDate: CREATED + 180 * 86_400 };
      if (op === 'DisableKeyRotation') status = { KeyRotationEnabled: false, KeyId: KEY };
      if (op === 'GetKeyRotationStatus') return { body: status };
      if (op === 'DescribeKey') return describeAnswer();
      if (op === 'ListKeyRotations') return rotationsAnswer(0);
      if (op === 'ListResourceTags') return { body: { Tags: [{ TagKey: 'keyops:name', TagValue: 'k' }], Truncated: false } };
      return {};
    });
    assert.deepEqual((await kms.setRotationPolicy(KEY, { intervalMonths: 6 })).rotationPolicy, { intervalMonths: 6 });
    assert.deepEqual(requests.find((r) => r.op === 'EnableKeyRotation')?.input, { KeyId: KEY, RotationPeriodInDays: 180 });
    assert.deepEqual((await kms.setRotationPolicy(KEY, { intervalMonths: 12 })).rotationPolicy, { intervalMonths: 12 });
    assert.equal(requests.filter((r) => r.op === 'EnableKeyRotation').at(-1)?.input.RotationPeriodInDays, 360);
    // A period set outside keyops (AWS's default 365 days) reads as the nearest whole month.
    status = { KeyRotationEnabled: true, KeyId: KEY, RotationPeriodInDays: 365 };
    assert.deepEqual((await kms.getKeyMetadata(KEY)).rotationPolicy, { intervalMonths: 12 });
    assert.equal((await kms.setRotationPolicy(KEY, undefined)).rotationPolicy, undefined);
    const before = requests.length;
    await rejectsWith(kms.setRotationPolicy(KEY, { intervalMonths: 1 }), 'INVALID_INPUT');
    assert.equal(requests.length, before, 'refused before any request');
  });

  it('waits for an on-demand rotation AWS completes in the background, and a retry meanwhile does not rotate again', async () => {
    // AWS: RotateKeyOnDemand returns at once; GetKeyRotationStatus shows OnDemandRotationStartDate
    // until the rotation completes and ListKeyRotations lists it.
    let rotations = 0;
    let pendingPolls = 0;
    let tag: string | undefined;
    const startedAt = CREATED + 10 * 86_400;
    const { kms, requests } = stubbedKms(
      (op, input) => {
        switch (op) {
          case 'DescribeKey':
            return describeAnswer();
          case 'ListResourceTags':
            return { body: { Tags: tag ? [{ TagKey: 'keyops:rotation', TagValue: tag }] : [], Truncated: false } };
          case 'TagResource':
            tag = (input.Tags as { TagValue: string }[])[0]!.TagValue;
            return {};
          case 'RotateKeyOnDemand':
            pendingPolls = 3;
            return { body: { KeyId: KEY } };
          case 'GetKeyRotationStatus':
            return { body: { KeyRotationEnabled: false, KeyId: KEY, ...(pendingPolls > 0 ? { OnDemandRotationStartDate: startedAt } : {}) } };
          case 'ListKeyRotations':
            if (pendingPolls > 0 && --pendingPolls === 0) rotations++;
            return rotationsAnswer(rotations);
          default:
            throw new Error(`unexpected ${op}`);
        }
      },
      { rotationPollMs: 10, rotationWaitMs: 5_000 },
    );
    assert.deepEqual(await kms.rotateKey(KEY, 'rewrap/k/v2'), { version: 2, rotated: true });
    assert.equal(tag, 'v2 rewrap/k/v2', 'the request was claimed before the rotation was asked for');
    assert.equal(requests.filter((r) => r.op === 'RotateKeyOnDemand').length, 1);
    assert.deepEqual(await kms.rotateKey(KEY, 'rewrap/k/v2'), { version: 2, rotated: false });
    assert.equal((await kms.getKeyMetadata(KEY)).versions[1]?.requestId, 'rewrap/k/v2');

    // A retry while AWS is still rotating waits for that rotation instead of asking again.
    tag = 'v3 rewrap/k/v3';
    pendingPolls = 2;
    assert.deepEqual(await kms.rotateKey(KEY, 'rewrap/k/v3'), { version: 3, rotated: false });
    assert.equal(requests.filter((r) => r.op === 'RotateKeyOnDemand').length, 1, 'no second RotateKeyOnDemand');
    // Someone else's rotation in progress: refused, not doubled.
    pendingPolls = 1000;
    await rejectsWith(kms.rotateKey(KEY, 'rewrap/k/v4'), 'KEY_ROTATION_NOT_PERMITTED');

    // A rotation AWS does not finish within the wait fails retryably; the claim stays for the retry.
    const slow = stubbedKms(
      (op, input) => {
        if (op === 'TagResource') tag = (input.Tags as { TagValue: string }[])[0]!.TagValue;
        if (op === 'ListResourceTags') return { body: { Tags: [], Truncated: false } };
        if (op === 'DescribeKey') return describeAnswer();
        if (op === 'ListKeyRotations') return rotationsAnswer(0);
        if (op === 'GetKeyRotationStatus') return { body: { KeyRotationEnabled: false } };
        return { body: { KeyId: KEY } };
      },
      { rotationPollMs: 10, rotationWaitMs: 50 },
    );
    const late = await rejectsWith(slow.kms.rotateKey(KEY, 'slow'), 'KMS_UNAVAILABLE');
    assert.equal(late.retryable, true);
    assert.equal(tag, 'v2 slow');
  });

  it('refuses inline secrets and reports every bad option as field: problem', () => {
    assert.throws(() => parseAwsKmsOptions({ region: REGION, secretAccessKey: 'AKIA...' }), (e: unknown) => e instanceof KmsError && /secretAccessKey: secrets are never given inline/.test(e.message));
    assert.throws(() => parseAwsKmsOptions({ region: REGION, credentials: {} }), /credentials: secrets are never given inline/);
    assert.throws(
      () => parseAwsKmsOptions({ region: 'Europe', endpoint: 'ftp://x', concurrency: 0 }),
      (e: unknown) => e instanceof KmsError && e.code === 'INVALID_INPUT' && /region: must be an AWS region/.test(e.message) && /endpoint: must be an http\(s\) URL/.test(e.message) && /concurrency:/.test(e.message),
    );
    assert.deepEqual(parseAwsKmsOptions({ region: REGION, endpoint: 'https://vpce-1.kms.eu-west-1.vpce.amazonaws.com', profile: 'prod' }).profile, 'prod');
    // What cannot be recognised as AWS's or the network's passes through untouched (a bug is a bug).
    const bug = new TypeError('x is not a function');
    assert.equal(toKmsError(bug, 'Decrypt', KEY), bug);
  });
});

// -----------------------------------------------------------------------------------------------

describe('rotateRootKey on an AWS KMS key (moto server mode)', () => {
  const suite = useSuiteFixture('aws-kms');
  let moto: Moto;
  let kms: AwsKms;
  before(async () => {
    useEmulatorCredentials();
    moto = await startMoto();
    kms = AwsKms.create({ region: REGION, endpoint: moto.endpoint });
  });
  after(async () => {
    kms?.close();
    await moto?.stop();
  });

  it('rotates the key on demand, rewraps 300 registered WDEKs to version 2 and verifies every one', async () => {
    const count = 300;
    const { keyId } = await kms.createKey({ name: 'e2e root key' });
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'wdeks.sqlite'));
    const wrapped = await wrapMany(kms, keyId, count);
    const deks = new Map<string, Buffer>();
    const originals = new Map<string, Buffer>();
    registry.registerMany(
      wrapped.map((w, i) => {
        const id = `db/aws/dek-${String(i).padStart(6, '0')}`;
        deks.set(id, w.dek);
        originals.set(id, w.wdek);
        return { id, keyId, keyVersion: w.keyVersion, wdek: w.wdek, owner: 'test' };
      }),
    );
    const taskQueue = uniqueTaskQueue('aws-kms-rotate');
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
    const meta = await kms.getKeyMetadata(keyId);
    assert.equal(meta.currentVersion, 2);
    assert.equal(meta.versions[1]?.requestId, rewrapWorkflowId(keyId, 2), 'the rotation is recorded as this run’s');
    assert.equal(registry.getRewrappedVersion(keyId), 2);

    const records = registry.list(keyId, {}, 1_000_000);
    assert.equal(records.length, count);
    assert.ok(records.every((r) => r.keyVersion === 2 && decodeAwsWdek(r.wdek).version === 2));
    const fresh = await kms.unwrapBatch(keyId, records.map((r) => r.wdek));
    const old = await kms.unwrapBatch(keyId, records.map((r) => originals.get(r.id)!));
    records.forEach((r, i) => {
      const f = fresh[i] as UnwrapResult;
      const o = old[i] as UnwrapResult;
      assert.ok(!(f instanceof KmsError) && f.keyVersion === 2 && f.dek.equals(deks.get(r.id)!), `${r.id} unwraps under v2 to its DEK`);
      assert.ok(!(o instanceof KmsError) && o.keyVersion === 1 && o.dek.equals(deks.get(r.id)!), `the v1 copy of ${r.id} still unwraps`);
    });
    process.stdout.write(`# moto: rotateRootKey rewrapped and verified ${count} WDEKs in ${seconds} s\n`);
    await suite.client.workflow.getHandle(keyEntityWorkflowId(keyId)).terminate('test finished');
    registry.close();
  });
});
