/**
 * The key-material scan (issue 13, section 2): looks for the real secrets the tests know (DEKs,
 * root-key versions, simulated master keys, KMS master secrets, passphrases; see
 * key-material.ts) in workflow histories and captured logs, in every encoding a leak is likely
 * to take: the raw text, hex (either case, also byte-separated), base64 and base64url (at any
 * alignment), and lists of byte values (Node's Buffer-JSON `{"type":"Buffer","data":[...]}`,
 * `Uint8Array` inspected or JSON-serialized as `{"0":..,"1":..}`). Base64 runs that decode to
 * text (payload data, for one) are scanned again, so a DEK as base64 inside a JSON payload is
 * found too.
 *
 * Not a fixed pattern: every 16-byte window of every secret is indexed (a whole secret when it
 * is shorter), so a leaked half key is found as well as a whole one, and nothing else matches.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Client } from '@temporalio/client';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';

export interface Secret {
  /** What it is and where the test learned it, e.g. "DEK of key 1f0c…, kms.wrap [nightly-backup.test.ts]". */
  label: string;
  bytes: Buffer;
  /** A string secret (a passphrase): also looked for as raw text. */
  text?: boolean;
}

export interface Finding {
  secret: string;
  /** The document: a workflow event, or a log file and line. */
  where: string;
  /** How the secret was written, outermost first, e.g. "base64 > hex (lowercase)". */
  encoding: string;
  /** Up to 60 characters of the document before the encoded run (the field name, usually); never the secret. */
  context: string;
}

/** Long enough that a match is never chance; short enough that half a 32-byte key is found. */
export const WINDOW = 16;
/** Shorter secrets are too easily found by chance (and no real key is this short). */
const MIN_SECRET = 8;
/**
 * Secrets are indexed by 8-byte blocks at every 8th offset (and one at the end): any 15 bytes
 * in a row of a secret hold a whole block, so every 16-byte run is found through one of them,
 * and a hit is then extended byte by byte to see how much of the secret is really there.
 */
const BLOCK = 8;
/** A block of fewer distinct byte values (zero fill, a repeated byte) is not distinctive. */
const MIN_DISTINCT = 5;
const MAX_DEPTH = 3;
/** The first-test bitmap: 2^26 bits (8 MB), a few percent full even with a million blocks. */
const HASH_BITS = 26;
const hashOf = (prefix: number) => Math.imul(prefix, 0x9e3779b1) >>> (32 - HASH_BITS);

interface BlockHit {
  secret: number;
  /** Where in the bytes searched the secret's bytes begin. */
  at: number;
}

class BlockTable {
  /** One bit per hash of a block's first four bytes: most positions end at one bit test. */
  readonly bits = new Uint32Array(2 ** (HASH_BITS - 5));
  /** By a block's first four bytes (big-endian uint32): secret index, offset, secret index, offset, ... */
  readonly blocks = new Map<number, number[]>();
  size = 0;

  add(prefix: number, secret: number, offset: number): void {
    const h = hashOf(prefix);
    this.bits[h >>> 5]! |= 1 << (h & 31);
    const list = this.blocks.get(prefix);
    if (list) list.push(secret, offset);
    else this.blocks.set(prefix, [secret, offset]);
    this.size++;
  }
}

const B64 = new Int8Array(128).fill(-1);
for (let i = 0; i < 64; i++) B64['ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'.charCodeAt(i)] = i;
B64['-'.charCodeAt(0)] = 62;
B64['_'.charCodeAt(0)] = 63;

/** Decodes a run of base64 or base64url characters, starting `offset` characters in. */
function decodeBase64Run(run: string, offset: number): Buffer {
  const out = Buffer.allocUnsafe(Math.floor(((run.length - offset) * 3) / 4));
  let n = 0;
  let acc = 0;
  let bits = 0;
  for (let i = offset; i < run.length; i++) {
    acc = ((acc << 6) | B64[run.charCodeAt(i)]!) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (acc >> bits) & 0xff;
    }
  }
  return out.subarray(0, n);
}

