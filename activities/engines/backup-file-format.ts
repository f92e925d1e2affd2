/**
 * The encrypted backup file (format 4; formats 1 to 3 are still read):
 *
 *   "KOBK" | format (1 byte) | header length (u32 BE) | header (JSON, UTF-8) | chunks
 *   chunk: ciphertext length (u32 BE) | IV (12) | tag (16) | ciphertext
 *
 * Each chunk is AES-256-GCM under the backup key, with SHA-256(magic..header) || chunk index
 * (u64 BE) || final flag as additional data: the header cannot be edited, chunks cannot be
 * reordered, and a file cut after any chunk fails because its last chunk is not marked final.
 * The header carries everything a restore needs except access to the KMS: the DEK's WDEK and,
 * from format 2, the backup key's WDEK, both under the database's root key (id and version).
 * Losing the worker's registry or catalog therefore never makes a backup unreadable; format 1
 * files name only the backup key's hash and need the registry (or an imported key export).
 *
 * The integrity value the catalog records (`sha256`):
 * - formats 1 to 3: the SHA-256 of the whole file, in hex;
 * - format 4: `tags-sha256:<hex>`, the SHA-256 of the header's digest followed by every chunk's
 *   GCM tag in order. A tag authenticates its chunk's every byte (with the header, index and
 *   final flag as additional data) under the backup key, so once each chunk has decrypted, the
 *   tags stand for the whole file: the value costs 16 bytes of hashing per 4 MiB chunk instead
 *   of hashing every byte, which without SHA instructions took twice the CPU of AES-GCM itself.
 *   It cannot be checked without the backup key: only a restore (which decrypts) proves a file.
 *   And it is keyed: whoever can unwrap the backup key could forge a chunk that keeps its tag
 *   (GCM's tag is no collision-resistant hash), which a whole-file SHA-256 would have caught.
 * Formats 2 (a file of known size) and 3 (a stream) became one: a format 4 header has
 * `plainBytes` when the size was known, and a stream's file ends at its final chunk.
 */
import { type Hash, createCipheriv, createHash, randomBytes } from 'node:crypto';
import { type FileHandle, open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { z } from 'zod';
import type { BackupDescription } from './database-engine';
import { EngineError } from './engine-error';
import { ChunkAuthenticationError, type GcmOpener, gcmOpener } from './gcm-open-threads';
import { Sha256Thread } from './sha256-thread';

const MAGIC = Buffer.from('KOBK', 'ascii');
const FORMAT = 4;
/** Before format 4, a stream of unknown length (a server's own backup tool) had format 3: no `plainBytes`. */
const STREAM_FORMAT = 3;
/** From this format on, the integrity value is the hash of the chunk tags. */
const TAGS_FORMAT = 4;
const READABLE_FORMATS: ReadonlySet<number> = new Set([1, 2, 3, 4]);
/** The prefix of a format 4 integrity value; older values are a bare hex whole-file SHA-256. */
export const TAGS_INTEGRITY = 'tags-sha256:';
const PREFIX = MAGIC.length + 1 + 4;
const IV = 12;
const TAG = 16;
const CHUNK_HEAD = 4 + IV + TAG;
const MAX_HEADER = 64 * 1024;
/** Large enough that per-chunk costs vanish next to AES and disk; small enough to heartbeat often. */
export const BACKUP_CHUNK_BYTES = 4 * 1024 * 1024;

export const backupHeaderSchema = z.object({
  databaseId: z.string().min(1),
  createdAt: z.string().min(1),
  /** Root key and version wrapping `wdek`, the database DEK as it was at backup time. */
  keyId: z.string().min(1),
  keyVersion: z.number().int().positive(),
  wdek: z.string().min(1),
  backupKeyHash: z.string().regex(/^[0-9a-f]{64}$/),
  /** Format 2: the backup key, wrapped under the root key (a retired version still unwraps). */
  backupKey: z.object({ keyId: z.string().min(1), keyVersion: z.number().int().positive(), wdek: z.string().min(1) }).optional(),
  /** Format 2: the catalog entry this file is, so the catalog can be rebuilt from files alone. */
  backupId: z.string().min(1).optional(),
  night: z.string().regex(/^\d{4}-\d{2}-\d{2}$/).optional(),
  /** Absent in a stream's file (format 3): its last chunk, marked final, is where it ends. */
  plainBytes: z.number().int().nonnegative().optional(),
  /**
   * Keys the backed-up data stays encrypted with inside the file, besides keyops' own: a MariaDB
   * backup holds pages under these KV versions of MariaDB's key, which a restore needs.
   */
  engineKeys: z.object({ store: z.string().min(1), keyId: z.number().int().positive(), oldestVersion: z.number().int().positive(), latestVersion: z.number().int().positive() }).optional(),
  // Unauthenticated until the first chunk opens: bounded, so a crafted header cannot make a
  // reader allocate gigabytes before anything is checked.
  chunkBytes: z.number().int().positive().max(64 * 1024 * 1024),
});
export type BackupHeader = z.infer<typeof backupHeaderSchema>;
/** What a writer supplies: format 2 requires the fields format 1 lacked. */
export type NewBackupHeader = Omit<BackupHeader, 'plainBytes' | 'chunkBytes' | 'backupKey' | 'backupId' | 'night' | 'engineKeys'> &
  Required<Pick<BackupHeader, 'backupKey' | 'backupId' | 'night'>>;

const invalid = (path: string, why: string) => new EngineError('BACKUP_INVALID', `backup ${path} is not valid: ${why}`);

function chunkAad(headerDigest: Buffer, index: number, final: boolean): Buffer {
  const aad = Buffer.alloc(32 + 8 + 1);
  headerDigest.copy(aad, 0);
  aad.writeBigUInt64BE(BigInt(index), 32);
  aad[40] = final ? 1 : 0;
  return aad;
}

/**
 * Marks a promise as handled now and returns it: one that rejects while the loop is busy
 * elsewhere (a write failing on a full disk) must fail the backup when it is awaited, not end
 * the worker process as an unhandled rejection first.
 */
function pending<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
}

