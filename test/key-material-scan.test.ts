/**
 * The key-material scan that test/run-tests.ts runs over the whole suite (issue 13, section 2)
 * can fail: a known secret written into a history or a log in any of the encodings it claims is
 * found, with its place and encoding; the same documents without it are clean. And the helpers
 * that learn the real secrets read back what the real adapters hold.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { defaultPayloadConverter } from '@temporalio/common';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';
import { SimulatedCryptoUnits } from '../activities/crypto-units/simulated-crypto-units';
import { LocalKms } from '../activities/kms/local-kms';
import { openWdek } from '../activities/kms/wdek-format';
import { SqliteWdekRegistry } from '../activities/wdek-registry/sqlite-wdek-registry';
import { type Finding, type HistoryDump, KeyMaterialScan, SecretIndex, readSecrets } from './helpers/key-material-scan';
import { harvestDataDir, logCapture, rememberSecret } from './helpers/key-material';
import { testEnvVars } from './helpers/test-env-vars';

/** A random key whose base64 and base64url differ (so each can be told apart in a report). */
function keyWithBothAlphabets(): Buffer {
  for (;;) {
    const key = randomBytes(32);
    if (/\+/.test(key.toString('base64')) && /\//.test(key.toString('base64'))) return key;
  }
}

const dek = keyWithBothAlphabets();
const passphrase = 'correct horse battery staple, twice';
const secrets = [
  { label: 'test DEK', bytes: dek },
  { label: 'test passphrase', bytes: Buffer.from(passphrase), text: true },
];

const scanOne = (text: string): Finding[] => new SecretIndex(secrets).scanText(text, 'doc');
const encodings = (text: string) => scanOne(text).map((f) => `${f.secret}: ${f.encoding}`);

/** Base64 of `bytes` preceded by `pad` other bytes: the secret starts mid-group. */
const embedded = (bytes: Buffer, pad: number) => Buffer.concat([randomBytes(pad), bytes, randomBytes(7)]).toString('base64');

describe('key-material scan: finds a known secret in every encoding it claims', () => {
  const cases: [string, string, string][] = [
    ['hex, lowercase', JSON.stringify({ dek: dek.toString('hex') }), 'test DEK: hex (lowercase)'],
    ['hex, uppercase', `dek=${dek.toString('hex').toUpperCase()}`, 'test DEK: hex (uppercase)'],
    ['base64', JSON.stringify({ dek: dek.toString('base64') }), 'test DEK: base64'],
    ['base64url', `?k=${dek.toString('base64url')}`, 'test DEK: base64url'],
    ['Buffer-JSON', JSON.stringify({ material: dek }), 'test DEK: byte list (Buffer-JSON data)'],
    ['a Uint8Array through JSON.stringify', JSON.stringify({ material: new Uint8Array(dek) }), 'test DEK: byte object (JSON of a Uint8Array)'],
    ['an inspected Buffer', `rewrap failed for <Buffer ${dek.toString('hex').match(/../g)!.join(' ')}>`, 'test DEK: hex (separated bytes)'],
    ['an inspected Uint8Array', `Uint8Array(32) [ ${[...dek].join(', ')} ]`, 'test DEK: byte list (Buffer-JSON data)'],
    ['half the key, as hex', `partial ${dek.subarray(8, 24).toString('hex')}`, 'test DEK: hex (lowercase)'],
    ['16 bytes from an odd offset, as base64', dek.subarray(3, 19).toString('base64'), 'test DEK: base64'],
    ['inside a longer blob, base64 at offset 1', embedded(dek, 1), 'test DEK: base64'],
    ['inside a longer blob, base64 at offset 2', embedded(dek, 2), 'test DEK: base64'],
    ['base64 inside base64 (payload data)', JSON.stringify({ data: Buffer.from(JSON.stringify({ dek: dek.toString('base64') })).toString('base64') }), 'test DEK: base64 > base64'],
    ['hex inside base64', Buffer.from(`key ${dek.toString('hex')}`).toString('base64'), 'test DEK: base64 > hex (lowercase)'],
    ['the passphrase as text', `config: KEYOPS_BACKUP_KEY_PASSPHRASE=${passphrase}`, 'test passphrase: raw text'],
    ['the passphrase as base64', Buffer.from(passphrase).toString('base64'), 'test passphrase: base64'],
    ['the passphrase as hex', Buffer.from(passphrase).toString('hex'), 'test passphrase: hex (lowercase)'],
  ];
  for (const [name, text, expected] of cases) {
    it(name, () => assert.ok(encodings(text).includes(expected), `expected "${expected}" in ${JSON.stringify(encodings(text))}`));
  }

  it('reports the place, not the secret', () => {
    const [finding] = scanOne(JSON.stringify({ keyId: 'k1', dek: dek.toString('base64') }));
    assert.ok(finding);
    assert.equal(finding.where, 'doc');
    assert.match(finding.context, /"dek":"$/);
    assert.ok(!finding.context.includes(dek.toString('base64').slice(0, 8)));
  });
});

describe('key-material scan: clean documents stay clean', () => {
  it('other keys, the WDEK, hashes and fragments shorter than a window are not findings', () => {
    const clean = [
      JSON.stringify({ other: randomBytes(32).toString('base64'), hex: randomBytes(32).toString('hex') }),
      // What keyops does put in histories: hashes of keys, key ids, WDEKs (ciphertext).
      JSON.stringify({ backupKeyHash: createHash('sha256').update(dek).digest('hex'), keyId: randomUUID() }),
      // 15 bytes of the key: less than a window, no leak worth the name.
      dek.subarray(0, 15).toString('hex'),
      dek.subarray(1, 16).toString('base64'),
      JSON.stringify({ material: Buffer.alloc(32, 7) }),
      'correct horse b', // part of the passphrase, shorter than a window
    ];
    for (const text of clean) assert.deepEqual(scanOne(text), [], text);
  });

  it('does not look for fill patterns or short values (they would match by chance)', () => {
    const index = new SecretIndex([
      { label: 'zeros', bytes: Buffer.alloc(32) },
      { label: 'short', bytes: Buffer.from('abc') },
    ]);
    assert.deepEqual(index.skipped.map((s) => s.label).sort(), ['short', 'zeros']);
    assert.deepEqual(index.scanText(Buffer.alloc(64).toString('hex'), 'doc'), []);
  });
});

describe('key-material scan: histories and logs', () => {
  /** A real history as `temporal` writes it: the start event's input through the default payload converter. */
  const history = (input: unknown): HistoryDump => {
    const events = [
      {
        eventId: 1,
        eventType: 'EVENT_TYPE_WORKFLOW_EXECUTION_STARTED',
        workflowExecutionStartedEventAttributes: { workflowType: { name: 'nightlyBackup' }, input: { payloads: [defaultPayloadConverter.toPayload(input)] } },
      },
    ];
    const json = JSON.parse(historyToJSON({ events } as unknown as Parameters<typeof historyToJSON>[0])) as { events: unknown[] };
    return { server: 'test server', namespace: 'default', workflowId: 'backup/db1', runId: 'run-1', events: json.events };
  };

  it('finds a DEK in a workflow input (a payload) and names the workflow, run and event', () => {
    const scan = new KeyMaterialScan(new SecretIndex(secrets));
    scan.history(history({ databaseId: 'db1', dek: dek.toString('base64') }));
    scan.history(history({ databaseId: 'db1', dek: dek.toString('hex') }));
    const { findings, histories, events } = scan.report();
    assert.equal(histories, 2);
    assert.equal(events, 2);
    assert.deepEqual(
      findings.map((f) => [f.where, f.encoding]),
      [
        ['test server: workflow backup/db1 run run-1 event 1 EVENT_TYPE_WORKFLOW_EXECUTION_STARTED (namespace default)', 'base64 > base64'],
        ['test server: workflow backup/db1 run run-1 event 1 EVENT_TYPE_WORKFLOW_EXECUTION_STARTED (namespace default)', 'base64 > hex (lowercase)'],
      ],
    );
  });

  it('a history without key material is clean', () => {
    const scan = new KeyMaterialScan(new SecretIndex(secrets));
    scan.history(history({ databaseId: 'db1', wdek: randomBytes(68).toString('base64'), keyHash: createHash('sha256').update(dek).digest('hex') }));
    assert.deepEqual(scan.report().findings, []);
  });

  it("finds a secret in a stopped dev server's database file: raw payload bytes, or encoded in a JSON payload", () => {
    const index = new SecretIndex(secrets);
    const file = Buffer.concat([randomBytes(100), dek, randomBytes(50), Buffer.from(JSON.stringify({ k: dek.toString('base64') })), randomBytes(30)]);
    assert.deepEqual(
      index.scanBytes(file, 'database f').map((f) => [f.where, f.encoding]),
      [
        ['database f at byte 100', 'raw bytes'],
        ['database f', 'base64'],
      ],
    );
    assert.deepEqual(index.scanBytes(randomBytes(4096), 'database g'), []);
  });

  it('finds a secret in a log line and names the file and line', () => {
    const scan = new KeyMaterialScan(new SecretIndex(secrets));
    scan.logText('log worker.stdout.log', `{"msg":"started"}\n{"msg":"unwrapped","dek":${JSON.stringify(dek)}}\n`);
    assert.deepEqual(
      scan.report().findings.map((f) => [f.where, f.encoding]),
      [['log worker.stdout.log:2', 'byte list (Buffer-JSON data)']],
    );
    assert.equal(scan.report().logLines, 2);
  });
});

describe('key-material helpers read back the real secrets', () => {
  let dir: string;
  let scanDir: string;
  const previous = process.env[testEnvVars.secretsDir];
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keyops-key-scan-test-'));
    // This process's secrets go to its own directory, not the suite's: nothing here is a leak.
    scanDir = join(dir, 'scan');
    process.env[testEnvVars.secretsDir] = scanDir;
  });
  after(async () => {
    if (previous === undefined) delete process.env[testEnvVars.secretsDir];
    else process.env[testEnvVars.secretsDir] = previous;
    await rm(dir, { recursive: true, force: true });
  });

  it('a data directory yields its master secret, root keys, DEKs and simulated master keys', async () => {
    const data = join(dir, 'data');
    const masterSecret = randomBytes(32);
    const kms = LocalKms.open({ path: join(data, 'kms', 'keys.sqlite'), masterSecret });
    const registry = SqliteWdekRegistry.open(join(data, 'registry', 'wdeks.sqlite'));
    const { keyId } = await kms.createKey({ name: 'scan-test' });
    const wrapped = await kms.wrap(keyId, randomBytes(32));
    registry.register({ id: 'db/x/dek', keyId, keyVersion: wrapped.keyVersion, wdek: wrapped.wdek, owner: 'test' });
    SimulatedCryptoUnits.create(join(data, 'crypto-units', 'default.sqlite'), { entries: 1 }).close();

    harvestDataDir(data, { masterSecret });
    const found = readSecrets(scanDir);
    const labels = found.map((s) => s.label);
    assert.ok(found.some((s) => s.bytes.equals(masterSecret)), 'master secret');
    assert.ok(found.some((s) => s.bytes.equals(wrapped.dek) && s.label.startsWith('DEK of db/x/dek')), `DEK from the registry: ${labels.join('; ')}`);
    assert.ok(labels.some((l) => l.startsWith(`root key ${keyId} v1`)), 'root key');
    assert.ok(labels.some((l) => l.startsWith('simulated MK of default.sqlite')), 'simulated MK');
    // The root key read back is the real one: it opens the WDEK as the KMS does.
    const root = found.find((s) => s.label.startsWith(`root key ${keyId} v1`))!;
    assert.ok(openWdek(root.bytes, keyId, wrapped.wdek).equals(wrapped.dek));
    registry.close();
    kms.close();
  });

  it('remembered secrets and captured logs are scanned together: a leak in a log is found', () => {
    const leaked = keyWithBothAlphabets();
    rememberSecret('leaked test key', leaked);
    logCapture('scan-test.log')(`line one\nthe key is ${leaked.toString('base64url')}\n`);
    const scan = new KeyMaterialScan(new SecretIndex(readSecrets(scanDir)));
    scan.logDir(scanDir);
    const findings = scan.report().findings.filter((f) => f.secret.startsWith('leaked test key'));
    assert.equal(findings.length, 1);
    assert.match(findings[0]!.where, /scan-test\.log:2$/);
    assert.equal(findings[0]!.encoding, 'base64url');
  });
});