function decodeHexRun(run: string, offset: number): Buffer {
  return Buffer.from(run.slice(offset, offset + ((run.length - offset) & ~1)), 'hex');
}

/** Mostly printable UTF-8: worth scanning again as text. */
function looksLikeText(bytes: Buffer): boolean {
  let printable = 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    if ((b >= 0x20 && b < 0x7f) || b === 0x09 || b === 0x0a || b === 0x0d || b >= 0x80) printable++;
  }
  return printable >= bytes.length * 0.95;
}

function distinctBytes(block: Buffer): number {
  let count = 0;
  for (let j = 0; j < block.length; j++) if (block.indexOf(block[j]!) === j) count++;
  return count;
}

const oneLine = (s: string) => s.replace(/\s+/g, ' ');

export class SecretIndex {
  readonly secrets: Secret[];
  /** Secrets too short or too uniform to look for, with the reason. */
  readonly skipped: { label: string; reason: string }[] = [];
  /** Every secret, for decoded bytes; the text secrets alone, for text as written. */
  private readonly all = new BlockTable();
  private readonly text = new BlockTable();
  /** Bytes run through the block test, over every decoding: for the summary. */
  bytesScanned = 0;

  constructor(secrets: Iterable<Secret>) {
    // One entry per distinct value: the same DEK remembered by two helpers is one secret.
    const unique = new Map<string, Secret>();
    for (const s of secrets) {
      const key = s.bytes.toString('hex');
      const seen = unique.get(key);
      if (!seen) unique.set(key, { ...s });
      else if (s.text) seen.text = true;
    }
    this.secrets = [...unique.values()];
    this.secrets.forEach((secret, index) => {
      const { bytes } = secret;
      if (bytes.length < MIN_SECRET) {
        this.skipped.push({ label: secret.label, reason: `${bytes.length} bytes, too short to be distinctive` });
        return;
      }
      const offsets = new Set<number>();
      for (let offset = 0; offset + BLOCK <= bytes.length; offset += BLOCK) offsets.add(offset);
      offsets.add(bytes.length - BLOCK);
      let indexed = 0;
      for (const offset of offsets) {
        const block = bytes.subarray(offset, offset + BLOCK);
        if (distinctBytes(block) < MIN_DISTINCT) continue;
        const prefix = block.readUInt32BE(0);
        this.all.add(prefix, index, offset);
        if (secret.text) this.text.add(prefix, index, offset);
        indexed++;
      }
      if (indexed === 0) this.skipped.push({ label: secret.label, reason: 'no block with enough distinct bytes (a fill pattern?)' });
    });
  }

  /** Blocks indexed: for the summary. */
  get blockCount(): number {
    return this.all.size;
  }

  /**
   * Every secret in a binary file (a stopped server's database): as raw bytes, and in every
   * encoding of `scanText`, reading the bytes as Latin-1 text.
   */
  scanBytes(bytes: Buffer, where: string): Finding[] {
    const findings = this.findIn(bytes, this.all).map((hit) => ({ secret: this.secrets[hit.secret]!.label, where: `${where} at byte ${hit.at}`, encoding: 'raw bytes', context: '' }));
    return [...findings, ...this.scanText(bytes.toString('latin1'), where)];
  }

  /** Every secret found in `text` (one finding per secret and encoding). */
  scanText(text: string, where: string): Finding[] {
    const found = new Map<string, Finding>();
    if (this.all.size > 0) this.scanLayer(text, where, [], 0, found);
    return [...found.values()];
  }