/** Makes a rename durable: the directory entry is flushed, not only the file. */
export async function syncDirectory(path: string): Promise<void> {
  const dir = await open(dirname(path), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/** Reads exactly `length` bytes at `position`, or fewer only at the end of the file. */
async function readAt(file: FileHandle, buffer: Buffer, length: number, position: number): Promise<number> {
  let read = 0;
  while (read < length) {
    const { bytesRead } = await file.read(buffer, read, length - read, position + read);
    if (bytesRead === 0) break;
    read += bytesRead;
  }
  return read;
}

/** The next plaintext chunk of a backup, and whether it is the last. */
type NextChunk = (index: number) => Promise<{ data: Buffer; final: boolean }>;

/**
 * Encrypts `plainBytes` bytes of `source` (read through `read`) into a new backup at `path`.
 * Writes a partial file beside it and renames it into place only once it is complete and synced.
 */
export async function writeBackupFile(options: {
  path: string;
  header: NewBackupHeader;
  plainBytes: number;
  read: (buffer: Buffer, length: number, position: number) => Promise<number>;
  key: Buffer;
  progress?: (done: number, total: number) => void;
  /** Older formats only to prove that files written before format 4 still read (1 lacks the backup key). */
  format?: 1 | 2 | 4;
}): Promise<{ bytes: number; sha256: string }> {
  const format = options.format ?? FORMAT;
  const { backupKey, backupId, night, ...v1 } = options.header;
  const header: BackupHeader = { ...(format === 1 ? v1 : { ...v1, backupKey, backupId, night }), plainBytes: options.plainBytes, chunkBytes: BACKUP_CHUNK_BYTES };
  // Two buffers: the next chunk is read into one while the other is encrypted.
  const plain = [Buffer.allocUnsafeSlow(BACKUP_CHUNK_BYTES), Buffer.allocUnsafeSlow(BACKUP_CHUNK_BYTES)];
  const next: NextChunk = async (index) => {
    const position = index * BACKUP_CHUNK_BYTES;
    const want = Math.min(BACKUP_CHUNK_BYTES, options.plainBytes - position);
    const got = want > 0 ? await options.read(plain[index % 2]!, want, position) : 0;
    if (got !== want) throw new Error(`the database file ended at ${position + got} bytes, expected ${options.plainBytes}`);
    return { data: plain[index % 2]!.subarray(0, got), final: position + got === options.plainBytes };
  };
  const written = await writeChunks({ path: options.path, format, header, key: options.key, next, ...(options.progress ? { progress: (done) => options.progress!(done, options.plainBytes) } : {}) });
  return { bytes: written.bytes, sha256: written.sha256 };
}

/**
 * Encrypts a stream of unknown length (a server's backup tool writing to a pipe) into a new
 * backup at `path` (format 3). The source's iterator throwing, at any point including its end
 * (the tool exited non-zero after its last byte), removes the partial file: nothing carries the
 * final name unless the whole stream arrived and its producer said it succeeded.
 */
export async function writeBackupStream(options: {
  path: string;
  header: NewBackupHeader & Pick<BackupHeader, 'engineKeys'>;
  source: AsyncIterable<Buffer>;
  key: Buffer;
  progress?: (done: number) => void;
  /** 3 only to prove that streams written before format 4 still read. */
  format?: 3 | 4;
}): Promise<{ bytes: number; sha256: string; plainBytes: number }> {
  const header: BackupHeader = { ...options.header, chunkBytes: BACKUP_CHUNK_BYTES };
  const it = options.source[Symbol.asyncIterator]();
  let carry: Buffer[] = [];
  let carried = 0;
  let ended = false;
  const next: NextChunk = async () => {
    // One byte past a chunk tells whether another follows: only the last one is marked final.
    while (!ended && carried <= BACKUP_CHUNK_BYTES) {
      const r = await it.next();
      if (r.done) ended = true;
      else {
        carry.push(r.value);
        carried += r.value.length;
      }
    }
    const all = carry.length === 1 ? carry[0]! : Buffer.concat(carry, carried);
    const data = all.subarray(0, BACKUP_CHUNK_BYTES);
    const rest = all.subarray(data.length);
    carry = rest.length > 0 ? [rest] : [];
    carried = rest.length;
    return { data, final: ended && carried === 0 };
  };
  try {
    return await writeChunks({ path: options.path, format: options.format ?? FORMAT, header, key: options.key, next, ...(options.progress ? { progress: options.progress } : {}) });
  } finally {
    // A failed write leaves the producer waiting on a full pipe: let it go.
    if (!ended) await it.return?.().catch(() => undefined);
  }
}

/** The file itself: header, then every chunk sealed with the header's digest, its index and the final flag. */
async function writeChunks(options: { path: string; format: number; header: BackupHeader; key: Buffer; next: NextChunk; progress?: (done: number) => void }): Promise<{ bytes: number; sha256: string; plainBytes: number }> {
  // A header the reader would refuse must never be written: the file could not be restored.
  const checked = backupHeaderSchema.safeParse(options.header);
  if (!checked.success) throw new EngineError('INVALID_CONFIGURATION', `backup ${options.path}: its header is malformed (${checked.error.issues[0]?.path.join('.') ?? '?'}); nothing was written`);
  const json = Buffer.from(JSON.stringify(options.header), 'utf8');
  const prefix = Buffer.alloc(PREFIX);
  MAGIC.copy(prefix, 0);
  prefix[4] = options.format;
  prefix.writeUInt32BE(json.length, 5);
  const headerDigest = createHash('sha256').update(prefix).update(json).digest();
  const partial = `${options.path}.partial-${randomBytes(4).toString('hex')}`;
  const out = await open(partial, 'wx', 0o600);
  const integrity = new Integrity(options.format, headerDigest);
  // Three things overlap: the next chunk's read and the writes (libuv threads), AES-GCM (this
  // thread) and SHA-256 (its own thread, fed each chunk once its write is done). A background
  // fdatasync every SYNC_EVERY bytes keeps the final one short.
  const inFlight: { done: Promise<unknown>; parts?: Buffer[] }[] = [];
  const settleOldest = async () => {
    const oldest = inFlight.shift()!;
    await oldest.done;
    if (oldest.parts) await integrity.wholeFile?.update(oldest.parts);
  };
  let syncing: Promise<void> | undefined;
  let unsynced = 0;
  let bytes = 0;
  const write = async (parts: Buffer[]) => {
    const position = bytes;
    const length = parts.reduce((n, p) => n + p.length, 0);
    bytes += length;
    unsynced += length;
    inFlight.push({ done: pending(writeFully(out, parts, position, length)), parts });
    while (inFlight.length > MAX_IN_FLIGHT) await settleOldest();
    if (unsynced >= SYNC_EVERY && !syncing) {
      unsynced = 0;
      syncing = pending(out.datasync().finally(() => (syncing = undefined)));
      inFlight.push({ done: syncing });
    }
  };
  let next: Promise<{ data: Buffer; final: boolean } | undefined> = Promise.resolve(undefined);
  try {
    await write([Buffer.concat([prefix, json])]);
    next = pending(options.next(0));
    let done = 0;
    for (let index = 0; ; index++) {
      const { data, final } = (await next)!;
      done += data.length;
      next = final ? Promise.resolve(undefined) : pending(options.next(index + 1));
      const iv = randomBytes(IV);
      const cipher = createCipheriv('aes-256-gcm', options.key, iv);
      cipher.setAAD(chunkAad(headerDigest, index, final));
      const ct = cipher.update(data);
      cipher.final(); // GCM adds no bytes at the end
      const head = Buffer.alloc(CHUNK_HEAD);
      head.writeUInt32BE(ct.length, 0);
      iv.copy(head, 4);
      const tag = cipher.getAuthTag();
      tag.copy(head, 4 + IV);
      integrity.tags?.update(tag);
      await write([head, ct]);
      options.progress?.(done);
      if (final) break;
    }
    while (inFlight.length > 0) await settleOldest();
    await out.sync();
    await out.close();
    const sha256 = await integrity.value();
    await rename(partial, options.path);
    await syncDirectory(options.path);
    return { bytes, sha256, plainBytes: done };
  } catch (err) {
    await next.catch(() => undefined);
    await Promise.allSettled(inFlight.map((w) => w.done));
    await integrity.close();
    await out.close().catch(() => undefined);
    await rm(partial, { force: true });
    throw err;
  }
}

/**
 * A file's integrity value as its format defines it: the hash of its chunk tags from format 4,
 * of its every byte before (on a thread of its own). Exactly one of `tags`, `wholeFile` is set.
 */
class Integrity {
  readonly tags: Hash | undefined;
  readonly wholeFile: Sha256Thread | undefined;

  constructor(format: number, headerDigest: Buffer) {
    if (format >= TAGS_FORMAT) this.tags = createHash('sha256').update(headerDigest);
    else this.wholeFile = new Sha256Thread();
  }

  async value(): Promise<string> {
    return this.tags ? `${TAGS_INTEGRITY}${this.tags.digest('hex')}` : this.wholeFile!.digest();
  }

  async close(): Promise<void> {
    await this.wholeFile?.close();
  }
}

const MAX_IN_FLIGHT = 4;
/** Chunks being opened at once in a restore: enough to keep every thread busy while one is written. */
const MAX_OPENING = 8;
const SYNC_EVERY = 64 * 1024 * 1024;

/**
 * Syncs a file being written every SYNC_EVERY bytes, so that its last fsync finds little left to
 * write, and holds the writer back while it does, as the backup's write queue does: a restore
 * of 1 GiB whose writes ran on during the syncs took 2.8 s here, held back 1.7 s.
 */
export class BackgroundSync {
  private unsynced = 0;
  private syncing: Promise<void> | undefined;

  constructor(private readonly file: FileHandle) {}

  /**
   * Counts bytes written; when enough are pending, starts a datasync and resolves once it is
   * done (the writes already in flight go on meanwhile).
   */
  async wrote(bytes: number): Promise<void> {
    this.unsynced += bytes;
    if (this.unsynced < SYNC_EVERY || this.syncing) return;
    this.unsynced = 0;
    this.syncing = pending(this.file.datasync().finally(() => (this.syncing = undefined)));
    await this.syncing;
  }

  /** The final fsync, after the background one (whose failure fails it). */
  async finish(): Promise<void> {
    await this.syncing;
    await this.file.sync();
  }

  /** For a failed write: lets a background sync end before the file is closed. */
  async settled(): Promise<void> {
    await this.syncing?.catch(() => undefined);
  }
}

async function writeFully(file: FileHandle, parts: Buffer[], position: number, length: number): Promise<void> {
  let written = (await file.writev(parts, position)).bytesWritten;
  if (written === length) return;
  // A short write (rare): finish it piece by piece.
  const rest = Buffer.concat(parts).subarray(written);
  while (written < length) written += (await file.write(rest, written - (length - rest.length), length - written, position + written)).bytesWritten;
}

/** What a header says, as the engine port describes a backup file: ids, versions, hashes. */
export function describeHeader(header: BackupHeader): BackupDescription {
  return {
    databaseId: header.databaseId,
    backupId: header.backupId,
    night: header.night,
    createdAt: header.createdAt,
    keyId: header.keyId,
    keyVersion: header.keyVersion,
    backupKeyHash: header.backupKeyHash,
    backupKeyId: header.backupKey?.keyId,
    backupKeyVersion: header.backupKey?.keyVersion,
    plainBytes: header.plainBytes,
    ...(header.engineKeys ? { engineKeys: { keyId: header.engineKeys.keyId, oldestVersion: header.engineKeys.oldestVersion, latestVersion: header.engineKeys.latestVersion } } : {}),
  };
}

/** Reads and checks the header alone (no key needed): what the file says it holds. */
export async function readBackupHeader(path: string): Promise<BackupHeader> {
  const file = await openBackup(path);
  try {
    return (await readHeader(file, path)).header;
  } finally {
    await file.close();
  }
}

/** Whether the file starts as keyops' backup files do (false for a missing file or another engine's image). */
export async function isKeyopsBackupFile(path: string): Promise<boolean> {
  const file = await open(path, 'r').catch(() => undefined);
  if (!file) return false;
  try {
    const magic = Buffer.alloc(MAGIC.length);
    return (await readAt(file, magic, MAGIC.length, 0)) === MAGIC.length && magic.equals(MAGIC);
  } finally {
    await file.close();
  }
}

async function openBackup(path: string): Promise<FileHandle> {
  try {
    return await open(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new EngineError('BACKUP_INVALID', `backup ${path} does not exist`);
    throw err;
  }
}

async function readHeader(file: FileHandle, path: string) {
  const prefix = Buffer.alloc(PREFIX);
  if ((await readAt(file, prefix, PREFIX, 0)) < PREFIX || !prefix.subarray(0, 4).equals(MAGIC)) throw invalid(path, 'not a keyops backup file');
  const format = prefix[4]!;
  if (!READABLE_FORMATS.has(format)) throw invalid(path, `unknown backup format ${format}`);
  const length = prefix.readUInt32BE(5);
  if (length > MAX_HEADER) throw invalid(path, 'header too large');
  const json = Buffer.alloc(length);
  if ((await readAt(file, json, length, PREFIX)) < length) throw invalid(path, 'the file ends inside its header');
  let parsed: unknown;
  try {
    parsed = JSON.parse(json.toString('utf8'));
  } catch {
    throw invalid(path, 'the header is not JSON');
  }
  const header = backupHeaderSchema.safeParse(parsed);
  if (!header.success) throw invalid(path, `the header is malformed (${header.error.issues[0]?.path.join('.') ?? '?'})`);
  if (format >= 2 && (!header.data.backupKey || !header.data.backupId || !header.data.night)) throw invalid(path, `its format ${format} header lacks the backup key or backup id`);
  if (format < STREAM_FORMAT && header.data.plainBytes === undefined) throw invalid(path, `its format ${format} header lacks plainBytes`);
  if (format === STREAM_FORMAT && header.data.plainBytes !== undefined) throw invalid(path, `its format ${format} header must not have plainBytes`);
  return { header: header.data, format, prefix, json, offset: PREFIX + length };
}

/**
 * Decrypts every chunk, handing the plaintext to `write` in order, and computes the file's
 * integrity value on the way (one read; see the top of this file), checked against
 * `expectedSha256` when the catalog recorded one. Without it the file still proves itself:
 * every chunk is authenticated with the header as additional data, and the last one must be
 * marked final. Any altered, missing or reordered byte fails with BACKUP_INVALID naming the
 * file; callers must discard what `write` received when it throws.
 */
export async function readBackupFile(options: {
  path: string;
  expectedSha256?: string | undefined;
  /** The backup key, fresh for this read: it is zeroed once the file is read. */
  keyFor: (header: BackupHeader) => Promise<Buffer>;
  write: (data: Buffer, position: number) => Promise<void>;
  progress?: (done: number, total: number) => void;
}): Promise<{ header: BackupHeader; sha256: string }> {
  const { path } = options;
  let key: Buffer | undefined;
  const file = await openBackup(path);
  let integrity: Integrity | undefined;
  let opener: GcmOpener | undefined;
  // Plaintext writes stay in flight (bounded) while the next chunk is read and decrypted; a
  // whole-file checksum (before format 4) runs on its own thread. Every chunk is authenticated
  // before any of it is written.
  const writes: Promise<void>[] = [];
  type Chunk = { head: Buffer; ct: Buffer };
  let next: Promise<Chunk | undefined> = Promise.resolve(undefined);
  try {
    const { size } = await file.stat();
    const { header, format, prefix, json, offset: start } = await readHeader(file, path);
    const headerDigest = createHash('sha256').update(prefix).update(json).digest();
    integrity = new Integrity(format, headerDigest);
    await integrity.wholeFile?.update([prefix, json]); // hands them over: not to be read again here
    key = await options.keyFor(header);
    const readChunk = async (index: number, at: number): Promise<Chunk> => {
      const head = Buffer.alloc(CHUNK_HEAD);
      if ((await readAt(file, head, CHUNK_HEAD, at)) < CHUNK_HEAD) throw invalid(path, `it ends before chunk ${index}`);
      const length = head.readUInt32BE(0);
      if (length > header.chunkBytes) throw invalid(path, `chunk ${index} claims ${length} bytes`);
      const ct = Buffer.allocUnsafeSlow(length);
      if ((await readAt(file, ct, length, at + CHUNK_HEAD)) < length) throw invalid(path, `it ends inside chunk ${index}`);
      return { head, ct };
    };
    // Format 4 chunks are opened on threads, several at a time, and written in order as they
    // come back. Before it, the whole-file checksum's thread takes each chunk's bytes over, so
    // they are opened here first.
    opener = gcmOpener(key, integrity.wholeFile ? 0 : size);
    const opening: { index: number; position: number; plain: Promise<Buffer> }[] = [];
    const total = header.plainBytes ?? size;
    const writeOldest = async () => {
      const { index, position, plain: opened } = opening.shift()!;
      let plain: Buffer;
      try {
        plain = await opened;
      } catch (err) {
        if (!(err instanceof ChunkAuthenticationError)) throw err;
        throw invalid(path, `chunk ${index} fails authentication (altered, truncated, or not made with backup key ${header.backupKeyHash.slice(0, 12)}…)`);
      }
      writes.push(pending(options.write(plain, position)));
      if (writes.length > MAX_IN_FLIGHT) await writes.shift();
      options.progress?.(position + plain.length, total);
    };
    let offset = start;
    let done = 0;
    next = pending(readChunk(0, offset));
    for (let index = 0; ; index++) {
      const chunk: Chunk | undefined = await next;
      if (!chunk) break;
      // Its bytes are handed over below (to a thread that opens them, or to the checksum's): their
      // length is taken first, as it reads 0 afterwards.
      const { head, ct } = chunk;
      const length = ct.length;
      offset += CHUNK_HEAD + length;
      // A stream's file (no plainBytes) ends where its final chunk does; cut short, the last chunk
      // left was not sealed as final and fails.
      const final = header.plainBytes === undefined ? offset === size : done + length === header.plainBytes;
      next = final ? Promise.resolve(undefined) : pending(readChunk(index + 1, offset));
      const tag = head.subarray(4 + IV);
      integrity.tags?.update(tag);
      opening.push({ index, position: done, plain: pending(opener.open({ iv: head.subarray(4, 4 + IV), tag, aad: chunkAad(headerDigest, index, final), ct })) });
      await integrity.wholeFile?.update([head, ct]);
      done += length;
      if (opening.length > MAX_OPENING) await writeOldest();
      if (final) break;
    }
    while (opening.length > 0) await writeOldest();
    await Promise.all(writes);
    if (offset !== size) throw invalid(path, 'it has bytes after its final chunk');
    const sha256 = await integrity.value();
    if (options.expectedSha256 !== undefined && sha256 !== options.expectedSha256) {
      throw invalid(path, `its integrity value differs from the one recorded when it was written (${sha256.startsWith(TAGS_INTEGRITY) ? 'the hash of its chunk tags' : 'its SHA-256'})`);
    }
    return { header, sha256 };
  } finally {
    await next.catch(() => undefined);
    await Promise.allSettled(writes);
    await integrity?.close();
    await opener?.close();
    key?.fill(0);
    await file.close();
  }
}
