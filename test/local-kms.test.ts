import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3-multiple-ciphers';
import { KmsError, type KmsErrorCode } from '../activities/kms/kms-error';
import { LocalKms, type LocalKmsOptions } from '../activities/kms/local-kms';
import { WDEK_LENGTH, decodeWdek, encodeWdek, openWdek, sealWdek, wdekKeyVersion } from '../activities/kms/wdek-format';
import { ROOT, finish, waitForLine } from './helpers/child-process';
import { type ChildArgs, type ChildReport, SIM_SPEEDUP, sha256 } from './helpers/local-kms-child';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const T0 = Date.parse('2030-01-01T00:00:00.000Z');

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

const isCode = (code: KmsErrorCode) => (err: unknown) => err instanceof KmsError && err.code === code;

/** A clock the test moves by hand. */
function manualClock(startMs = T0) {
  let nowMs = startMs;
  return { now: () => new Date(nowMs), set: (ms: number) => (nowMs = ms), at: () => nowMs };
}

describe('LocalKms (real files, real AES-256-GCM)', () => {
  let dir: string;
  const secret = randomBytes(32);
  const opened: LocalKms[] = [];
  let stores = 0;

  const open = (options: Partial<LocalKmsOptions> = {}) => {
    const kms = LocalKms.open({ path: join(dir, `store-${++stores}`, 'kms.db'), masterSecret: secret, ...options });
    opened.push(kms);
    return kms;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keyops-local-kms-'));
  });
  after(async () => {
    for (const kms of opened) kms.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('wraps and unwraps a generated or given DEK in the documented WDEK layout', async () => {
    const kms = open();
    const key = await kms.createKey({ name: 'orders-db' });
    assert.match(key.keyId, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(key.currentVersion, 1);
    assert.deepEqual(key.versions.map((v) => v.version), [1]);
    assert.equal(key.state, 'active');
    assert.equal(key.lastRotateDate, undefined);
    assert.equal(key.rotationPolicy, undefined);

    const generated = await kms.wrap(key.keyId);
    assert.equal(generated.dek.length, 32);
    assert.equal(generated.keyVersion, 1);
    assert.equal(generated.wdek.length, WDEK_LENGTH);
    assert.equal(wdekKeyVersion(generated.wdek), 1);
    assert.equal(generated.wdek.includes(generated.dek), false, 'the DEK does not appear in the WDEK');
    const back = await kms.unwrap(key.keyId, generated.wdek);
    assert.deepEqual(back, { dek: generated.dek, keyVersion: 1 });

    const mine = randomBytes(32);
    const a = await kms.wrap(key.keyId, mine);
    const b = await kms.wrap(key.keyId, mine);
    assert.notDeepEqual(a.wdek, b.wdek, 'a fresh IV every time');
    assert.deepEqual((await kms.unwrap(key.keyId, a.wdek)).dek, mine);
    assert.deepEqual((await kms.unwrap(key.keyId, new Uint8Array(b.wdek) as Buffer)).dek, mine, 'a plain Uint8Array works too');
    await rejectsWith(kms.wrap(key.keyId, randomBytes(16)), 'INVALID_INPUT');

    const parts = decodeWdek(a.wdek);
    assert.equal(parts.keyVersion, 1);
    assert.deepEqual(encodeWdek(parts), a.wdek);
  });

  it('after a rotation old WDEKs still unwrap, wrap uses the new version, rewrap moves to it', async () => {
    const clock = manualClock();
    const kms = open({ now: clock.now });
    const { keyId } = await kms.createKey({ name: 'rotating' });
    const old = await kms.wrap(keyId);
    const oldCopy = Buffer.from(old.wdek);

    clock.set(T0 + 5 * 60_000);
    assert.deepEqual(await kms.rotateKey(keyId, 'rotate-1'), { version: 2, rotated: true });
    const meta = await kms.getKeyMetadata(keyId);
    assert.equal(meta.currentVersion, 2);
    assert.deepEqual(meta.versions, [
      { version: 1, createdAt: new Date(T0).toISOString() },
      { version: 2, createdAt: new Date(T0 + 5 * 60_000).toISOString(), requestId: 'rotate-1' },
    ]);
    assert.equal(meta.lastRotateDate, new Date(T0 + 5 * 60_000).toISOString());

    assert.deepEqual(await kms.unwrap(keyId, oldCopy), { dek: old.dek, keyVersion: 1 }, 'a retired version still unwraps');
    const fresh = await kms.wrap(keyId);
    assert.equal(fresh.keyVersion, 2);
    assert.equal(wdekKeyVersion(fresh.wdek), 2);

    const moved = await kms.rewrap(keyId, oldCopy);
    assert.equal(moved.keyVersion, 2);
    assert.equal(moved.previousVersion, 1);
    assert.equal(wdekKeyVersion(moved.wdek), 2);
    assert.deepEqual(await kms.unwrap(keyId, moved.wdek), { dek: old.dek, keyVersion: 2 }, 'same DEK');
    assert.deepEqual(await kms.unwrap(keyId, oldCopy), { dek: old.dek, keyVersion: 1 }, 'the old copy still works');
  });

  it('rejects altered, truncated, foreign and unknown-version WDEKs as CIPHERTEXT_INVALID', async () => {
    const kms = open();
    const { keyId } = await kms.createKey({ name: 'tamper' });
    const other = await kms.createKey({ name: 'other' });
    const { wdek, dek } = await kms.wrap(keyId);

    for (let i = 0; i < wdek.length; i++) {
      const flipped = Buffer.from(wdek);
      flipped[i]! ^= 0x01;
      const err = await rejectsWith(kms.unwrap(keyId, flipped), 'CIPHERTEXT_INVALID');
      assert.equal(err.retryable, false);
      assert.ok(!err.message.includes(dek.toString('hex')) && !err.message.includes(dek.toString('base64')));
    }
    await rejectsWith(kms.rewrap(keyId, Buffer.concat([wdek, Buffer.alloc(1)])), 'CIPHERTEXT_INVALID');
    for (const length of [0, 8, wdek.length - 1]) {
      await rejectsWith(kms.unwrap(keyId, wdek.subarray(0, length)), 'CIPHERTEXT_INVALID');
    }
    await rejectsWith(kms.unwrap(other.keyId, wdek), 'CIPHERTEXT_INVALID');
    await rejectsWith(kms.rewrap(other.keyId, wdek), 'CIPHERTEXT_INVALID');

    // A well-formed WDEK naming a version the key does not have; then one relabelled to a version it has.
    const parts = decodeWdek(wdek);
    await rejectsWith(kms.unwrap(keyId, encodeWdek({ ...parts, keyVersion: 7 })), 'CIPHERTEXT_INVALID');
    await kms.rotateKey(keyId, 'r');
    await rejectsWith(kms.unwrap(keyId, encodeWdek({ ...parts, keyVersion: 2 })), 'CIPHERTEXT_INVALID');
    assert.deepEqual((await kms.unwrap(keyId, wdek)).dek, dek, 'the untouched WDEK still unwraps');

    // The AAD binds key id and version even where the root-key material is the same.
    const rootKey = randomBytes(32);
    const sealed = sealWdek(rootKey, keyId, 3, dek);
    assert.deepEqual(openWdek(rootKey, keyId, sealed), dek);
    assert.throws(() => openWdek(rootKey, other.keyId, sealed), isCode('CIPHERTEXT_INVALID'));
    assert.throws(() => openWdek(rootKey, keyId, encodeWdek({ ...decodeWdek(sealed), keyVersion: 4 })), isCode('CIPHERTEXT_INVALID'));
  });

  it('allows one manual rotation per hour, says when the next is allowed, and repeats idempotently', async () => {
    const clock = manualClock();
    const kms = open({ now: clock.now });
    const { keyId } = await kms.createKey({ name: 'hourly' });
    const first = T0 + 10 * 60_000;
    clock.set(first);
    assert.deepEqual(await kms.rotateKey(keyId, 'a'), { version: 2, rotated: true });

    clock.set(first + HOUR - 1000);
    const allowedAt = new Date(first + HOUR).toISOString();
    const err = await rejectsWith(kms.rotateKey(keyId, 'b'), 'KEY_ROTATION_NOT_PERMITTED');
    assert.equal(err.retryAfter, allowedAt);
    assert.equal(err.retryable, false);
    assert.equal(err.keyId, keyId);
    assert.ok(err.message.includes(allowedAt), err.message);
    assert.deepEqual(await kms.rotateKey(keyId, 'a'), { version: 2, rotated: false }, 'a repeat is not blocked by the hour');
    assert.equal((await kms.getKeyMetadata(keyId)).currentVersion, 2);

    clock.set(first + HOUR);
    assert.deepEqual(await kms.rotateKey(keyId, 'b'), { version: 3, rotated: true });
    assert.deepEqual(await kms.rotateKey(keyId, 'b'), { version: 3, rotated: false });
    assert.deepEqual(await kms.rotateKey(keyId, 'a'), { version: 2, rotated: false });
    const meta = await kms.getKeyMetadata(keyId);
    assert.deepEqual(meta.versions.map((v) => v.version), [1, 2, 3]);
    assert.equal(meta.lastRotateDate, allowedAt);
    await rejectsWith(kms.rotateKey(keyId, ''), 'INVALID_INPUT');
    await rejectsWith(kms.rotateKey(keyId, 'policy/9'), 'INVALID_INPUT');
  });

  it('batch calls: a bad WDEK fails alone, a disabled key fails the call, each batch sees rotations by other connections', async () => {
    const clock = manualClock();
    const kms = open({ now: clock.now });
    const { keyId } = await kms.createKey({ name: 'batched' });
    const wrapped = await Promise.all([1, 2, 3].map(() => kms.wrap(keyId)));
    const tampered = Buffer.from(wrapped[1]!.wdek);
    tampered[40]! ^= 0x80;

    // Another connection to the same file (as another worker process would be) rotates the key.
    const other = LocalKms.open({ path: join(dir, `store-${stores}`, 'kms.db'), masterSecret: secret, now: clock.now });
    opened.push(other);
    assert.equal((await kms.unwrapBatch(keyId, [wrapped[0]!.wdek])).length, 1);
    await other.rotateKey(keyId, 'elsewhere');

    const rewrapped = await kms.rewrapBatch(keyId, [wrapped[0]!.wdek, tampered, wrapped[2]!.wdek]);
    assert.ok(rewrapped[1] instanceof KmsError && rewrapped[1].code === 'CIPHERTEXT_INVALID', 'the tampered WDEK fails alone');
    for (const i of [0, 2]) {
      const r = rewrapped[i]!;
      assert.ok(!(r instanceof KmsError), r instanceof KmsError ? r.message : '');
      assert.deepEqual({ keyVersion: r.keyVersion, previousVersion: r.previousVersion }, { keyVersion: 2, previousVersion: 1 }, 'the rotation made elsewhere');
      assert.deepEqual(await other.unwrap(keyId, r.wdek), { dek: wrapped[i]!.dek, keyVersion: 2 });
    }
    const unwrapped = await kms.unwrapBatch(keyId, [tampered, wrapped[2]!.wdek]);
    assert.ok(unwrapped[0] instanceof KmsError && unwrapped[0].code === 'CIPHERTEXT_INVALID');
    assert.deepEqual(unwrapped[1], { dek: wrapped[2]!.dek, keyVersion: 1 });

    await other.disableKey(keyId);
    await rejectsWith(kms.rewrapBatch(keyId, [wrapped[0]!.wdek]), 'KEY_DISABLED');
    await rejectsWith(kms.unwrapBatch(keyId, [wrapped[0]!.wdek]), 'KEY_DISABLED');
    await other.enableKey(keyId);
    await rejectsWith(kms.unwrapBatch(keyId, 'not a list' as unknown as Buffer[]), 'INVALID_INPUT');
  });

  it('a disabled key refuses wrap, unwrap, rewrap and rotate but keeps its metadata; enabling restores it', async () => {
    const kms = open();
    const { keyId } = await kms.createKey({ name: 'suspect' });
    const { wdek, dek } = await kms.wrap(keyId);
    await kms.disableKey(keyId);
    await rejectsWith(kms.wrap(keyId), 'KEY_DISABLED');
    await rejectsWith(kms.unwrap(keyId, wdek), 'KEY_DISABLED');
    await rejectsWith(kms.rewrap(keyId, wdek), 'KEY_DISABLED');
    await rejectsWith(kms.rotateKey(keyId, 'r'), 'KEY_DISABLED');
    const meta = await kms.getKeyMetadata(keyId);
    assert.equal(meta.state, 'disabled');
    assert.equal(meta.currentVersion, 1);

    await kms.enableKey(keyId);
    assert.equal((await kms.getKeyMetadata(keyId)).state, 'active');
    assert.deepEqual((await kms.unwrap(keyId, wdek)).dek, dek);
    assert.deepEqual(await kms.rotateKey(keyId, 'r'), { version: 2, rotated: true });
  });

  it('rotates by policy only after the interval plus the random offset, visibly in metadata', async () => {
    const clock = manualClock();
    const kms = open({ now: clock.now, random: () => 0.5 }); // offset: 12 h
    const { keyId } = await kms.createKey({ name: 'by-policy' });
    for (const bad of [{ intervalMonths: 0 }, { intervalMonths: 13 }, { intervalMonths: 1.5 }, {}]) {
      await rejectsWith(kms.setRotationPolicy(keyId, bad as { intervalMonths: number }), 'INVALID_INPUT');
    }
    const set = await kms.setRotationPolicy(keyId, { intervalMonths: 1 });
    assert.deepEqual(set.rotationPolicy, { intervalMonths: 1 });
    const interval = 30 * DAY;

    clock.set(T0 + interval - HOUR);
    assert.equal((await kms.getKeyMetadata(keyId)).currentVersion, 1, 'not before the interval');
    clock.set(T0 + interval + 12 * HOUR - 1000);
    assert.equal((await kms.wrap(keyId)).keyVersion, 1, 'not before the offset either');
    const rotatedAt = T0 + interval + DAY;
    clock.set(rotatedAt);
    const meta = await kms.getKeyMetadata(keyId);
    assert.equal(meta.currentVersion, 2);
    assert.deepEqual(meta.versions.map((v) => v.version), [1, 2]);
    assert.equal(meta.versions[1]?.createdAt, new Date(rotatedAt).toISOString());
    assert.equal(meta.lastRotateDate, new Date(rotatedAt).toISOString());
    assert.equal((await kms.wrap(keyId)).keyVersion, 2);

    const err = await rejectsWith(kms.rotateKey(keyId, 'manual'), 'KEY_ROTATION_NOT_PERMITTED');
    assert.equal(err.retryAfter, new Date(rotatedAt + HOUR).toISOString(), 'a policy rotation counts for the hourly rule');

    clock.set(rotatedAt + interval + 12 * HOUR - 1000);
    assert.equal((await kms.getKeyMetadata(keyId)).currentVersion, 2, 'the next period counts from the last rotation');
    clock.set(rotatedAt + interval + 12 * HOUR);
    assert.equal((await kms.wrap(keyId)).keyVersion, 3, 'a wrap applies a due policy before wrapping');

    const cleared = await kms.setRotationPolicy(keyId, undefined);
    assert.equal(cleared.rotationPolicy, undefined);
    clock.set(rotatedAt + 10 * interval);
    assert.equal((await kms.getKeyMetadata(keyId)).currentVersion, 3, 'no policy, no rotation');
  });

  it('names a malformed key id, reports an unknown one as KEY_NOT_FOUND, and checks key names', async () => {
    const kms = open();
    for (const bad of ['nope', '', '00000000-0000-0000-0000-000000000000', `${randomUUID()}x`]) {
      const err = await rejectsWith(kms.getKeyMetadata(bad), 'INVALID_INPUT');
      assert.ok(err.message.includes(JSON.stringify(bad)), err.message);
      await rejectsWith(kms.wrap(bad), 'INVALID_INPUT');
    }
    const unknown = randomUUID();
    const wdek = encodeWdek({ keyVersion: 1, iv: Buffer.alloc(12), tag: Buffer.alloc(16), ciphertext: Buffer.alloc(32) });
    await rejectsWith(kms.getKeyMetadata(unknown), 'KEY_NOT_FOUND');
    await rejectsWith(kms.wrap(unknown), 'KEY_NOT_FOUND');
    await rejectsWith(kms.unwrap(unknown, wdek), 'KEY_NOT_FOUND');
    await rejectsWith(kms.rewrap(unknown, wdek), 'KEY_NOT_FOUND');
    await rejectsWith(kms.rotateKey(unknown, 'r'), 'KEY_NOT_FOUND');
    await rejectsWith(kms.setRotationPolicy(unknown, { intervalMonths: 1 }), 'KEY_NOT_FOUND');
    await rejectsWith(kms.disableKey(unknown), 'KEY_NOT_FOUND');
    await rejectsWith(kms.enableKey(unknown), 'KEY_NOT_FOUND');

    for (const name of ['a', 'x'.repeat(91), 'line\nbreak', 'tab\there']) {
      await rejectsWith(kms.createKey({ name }), 'INVALID_INPUT');
    }
    assert.equal((await kms.createKey({ name: 'ok' })).name, 'ok');
    assert.equal((await kms.createKey({ name: 'é'.repeat(90) })).name.length, 90);
  });

  it('refuses a wrong or short master secret at open and keeps keys across reopening', async () => {
    const path = join(dir, 'reopen', 'kms.db');
    const first = LocalKms.open({ path, masterSecret: secret });
    const { keyId } = await first.createKey({ name: 'persistent' });
    const { wdek, dek } = await first.wrap(keyId);
    first.close();

    assert.throws(
      () => LocalKms.open({ path, masterSecret: randomBytes(32) }),
      (err: unknown) => err instanceof KmsError && err.code === 'INVALID_INPUT' && /master secret does not match this key store/.test(err.message),
    );
    assert.throws(() => LocalKms.open({ path, masterSecret: secret.subarray(0, 31) }), isCode('INVALID_INPUT'));
    const again = LocalKms.open({ path, masterSecret: secret });
    opened.push(again);
    assert.deepEqual((await again.unwrap(keyId, wdek)).dek, dek);
    const onDisk = readFileSync(path);
    assert.equal(onDisk.includes(secret), false, 'the master secret is not stored');
  });

  it('creates its directory 0700 and its files 0600', async () => {
    const path = join(dir, 'modes', 'nested', 'kms.db');
    const kms = LocalKms.open({ path, masterSecret: secret });
    opened.push(kms);
    await kms.createKey({ name: 'modes' });
    assert.equal(statSync(join(dir, 'modes', 'nested')).mode & 0o777, 0o700);
    for (const file of [path, `${path}-wal`, `${path}-shm`]) {
      assert.ok(existsSync(file), `${file} exists`);
      assert.equal(statSync(file).mode & 0o777, 0o600, file);
    }
  });

  it('with faultRate 1 every call fails retryably with KMS_UNAVAILABLE and changes nothing', async () => {
    const healthy = open();
    const path = join(dir, `store-${stores}`, 'kms.db');
    const { keyId } = await healthy.createKey({ name: 'faulty' });
    const { wdek } = await healthy.wrap(keyId);
    const untouched = await healthy.getKeyMetadata(keyId);

    const faulty = LocalKms.open({ path, masterSecret: secret, faultRate: 1 });
    opened.push(faulty);
    const calls: Promise<unknown>[] = [
      faulty.createKey({ name: 'never' }),
      faulty.getKeyMetadata(keyId),
      faulty.rotateKey(keyId, 'r'),
      faulty.wrap(keyId),
      faulty.unwrap(keyId, wdek),
      faulty.rewrap(keyId, wdek),
      faulty.setRotationPolicy(keyId, { intervalMonths: 1 }),
      faulty.disableKey(keyId),
      faulty.enableKey(keyId),
    ];
    for (const call of calls) assert.equal((await rejectsWith(call, 'KMS_UNAVAILABLE')).retryable, true);
    assert.deepEqual(await healthy.getKeyMetadata(keyId), untouched);
    assert.deepEqual(await healthy.rotateKey(keyId, 'r'), { version: 2, rotated: true }, 'the faulty rotate left no record');
    const db = new Database(path, { readonly: true });
    try {
      assert.equal(db.prepare('SELECT count(*) FROM root_keys').pluck().get(), 1, 'no key was created');
    } finally {
      db.close();
    }

    // Half the calls fail: a caller that retries gets through.
    const rolls = [0.1, 0.9];
    let n = 0;
    const flaky = LocalKms.open({ path, masterSecret: secret, faultRate: 0.5, random: () => rolls[n++ % 2]! });
    opened.push(flaky);
    await rejectsWith(flaky.wrap(keyId), 'KMS_UNAVAILABLE');
    assert.equal((await flaky.wrap(keyId)).keyVersion, 2);
    assert.throws(() => LocalKms.open({ path, masterSecret: secret, faultRate: 2 }), KmsError);
  });

  it('stays consistent when three processes wrap, rewrap and rotate the same file at once', { timeout: 180_000 }, async () => {
    const path = join(dir, 'shared', 'kms.db');
    const realBaseMs = Date.now();
    // The parent's clock stands still at the base, so its own calls never apply the policy.
    const parent = LocalKms.open({ path, masterSecret: secret, now: () => new Date(T0) });
    opened.push(parent);
    const { keyId } = await parent.createKey({ name: 'contended' });
    await parent.setRotationPolicy(keyId, { intervalMonths: 1 });

    const script = resolve(ROOT, 'test/helpers/local-kms-child.ts');
    const children = ['p1', 'p2', 'p3'].map((name) => {
      // The children's clock starts past the policy's due time (30 days + the 24-hour window):
      // however fast they start, their first call finds the policy overdue and applies it.
      const args: ChildArgs = { path, masterSecretHex: secret.toString('hex'), keyId, name, simBaseMs: T0 + 31 * DAY, realBaseMs, iterations: 1500 };
      const child = spawn(process.execPath, ['--import', 'tsx', script, JSON.stringify(args)], {
        cwd: ROOT,
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      return { child, done: finish(child, 150_000), ready: waitForLine(child, (l) => l === 'ready', 120_000) };
    });
    await Promise.all(children.map((c) => c.ready));
    for (const { child } of children) child.stdin?.end('go\n');
    const results = await Promise.all(children.map((c) => c.done));

    const reports = results.map((r, i) => {
      assert.equal(r.code, 0, `child ${i + 1} failed: ${r.stderr}`);
      const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
      assert.ok(line, `child ${i + 1} printed no report: ${r.stdout}`);
      return JSON.parse(line) as ChildReport;
    });
    for (const report of reports) assert.deepEqual(report.unexpected, [], `${report.name}: only KEY_ROTATION_NOT_PERMITTED is expected`);

    // Versions are contiguous and each has exactly one cause: a request id or the policy.
    const meta = await parent.getKeyMetadata(keyId);
    assert.deepEqual(meta.versions.map((v) => v.version), Array.from({ length: meta.currentVersion }, (_, i) => i + 1));
    const byRequest = new Map<string, number>();
    const claimed = new Set<number>();
    for (const { requestId, version, rotated } of reports.flatMap((r) => r.rotations)) {
      const known = byRequest.get(requestId);
      assert.ok(known === undefined || known === version, `${requestId} maps to one version`);
      byRequest.set(requestId, version);
      if (rotated) {
        assert.ok(!claimed.has(version), `version ${version} was created once`);
        claimed.add(version);
      }
    }
    assert.ok(claimed.size >= 2, `several rotations went through (${claimed.size})`);
    const db = new Database(path, { readonly: true });
    let causes: { request_id: string; version: number }[];
    try {
      causes = db.prepare('SELECT request_id, version FROM rotation_requests WHERE key_id = ? ORDER BY version').all(keyId) as typeof causes;
    } finally {
      db.close();
    }
    assert.deepEqual(causes.map((c) => c.version), Array.from({ length: meta.currentVersion - 1 }, (_, i) => i + 2));
    for (const c of causes) if (!c.request_id.startsWith('policy/')) assert.equal(byRequest.get(c.request_id), c.version);
    const policyVersions = causes.filter((c) => c.request_id.startsWith('policy/')).map((c) => c.version);
    assert.ok(policyVersions.length >= 1, 'the overdue policy rotated the key once the processes started');
    for (const v of policyVersions) {
      const gap = Date.parse(meta.versions[v - 1]!.createdAt) - Date.parse(meta.versions[v - 2]!.createdAt);
      assert.ok(gap >= 30 * DAY - 100 * SIM_SPEEDUP, `policy version ${v} was due (gap ${gap / HOUR} h)`);
    }

    // Every WDEK any process produced unwraps to its DEK.
    const wraps = reports.flatMap((r) => r.wraps);
    assert.ok(wraps.length >= 3 * 1500);
    const versionsSeen = new Set<number>();
    for (const { wdek, dekSha256 } of wraps) {
      const out = await parent.unwrap(keyId, Buffer.from(wdek, 'hex'));
      assert.equal(sha256(out.dek), dekSha256);
      versionsSeen.add(out.keyVersion);
    }
    assert.ok(versionsSeen.size >= 2, 'WDEKs were made under several versions');
  });
});