  private scanLayer(text: string, where: string, path: string[], depth: number, found: Map<string, Finding>): void {
    const report = (bytes: Buffer, encoding: string, at: number, textOnly: boolean) => {
      for (const hit of this.findIn(bytes, textOnly ? this.text : this.all)) {
        const label = this.secrets[hit.secret]!.label;
        const fullEncoding = [...path, encoding].join(' > ');
        const key = `${label}\u0000${fullEncoding}`;
        // For text as written, the context ends where the secret begins.
        const end = textOnly ? Buffer.from(text, 'utf8').subarray(0, hit.at).toString('utf8').length : at;
        if (!found.has(key)) found.set(key, { secret: label, where, encoding: fullEncoding, context: oneLine(text.slice(Math.max(0, end - 60), end)) });
      }
    };

    // 1. As written (passphrases, and any secret that is itself text).
    report(Buffer.from(text, 'utf8'), 'raw text', 0, true);

    // 2. Hex, either case, at both alignments (the run may begin with a stray hex letter).
    for (const m of text.matchAll(new RegExp(`[0-9a-fA-F]{${2 * MIN_SECRET},}`, 'g'))) {
      const run = m[0];
      const kind = /[A-F]/.test(run) ? (/[a-f]/.test(run) ? 'hex (mixed case)' : 'hex (uppercase)') : 'hex (lowercase)';
      for (const offset of [0, 1]) report(decodeHexRun(run, offset), kind, m.index, false);
    }

    // 3. Hex bytes with separators: `<Buffer 0a 1b ...>`, `0a:1b:...`, `0x0a, 0x1b, ...`.
    const separated = new RegExp(`(?:0x)?[0-9a-fA-F]{2}(?:[ :,]\\s*(?:0x)?[0-9a-fA-F]{2}){${MIN_SECRET - 1},}`, 'g');
    for (const m of text.matchAll(separated)) {
      if (!/[ :,]/.test(m[0])) continue;
      report(Buffer.from(m[0].replace(/0x|[\s:,]/g, ''), 'hex'), 'hex (separated bytes)', m.index, false);
    }

    // 4. Base64 and base64url, at every alignment; text inside is scanned again (payload data).
    const minBase64 = Math.ceil((MIN_SECRET * 4) / 3);
    for (const m of text.matchAll(new RegExp(`[A-Za-z0-9+/_-]{${minBase64},}`, 'g'))) {
      const run = m[0];
      const kind = /[-_]/.test(run) ? 'base64url' : 'base64';
      for (let offset = 0; offset < 4; offset++) {
        const bytes = decodeBase64Run(run, offset);
        report(bytes, kind, m.index, false);
        if (offset === 0 && depth < MAX_DEPTH && bytes.length >= MIN_SECRET && looksLikeText(bytes)) {
          this.scanLayer(bytes.toString('utf8'), where, [...path, kind], depth + 1, found);
        }
      }
    }

    // 5. Lists of byte values: Buffer-JSON's data array, an inspected Uint8Array.
    for (const m of text.matchAll(new RegExp(`\\d{1,3}(?:\\s*,\\s*\\d{1,3}){${MIN_SECRET - 1},}`, 'g'))) {
      const values = m[0].split(',').map((v) => Number(v.trim()));
      if (values.every((v) => v <= 255)) report(Buffer.from(values), 'byte list (Buffer-JSON data)', m.index, false);
    }

    // 6. A Uint8Array through JSON.stringify: {"0":12,"1":34,...}.
    for (const m of text.matchAll(new RegExp(`"\\d+"\\s*:\\s*\\d{1,3}(?:\\s*,\\s*"\\d+"\\s*:\\s*\\d{1,3}){${MIN_SECRET - 1},}`, 'g'))) {
      const values = [...m[0].matchAll(/:\s*(\d{1,3})/g)].map((v) => Number(v[1]));
      if (values.every((v) => v <= 255)) report(Buffer.from(values), 'byte object (JSON of a Uint8Array)', m.index, false);
    }
  }

