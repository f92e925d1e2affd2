import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { chmodSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { type Payload, defaultPayloadConverter } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import pino from 'pino';
import { type Page, chromium } from 'playwright-core';
import { LocalKms } from '../activities/kms/local-kms';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { createCodecServer } from '../workers/codec-server';
import { AesGcmPayloadCodec, ENCRYPTED_ENCODING, METADATA_KEY_ID, PayloadCodecError, payloadKeyId } from '../workers/payload-codec';
import { PayloadKeyError, loadPayloadCodec } from '../workers/payload-keys';
import { listBackups } from '../workflows';
import { TASK_QUEUE } from '../workflows/task-queue';
import { ROOT, freePort, keyops, runToEnd } from './helpers/child-process';
import { DEV_SCRIPT, useDevStack } from './helpers/dev-stack';
import { localActivities } from './helpers/local-activities';
import { createTestWorker, temporalCliPath, testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

const EventType = temporal.api.enums.v1.EventType;
const text = (bytes: Uint8Array | null | undefined) => Buffer.from(bytes ?? []).toString();

/** Every form a test key could take in a message or a log line. */
function keyForms(key: Buffer): string[] {
  return [key.toString('hex'), key.toString('base64'), key.toString('base64url'), JSON.stringify(key), [...key].join(',')];
}

function assertNoKeyIn(message: string, ...keys: Buffer[]): void {
  for (const key of keys) for (const form of keyForms(key)) assert.ok(!message.includes(form), `key material in: ${message}`);
}

function writeKeyFile(path: string, content: string | Buffer, mode = 0o600): string {
  writeFileSync(path, content, { mode });
  chmodSync(path, mode); // whatever the umask did
  return path;
}

/** A workflow's raw history, as the server stores it: read by a client that has no codec. */
async function rawHistory(client: Client, workflowId: string): Promise<temporal.api.history.v1.History> {
  return temporal.api.history.v1.History.create(await client.workflow.getHandle(workflowId).fetchHistory());
}

function assertEncryptedAtRest(history: temporal.api.history.v1.History, plaintext: string, keyId: string): void {
  const started = history.events.find((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED);
  const [input] = started?.workflowExecutionStartedEventAttributes?.input?.payloads ?? [];
  assert.ok(input, 'the started event has an input payload');
  assert.equal(text(input.metadata?.encoding), ENCRYPTED_ENCODING);
  assert.equal(text(input.metadata?.[METADATA_KEY_ID]), keyId);
  assert.ok(!Buffer.from(input.data ?? []).includes(plaintext), 'the stored input holds no plaintext');
  // Nor anywhere else: activity inputs and results, summaries, the workflow result.
  const all = Buffer.from(temporal.api.history.v1.History.encode(history).finish());
  assert.ok(!all.includes(plaintext), `the stored history holds ${plaintext} in the clear`);
}

/** Waits until the page, or one of its frames, shows `pattern` in its text. */
async function shows(page: Page, pattern: RegExp, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const frame of page.frames()) {
      const shown = await frame.locator('body').innerText({ timeout: 1000 }).catch(() => '');
      if (pattern.test(shown.replace(/\s+/g, ' '))) return;
    }
    if (Date.now() > deadline) throw new Error(`the Web UI never showed ${String(pattern)}`);
    await page.waitForTimeout(500);
  }
}

describe('payload codec', () => {
  const payload = (value: unknown): Payload => defaultPayloadConverter.toPayload(value);
  const k1 = randomBytes(32);
  const k2 = randomBytes(32);

  it('round-trips a payload and stores no plaintext, its encoding or its metadata', async () => {
    const codec = new AesGcmPayloadCodec([k1]);
    const original = payload({ databaseId: 'secret-db-name' });
    const [encoded] = await codec.encode([original]);
    assert.equal(text(encoded!.metadata!.encoding), ENCRYPTED_ENCODING);
    assert.equal(text(encoded!.metadata![METADATA_KEY_ID]), codec.currentKeyId);
    assert.deepEqual(Object.keys(encoded!.metadata!).sort(), ['encoding', METADATA_KEY_ID].sort());
    const data = Buffer.from(encoded!.data!);
    assert.ok(!data.includes('secret-db-name') && !data.includes('json/plain'));
    const [decoded] = await codec.decode([encoded!]);
    assert.deepEqual(defaultPayloadConverter.fromPayload(decoded!), { databaseId: 'secret-db-name' });
    assert.equal(text(decoded!.metadata!.encoding), 'json/plain');
    // A fresh IV each time: equal inputs do not give equal ciphertexts.
    const [again] = await codec.encode([original]);
    assert.notDeepEqual(Buffer.from(again!.data!), data);
    // What was never encrypted (a history from before encryption was on) passes through.
    assert.deepEqual(await codec.decode([original]), [original]);
  });

  it('rotates: the current key encrypts, an older key listed after it still decrypts', async () => {
    const old = new AesGcmPayloadCodec([k1]);
    const [written] = await old.encode([payload('written before the rotation')]);
    const rotated = new AesGcmPayloadCodec([k2, k1]);
    assert.equal(rotated.currentKeyId, payloadKeyId(k2));
    assert.deepEqual(rotated.keyIds, [payloadKeyId(k2), payloadKeyId(k1)]);
    assert.equal(defaultPayloadConverter.fromPayload((await rotated.decode([written!]))[0]!), 'written before the rotation');
    const [fresh] = await rotated.encode([payload('after')]);
    assert.equal(text(fresh!.metadata![METADATA_KEY_ID]), payloadKeyId(k2));
    // The old codec cannot read what the new key wrote.
    await assert.rejects(old.decode([fresh!]), PayloadCodecError);
  });

  it('refuses a tampered payload, and one moved under another key id', async () => {
    const codec = new AesGcmPayloadCodec([k1, k2]);
    const [encoded] = await codec.encode([payload({ databaseId: 'x' })]);
    const flipped = Buffer.from(encoded!.data!);
    flipped[20]! ^= 0x01;
    await assert.rejects(codec.decode([{ ...encoded!, data: flipped }]), /fails authentication: it was altered/);
    const moved = { ...encoded!, metadata: { ...encoded!.metadata, [METADATA_KEY_ID]: Buffer.from(payloadKeyId(k2)) } };
    await assert.rejects(codec.decode([moved]), /fails authentication/);
    await assert.rejects(codec.decode([{ ...encoded!, data: flipped.subarray(0, 10) }]), /truncated/);
  });

  it('names an unknown key id, and never shows key bytes', async () => {
    const [encoded] = await new AesGcmPayloadCodec([k1]).encode([payload('x')]);
    const err = await new AesGcmPayloadCodec([k2]).decode([encoded!]).catch((e: unknown) => e);
    assert.ok(err instanceof PayloadCodecError);
    assert.match(err.message, new RegExp(`encrypted with key "${payloadKeyId(k1)}", which is not among the keys of KEYOPS_PAYLOAD_KEY_FILE \\(${payloadKeyId(k2)}\\)`));
    assertNoKeyIn(err.message, k1, k2);
    // Nor does the codec itself, printed or serialized by mistake.
    const codec = new AesGcmPayloadCodec([k1]);
    const { inspect } = await import('node:util');
    assertNoKeyIn(inspect(codec, { depth: 5 }) + JSON.stringify(codec), k1);
  });
});

describe('KEYOPS_PAYLOAD_KEY_FILE', () => {
  const suite = useSuiteFixture('payload-keys');
  const env = (value: string) => ({ KEYOPS_PAYLOAD_KEY_FILE: value });

  it('is off when unset or empty', () => {
    assert.equal(loadPayloadCodec({}), undefined);
    assert.equal(loadPayloadCodec(env('')), undefined);
  });

  it('takes raw or base64 keys, the first to encrypt; a key id follows the key, not the file name', () => {
    const key = randomBytes(32);
    const raw = writeKeyFile(join(suite.dir, 'raw.key'), key);
    const b64 = writeKeyFile(join(suite.dir, 'b64.key'), `${key.toString('base64')}\n`);
    const older = randomBytes(32);
    const old = writeKeyFile(join(suite.dir, 'old.key'), older.toString('base64'), 0o400);
    assert.equal(loadPayloadCodec(env(raw))!.currentKeyId, payloadKeyId(key));
    assert.equal(loadPayloadCodec(env(b64))!.currentKeyId, payloadKeyId(key));
    assert.deepEqual(loadPayloadCodec(env(`${b64}:${old}`))!.keyIds, [payloadKeyId(key), payloadKeyId(older)]);
  });

  it('refuses, naming the variable and the file and never the key: a readable mode, a wrong length, text, a missing file, an empty entry', () => {
    const key = randomBytes(32);
    const refuse = (value: string, pattern: RegExp) => {
      const err = (() => {
        try {
          loadPayloadCodec(env(value));
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      assert.ok(err instanceof PayloadKeyError, `${value} was accepted`);
      assert.match(err.message, pattern);
      assertNoKeyIn(err.message, key);
      return err.message;
    };
    const open = writeKeyFile(join(suite.dir, 'open.key'), key.toString('base64'), 0o644);
    refuse(open, new RegExp(`^KEYOPS_PAYLOAD_KEY_FILE: ${open} has mode 0644: others can read it; run chmod 600`));
    const group = writeKeyFile(join(suite.dir, 'group.key'), key, 0o640);
    refuse(group, /has mode 0640/);
    const short = writeKeyFile(join(suite.dir, 'short.key'), key.subarray(0, 31).toString('base64'));
    refuse(short, new RegExp(`KEYOPS_PAYLOAD_KEY_FILE: ${short} must hold exactly 32 bytes, raw or base64-encoded \\(it holds 44 bytes`));
    const long = writeKeyFile(join(suite.dir, 'long.key'), Buffer.concat([key, key]));
    refuse(long, /must hold exactly 32 bytes/);
    const typed = writeKeyFile(join(suite.dir, 'typed.key'), 'correct horse battery staple 123');
    refuse(typed, /holds 32 printable characters, not 32 random bytes/);
    refuse(join(suite.dir, 'missing.key'), /missing\.key cannot be read \(ENOENT\)/);
    refuse(suite.dir, /is not a regular file/);
    const good = writeKeyFile(join(suite.dir, 'good.key'), key);
    refuse(`${good}::${good}`, /^KEYOPS_PAYLOAD_KEY_FILE=".*": an empty entry/);
  });
});

describe('codec server', () => {
  const key = randomBytes(32);
  const codec = new AesGcmPayloadCodec([key]);
  const uiOrigin = 'http://127.0.0.1:8233';
  let base = '';
  const server = createCodecServer({ codec, allowedOrigins: [uiOrigin], logger: pino({ level: 'silent' }) });
  before(async () => {
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => server.close());

  const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-namespace': 'default', ...headers }, body: JSON.stringify(body) });
  const asJson = (p: Payload) => ({
    metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
    data: Buffer.from(p.data ?? []).toString('base64'),
  });

  it('decodes and encodes proto3-JSON payloads under any path prefix, as the Web UI and the temporal CLI call it', async () => {
    const [encrypted] = await codec.encode([defaultPayloadConverter.toPayload({ databaseId: 'orders' })]);
    const decoded = await post('/default/decode', { payloads: [asJson(encrypted!)] }, { origin: uiOrigin });
    assert.equal(decoded.status, 200);
    assert.equal(decoded.headers.get('access-control-allow-origin'), uiOrigin);
    const { payloads } = (await decoded.json()) as { payloads: { metadata: Record<string, string>; data: string }[] };
    assert.equal(Buffer.from(payloads[0]!.metadata.encoding!, 'base64').toString(), 'json/plain');
    assert.deepEqual(JSON.parse(Buffer.from(payloads[0]!.data, 'base64').toString()), { databaseId: 'orders' });

    const encoded = await post('/encode', { payloads });
    assert.equal(encoded.status, 200);
    const body = (await encoded.json()) as { payloads: { metadata: Record<string, string>; data: string }[] };
    assert.equal(Buffer.from(body.payloads[0]!.metadata[METADATA_KEY_ID]!, 'base64').toString(), codec.currentKeyId);
    const [back] = await codec.decode([
      { metadata: Object.fromEntries(Object.entries(body.payloads[0]!.metadata).map(([k, v]) => [k, Buffer.from(v, 'base64')])), data: Buffer.from(body.payloads[0]!.data, 'base64') },
    ]);
    assert.deepEqual(defaultPayloadConverter.fromPayload(back!), { databaseId: 'orders' });
  });

  it("answers the UI's CORS preflight, and refuses other origins, other methods and paths, and bad bodies", async () => {
    const preflight = await fetch(`${base}/decode`, {
      method: 'OPTIONS',
      headers: { origin: uiOrigin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type,x-namespace' },
    });
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers.get('access-control-allow-origin'), uiOrigin);
    assert.match(preflight.headers.get('access-control-allow-headers') ?? '', /x-namespace/);
    assert.match(preflight.headers.get('access-control-allow-methods') ?? '', /POST/);

    const evil = await post('/decode', { payloads: [] }, { origin: 'http://evil.example' });
    assert.equal(evil.status, 403);
    assert.equal(evil.headers.get('access-control-allow-origin'), null);
    assert.equal((await fetch(`${base}/decode`)).status, 405);
    assert.equal((await post('/metrics', { payloads: [] })).status, 404);
    assert.equal((await fetch(`${base}/decode`, { method: 'POST', body: '{not json' })).status, 400);
    assert.equal((await post('/decode', { payload: [] })).status, 400);

    const [foreign] = await new AesGcmPayloadCodec([randomBytes(32)]).encode([defaultPayloadConverter.toPayload('x')]);
    const unknown = await post('/decode', { payloads: [asJson(foreign!)] });
    assert.equal(unknown.status, 400);
    const message = await unknown.text();
    assert.match(message, /not among the keys of KEYOPS_PAYLOAD_KEY_FILE/);
    assertNoKeyIn(message, key);
  });
});

describe('payload encryption with a real Temporal server', () => {
  const suite = useSuiteFixture('payload-codec');

  it('stores the workflow input encrypted; the worker, a client with the codec, and the temporal CLI through the codec server read it', async () => {
    const firstKey = randomBytes(32);
    const codec = new AesGcmPayloadCodec([firstKey]);
    const kms = LocalKms.open({ path: join(suite.dir, 'kms', 'keys.sqlite'), masterSecret: randomBytes(32) });
    const registry = SqliteWdekRegistry.open(join(suite.dir, 'registry', 'wdeks.sqlite'));
    const taskQueue = uniqueTaskQueue('payload-codec');
    const worker = await createTestWorker(suite.env, {
      taskQueue,
      activities: localActivities({ dataDir: suite.dir, kms, registry }).activities,
      dataConverter: { payloadCodecs: [codec] },
    });
    const client = new Client({ connection: suite.env.connection, namespace: 'default', dataConverter: { payloadCodecs: [codec] } });
    const databaseId = `codec-probe-${randomUUID().slice(0, 8)}`;
    const workflowId = `payload-codec-test/${randomUUID()}`;
    const result = await worker.runUntil(client.workflow.execute(listBackups, { taskQueue, workflowId, args: [{ databaseId }] }));
    assert.deepEqual(result, [], 'the worker decoded the input and the client the result');
    assertEncryptedAtRest(await rawHistory(suite.client, workflowId), databaseId, codec.currentKeyId);
    // After a rotation of the codec key, the stored result still reads with the old key listed second.
    const rotated = new Client({ connection: suite.env.connection, namespace: 'default', dataConverter: { payloadCodecs: [new AesGcmPayloadCodec([randomBytes(32), firstKey])] } });
    assert.deepEqual(await rotated.workflow.getHandle(workflowId).result(), []);

    // The temporal CLI reads it through the codec server (--codec-endpoint), as the Web UI does.
    const server = createCodecServer({ codec, allowedOrigins: [], logger: pino({ level: 'silent' }) });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    try {
      const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      // The started event's input as `temporal workflow show -o json` prints it (proto3 JSON).
      const shownInput = async (extra: string[]) => {
        const shown = await runToEnd(temporalCliPath(), ['workflow', 'show', '--address', testServerAddress(), '-w', workflowId, '-o', 'json', ...extra]);
        assert.equal(shown.code, 0, shown.stderr);
        const events = (JSON.parse(shown.stdout) as { events: { workflowExecutionStartedEventAttributes?: { input: { payloads: { metadata: { encoding: string }; data: string }[] } } }[] }).events;
        const [input] = events[0]!.workflowExecutionStartedEventAttributes!.input.payloads;
        return { encoding: Buffer.from(input!.metadata.encoding, 'base64').toString(), data: Buffer.from(input!.data, 'base64').toString() };
      };
      assert.deepEqual(await shownInput(['--codec-endpoint', endpoint]), { encoding: 'json/plain', data: JSON.stringify({ databaseId }) });
      const raw = await shownInput([]);
      assert.equal(raw.encoding, ENCRYPTED_ENCODING);
      assert.ok(!raw.data.includes(databaseId));
    } finally {
      server.close();
    }
  });
});

describe('payload encryption in ./temporal-dev.sh and the Web UI', () => {
  const stack = useDevStack('payload-codec-ui');
  const suite = useSuiteFixture('payload-codec-ui');

  it('starts a codec server, the worker and CLI agree on the key, and the Web UI in chromium shows the decoded input', async () => {
    const keyDir = join(suite.dir, 'keys');
    mkdirSync(keyDir, { mode: 0o700 });
    const key = randomBytes(32);
    const keyFile = writeKeyFile(join(keyDir, 'payload.key'), `${key.toString('base64')}\n`);
    const codecPort = await freePort();
    const env = { ...stack.env, KEYOPS_PAYLOAD_KEY_FILE: keyFile, KEYOPS_CODEC_PORT: String(codecPort), TEMPORAL_ADDRESS: `127.0.0.1:${stack.ports.grpc}` };
    // A key file others can read stops the start before the Temporal server is started.
    const open = writeKeyFile(join(keyDir, 'open.key'), randomBytes(32), 0o644);
    const refused = await runToEnd(DEV_SCRIPT, ['up', '-d'], { env: { ...env, KEYOPS_PAYLOAD_KEY_FILE: open }, timeoutMs: 240_000 });
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, /the codec server exited during start-up/);
    assert.match(refused.stderr, new RegExp(`KEYOPS_PAYLOAD_KEY_FILE: ${open} has mode 0644`));
    assert.doesNotMatch(refused.stderr, /starting the Temporal dev server/);

    const up = await runToEnd(DEV_SCRIPT, ['up', '-d'], { env, timeoutMs: 240_000 });
    assert.equal(up.code, 0, up.stderr);
    const codecUrl = `http://127.0.0.1:${codecPort}`;
    assert.match(up.stderr, new RegExp(`Codec server +${codecUrl} \\(payloads encrypted`));
    const status = await runToEnd(DEV_SCRIPT, ['status'], { env });
    assert.match(status.stdout, new RegExp(`codec server +running, pid \\d+, ${codecUrl}`));

    // The CLI encrypts what it sends and decrypts what the worker answers; without the key it
    // cannot read the worker's answer.
    const databaseId = `codec-ui-${randomUUID().slice(0, 8)}`;
    const listed = await keyops(['backup', 'list', '--database', databaseId, '--json'], env);
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual(JSON.parse(listed.stdout), []);
    const keyless = await keyops(['backup', 'list', '--database', databaseId], { ...env, KEYOPS_PAYLOAD_KEY_FILE: '' });
    assert.equal(keyless.code, 2, keyless.stderr);
    assert.match(keyless.stderr, /the worker encrypts payloads and this keyops has no key to read them\nhint: set KEYOPS_PAYLOAD_KEY_FILE/);

    const codec = loadPayloadCodec({ KEYOPS_PAYLOAD_KEY_FILE: keyFile })!;
    const connection = await Connection.connect({ address: env.TEMPORAL_ADDRESS });
    try {
      const client = new Client({ connection, namespace: 'default', dataConverter: { payloadCodecs: [codec] } });
      const workflowId = `payload-codec-ui/${randomUUID()}`;
      assert.deepEqual(await client.workflow.execute(listBackups, { taskQueue: TASK_QUEUE, workflowId, args: [{ databaseId }] }), []);
      const plain = new Client({ connection, namespace: 'default' });
      assertEncryptedAtRest(await rawHistory(plain, workflowId), databaseId, codec.currentKeyId);

      const executablePath = execFileSync(join(ROOT, 'test', 'browser', 'chromium-path.sh'), { encoding: 'utf8' }).trim();
      const browser = await chromium.launch({ executablePath, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
      const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
      const decodeCalls: string[] = [];
      page.on('requestfinished', (req) => {
        if (req.url().startsWith(`${codecUrl}/decode`) && req.method() === 'POST') decodeCalls.push(req.url());
      });
      try {
        await page.goto(`http://127.0.0.1:${stack.ports.ui}/namespaces/default/workflows/${encodeURIComponent(workflowId)}`);
        // The input as the workflow received it: only the codec server can have produced it.
        await shows(page, new RegExp(`"databaseId": ?"${databaseId}"`));
        assert.ok(decodeCalls.length > 0, 'the Web UI decoded through the codec server');
      } finally {
        const artifacts = join(ROOT, '.cache', 'test-artifacts');
        mkdirSync(artifacts, { recursive: true });
        await page.screenshot({ path: join(artifacts, 'payload-codec-ui.png'), fullPage: true });
        await browser.close();
      }
    } finally {
      await connection.close();
    }
    // The codec server, the worker and the Temporal server logged all of it, and no key.
    const logs = readdirSync(join(stack.dataDir, 'logs')).map((f) => readFileSync(join(stack.dataDir, 'logs', f), 'utf8'));
    assert.ok(logs.some((l) => l.includes('codec server started')));
    assertNoKeyIn(logs.join('\n'), key);
  });
});