  /** Every secret of which `bytes` hold WINDOW bytes in a row (all of it, if shorter), with where. */
  private findIn(bytes: Buffer, table: BlockTable): BlockHit[] {
    this.bytesScanned += bytes.length;
    const hits: BlockHit[] = [];
    if (table.size === 0 || bytes.length < MIN_SECRET) return hits;
    const { bits, blocks } = table;
    const n = bytes.length;
    let p = (bytes[0]! << 16) | (bytes[1]! << 8) | bytes[2]!;
    for (let i = 0; i + BLOCK <= n; i++) {
      p = ((p << 8) | bytes[i + 3]!) >>> 0;
      const h = hashOf(p);
      if ((bits[h >>> 5]! & (1 << (h & 31))) !== 0) {
        const candidates = blocks.get(p);
        if (candidates) {
          for (let c = 0; c < candidates.length; c += 2) {
            const secret = candidates[c]!;
            const offset = candidates[c + 1]!;
            const key = this.secrets[secret]!.bytes;
            let right = 0;
            while (i + right < n && offset + right < key.length && bytes[i + right] === key[offset + right]) right++;
            if (right < BLOCK) continue;
            let left = 0;
            while (i - left > 0 && offset - left > 0 && bytes[i - left - 1] === key[offset - left - 1]) left++;
            if (left + right >= Math.min(WINDOW, key.length) && !hits.some((x) => x.secret === secret)) hits.push({ secret, at: i - left });
          }
        }
      }
      p &= 0xffffff;
    }
    return hits;
  }
}

/** Every secret remembered by the test processes: `<dir>/secrets/*.jsonl` (key-material.ts). */
export function readSecrets(dir: string): Secret[] {
  const secrets: Secret[] = [];
  for (const file of listFiles(join(dir, 'secrets'))) {
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      if (!line.trim()) continue;
      let entry: { label: string; hex: string; text?: boolean };
      try {
        entry = JSON.parse(line) as typeof entry;
      } catch {
        continue; // the torn last line of a process killed mid-write
      }
      secrets.push({ label: entry.label, bytes: Buffer.from(entry.hex, 'hex'), ...(entry.text ? { text: true } : {}) });
    }
  }
  return secrets;
}

function listFiles(dir: string): string[] {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  return entries.flatMap((e) => (e.isDirectory() ? listFiles(join(dir, e.name)) : e.isFile() ? [join(dir, e.name)] : [])).sort();
}

/** One workflow run's history, as JSON events (payload data base64, as `temporal` prints it). */
export interface HistoryDump {
  server: string;
  namespace: string;
  workflowId: string;
  runId: string;
  events: unknown[];
}

/**
 * Every workflow run the server knows, in every namespace, including continue-as-new runs,
 * children and the schedules' own workflows, with its full history. A server that cannot list
 * (the time-skipping test server) is walked instead from `knownWorkflowIds`: every run those
 * histories name (children, earlier and later runs, signalled workflows) is fetched in turn.
 */
export async function* serverHistories(
  client: Client,
  server: string,
  options: { knownWorkflowIds?: Iterable<string>; concurrency?: number } = {},
): AsyncGenerator<HistoryDump> {
  let names: string[];
  try {
    const { namespaces } = await client.workflowService.listNamespaces({});
    names = namespaces.map((n) => n.namespaceInfo?.name).filter((n): n is string => !!n && n !== 'temporal-system');
  } catch {
    names = [client.options.namespace]; // the time-skipping test server lists none
  }
  for (const namespace of names) {
    const nsClient = namespace === client.options.namespace ? client : new Client({ connection: client.connection, namespace });
    const fetchOne = async (workflowId: string, runId: string): Promise<HistoryDump> => {
      const history = await nsClient.workflow.getHandle(workflowId, runId).fetchHistory();
      const events = (JSON.parse(historyToJSON(history)) as { events?: unknown[] }).events ?? [];
      return { server, namespace, workflowId, runId, events };
    };
    const runs = new Map<string, { workflowId: string; runId: string }>();
    try {
      for await (const w of nsClient.workflow.list()) runs.set(`${w.workflowId}/${w.runId}`, { workflowId: w.workflowId, runId: w.runId });
    } catch (err) {
      if (!options.knownWorkflowIds) throw err;
      yield* walkHistories(nsClient, [...options.knownWorkflowIds], fetchOne);
      continue;
    }
    // Schedules' workflows are hidden from a plain list; they hold the actions' inputs.
    try {
      for await (const w of nsClient.workflow.list({ query: `TemporalNamespaceDivision = 'TemporalScheduler'` })) {
        runs.set(`${w.workflowId}/${w.runId}`, { workflowId: w.workflowId, runId: w.runId });
      }
    } catch {
      // a server without schedules
    }
    // A few fetches in flight, yielded in order.
    const queue = [...runs.values()];
    const inFlight: Promise<HistoryDump>[] = [];
    while (queue.length > 0 || inFlight.length > 0) {
      while (inFlight.length < (options.concurrency ?? 8) && queue.length > 0) {
        const next = queue.shift()!;
        inFlight.push(fetchOne(next.workflowId, next.runId));
      }
      yield await inFlight.shift()!;
    }
  }
}

/** Every `{workflowId, runId?}` an event mentions (children, continue-as-new, external signals). */
function mentionedRuns(value: unknown, out: { workflowId: string; runId?: string }[]): void {
  if (Array.isArray(value)) for (const v of value) mentionedRuns(v, out);
  else if (value && typeof value === 'object') {
    const o = value as Record<string, unknown>;
    if (typeof o.workflowId === 'string') out.push({ workflowId: o.workflowId, ...(typeof o.runId === 'string' && o.runId ? { runId: o.runId } : {}) });
    for (const [k, v] of Object.entries(o)) {
      if ((k === 'continuedExecutionRunId' || k === 'newExecutionRunId' || k === 'firstExecutionRunId') && typeof v === 'string' && v) out.push({ workflowId: '', runId: v });
      else mentionedRuns(v, out);
    }
  }
}

async function* walkHistories(
  client: Client,
  roots: string[],
  fetchOne: (workflowId: string, runId: string) => Promise<HistoryDump>,
): AsyncGenerator<HistoryDump> {
  const seen = new Set<string>();
  const queue: { workflowId: string; runId?: string }[] = roots.map((workflowId) => ({ workflowId }));
  while (queue.length > 0) {
    const next = queue.shift()!;
    let runId = next.runId;
    try {
      runId ??= (await client.workflow.getHandle(next.workflowId).describe()).runId;
    } catch {
      continue; // never started, or on another server
    }
    const key = `${next.workflowId}/${runId}`;
    if (seen.has(key)) continue;
    seen.add(key);
    let dump: HistoryDump;
    try {
      dump = await fetchOne(next.workflowId, runId);
    } catch {
      continue;
    }
    yield dump;
    const mentioned: { workflowId: string; runId?: string }[] = [];
    mentionedRuns(dump.events, mentioned);
    // A run id alone (continue-as-new) belongs to this workflow; a workflow id alone means its latest run.
    for (const m of mentioned) queue.push({ workflowId: m.workflowId || next.workflowId, ...(m.runId ? { runId: m.runId } : {}) });
  }
}

/** Histories dumped by test processes from servers that did not outlive them (key-material.ts). */
export function* dumpedHistories(dir: string): Generator<HistoryDump> {
  for (const file of listFiles(join(dir, 'histories'))) {
    for (const line of readFileSync(file, 'utf8').split('\n')) if (line.trim()) yield JSON.parse(line) as HistoryDump;
  }
}

export interface ScanReport {
  secrets: number;
  blocks: number;
  skipped: { label: string; reason: string }[];
  histories: number;
  events: number;
  logFiles: number;
  logLines: number;
  rawFiles: number;
  megabytes: number;
  findings: Finding[];
}

export class KeyMaterialScan {
  readonly findings: Finding[] = [];
  histories = 0;
  events = 0;
  logFiles = 0;
  logLines = 0;
  rawFiles = 0;

  constructor(readonly index: SecretIndex) {}

  history(h: HistoryDump): void {
    this.histories++;
    for (const event of h.events) {
      this.events++;
      const e = event as { eventId?: string; eventType?: string };
      const where = `${h.server}: workflow ${h.workflowId} run ${h.runId} event ${e.eventId ?? '?'} ${e.eventType ?? ''} (namespace ${h.namespace})`;
      this.findings.push(...this.index.scanText(JSON.stringify(event), where));
    }
  }

  logText(name: string, text: string): void {
    this.logFiles++;
    text.split('\n').forEach((line, i) => {
      if (!line) return;
      this.logLines++;
      this.findings.push(...this.index.scanText(line, `${name}:${i + 1}`));
    });
  }

  /** A file read as bytes (`<dir>/raw`: the database of a dev stack whose test stopped it). */
  rawFile(name: string, bytes: Buffer): void {
    this.rawFiles++;
    this.findings.push(...this.index.scanBytes(bytes, name));
  }

  /** Every captured log under `<dir>/logs`. */
  logDir(dir: string): void {
    const root = join(dir, 'logs');
    for (const file of listFiles(root)) this.logText(`log ${file.slice(root.length + 1)}`, readFileSync(file, 'utf8'));
  }

  report(): ScanReport {
    return {
      secrets: this.index.secrets.length,
      blocks: this.index.blockCount,
      skipped: this.index.skipped,
      histories: this.histories,
      events: this.events,
      logFiles: this.logFiles,
      logLines: this.logLines,
      rawFiles: this.rawFiles,
      megabytes: this.index.bytesScanned / 1e6,
      findings: this.findings,
    };
  }
}

/** The whole suite: the shared server's histories, the dumped ones, and every captured log. */
export async function scanSuite(dir: string, client: Client): Promise<ScanReport> {
  const scan = new KeyMaterialScan(new SecretIndex(readSecrets(dir)));
  for await (const h of serverHistories(client, 'shared dev server')) scan.history(h);
  for (const h of dumpedHistories(dir)) scan.history(h);
  scan.logDir(dir);
  const raw = join(dir, 'raw');
  for (const file of listFiles(raw)) scan.rawFile(`database ${file.slice(raw.length + 1)}`, readFileSync(file));
  return scan.report();
}

/** The report's text: counts, and every finding with its secret, place and encoding. */
export function formatReport(r: ScanReport, seconds: number): string {
  const lines = [
    `key-material scan: any ${WINDOW} bytes in a row of ${r.secrets} secrets (${r.blocks} indexed blocks), in ${r.histories} histories (${r.events} events)${r.rawFiles ? `, ${r.rawFiles} database file(s) of stopped dev stacks` : ''} and ${r.logLines} log lines of ${r.logFiles} files; ${r.megabytes.toFixed(1)} MB decoded and checked in ${seconds.toFixed(1)}s`,
  ];
  if (r.skipped.length) lines.push(`  ${r.skipped.length} secret(s) not looked for: ${r.skipped.slice(0, 5).map((s) => `${s.label} (${s.reason})`).join('; ')}`);
  if (r.findings.length === 0) {
    lines.push('  no key material found');
    return lines.join('\n');
  }
  lines.push(`  KEY MATERIAL FOUND: ${r.findings.length} finding(s)`);
  for (const f of r.findings.slice(0, 50)) lines.push(`  - ${f.secret}\n      in ${f.where}\n      as ${f.encoding}, after: ${JSON.stringify(f.context)}`);
  if (r.findings.length > 50) lines.push(`  ... and ${r.findings.length - 50} more`);
  return lines.join('\n');
}
