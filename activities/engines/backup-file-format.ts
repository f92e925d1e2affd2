/**
 * The encrypted backup file (format 1):
 *
 *   "KOBK" | format (1 byte) | header length (u32 BE) | header (JSON, UTF-8) | chunks
 *   chunk: ciphertext length (u32 BE) | IV (12) | tag (16) | ciphertext
 *
 * Each chunk is AES-256-GCM under the backup key, with SHA-256(magic..header) || chunk index
 * (u64 BE) || final flag as additional data: the header cannot be edited, chunks cannot be
 * reordered, and a file cut after any chunk fails because its last chunk is not marked final.
 * The header names everything a restore needs except key material.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { type FileHandle, open, rename, rm } from 'node:fs/promises';
import { z } from 'zod';
import { EngineError } from './engine-error';

const MAGIC = Buffer.from('KOBK', 'ascii');
const FORMAT = 1;
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
  plainBytes: z.number().int().nonnegative(),
  chunkBytes: z.number().int().positive(),
});
export type BackupHeader = z.infer<typeof backupHeaderSchema>;

const invalid = (path: string, why: string) => new EngineError('BACKUP_INVALID', `backup ${path} is not valid: ${why}`);

function chunkAad(headerDigest: Buffer, index: number, final: boolean): Buffer {
  const aad = Buffer.alloc(32 + 8 + 1);
  headerDigest.copy(aad, 0);
  aad.writeBigUInt64BE(BigInt(index), 32);
  aad[40] = final ? 1 : 0;
  return aad;
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

/**
 * Encrypts `plainBytes` bytes of `source` (read through `read`) into a new backup at `path`.
 * Writes a partial file beside it and renames it into place only once it is complete and synced.
 */
export async function writeBackupFile(options: {
  path: string;
  header: Omit<BackupHeader, 'plainBytes' | 'chunkBytes'>;
  plainBytes: number;
  read: (buffer: Buffer, length: number, position: number) => Promise<number>;
  key: Buffer;
  progress?: (done: number, total: number) => void;
}): Promise<{ bytes: number; sha256: string }> {
  const header: BackupHeader = { ...options.header, plainBytes: options.plainBytes, chunkBytes: BACKUP_CHUNK_BYTES };
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const prefix = Buffer.alloc(PREFIX);
  MAGIC.copy(prefix, 0);
  prefix[4] = FORMAT;
  prefix.writeUInt32BE(json.length, 5);
  const headerDigest = createHash('sha256').update(prefix).update(json).digest();
  const fileHash = createHash('sha256');

  const partial = `${options.path}.partial-${randomBytes(4).toString('hex')}`;
  const out = await open(partial, 'wx', 0o600);
  // Encryption (this thread) overlaps with writes and write-back (libuv threads): a few writes
  // stay in flight, and a background fdatasync every SYNC_EVERY bytes keeps the final one short.
  const inFlight: Promise<unknown>[] = [];
  let syncing: Promise<void> | undefined;
  let unsynced = 0;
  let bytes = 0;
  const write = async (parts: Buffer[]) => {
    const position = bytes;
    const length = parts.reduce((n, p) => n + p.length, 0);
    for (const part of parts) fileHash.update(part);
    bytes += length;
    unsynced += length;
    inFlight.push(writeFully(out, parts, position, length));
    if (inFlight.length > MAX_IN_FLIGHT) await inFlight.shift();
    if (unsynced >= SYNC_EVERY && !syncing) {
      unsynced = 0;
      syncing = out.datasync().finally(() => (syncing = undefined));
      inFlight.push(syncing);
    }
  };
  try {
    await write([prefix, json]);
    const plain = Buffer.allocUnsafe(BACKUP_CHUNK_BYTES);
    let done = 0;
    for (let index = 0; ; index++) {
      const want = Math.min(BACKUP_CHUNK_BYTES, options.plainBytes - done);
      const got = want > 0 ? await options.read(plain, want, done) : 0;
      if (got !== want) throw new Error(`the database file ended at ${done + got} bytes, expected ${options.plainBytes}`);
      done += got;
      const final = done === options.plainBytes;
      const iv = randomBytes(IV);
      const cipher = createCipheriv('aes-256-gcm', options.key, iv);
      cipher.setAAD(chunkAad(headerDigest, index, final));
      const ct = cipher.update(plain.subarray(0, got));
      cipher.final(); // GCM adds no bytes at the end
      const head = Buffer.alloc(CHUNK_HEAD);
      head.writeUInt32BE(ct.length, 0);
      iv.copy(head, 4);
      cipher.getAuthTag().copy(head, 4 + IV);
      await write([head, ct]);
      options.progress?.(done, options.plainBytes);
      if (final) break;
    }
    await Promise.all(inFlight);
    await out.sync();
    await out.close();
    await rename(partial, options.path);
    return { bytes, sha256: fileHash.digest('hex') };
  } catch (err) {
    await Promise.allSettled(inFlight);
    await out.close().catch(() => undefined);
    await rm(partial, { force: true });
    throw err;
  }
}

const MAX_IN_FLIGHT = 4;
const SYNC_EVERY = 64 * 1024 * 1024;

async function writeFully(file: FileHandle, parts: Buffer[], position: number, length: number): Promise<void> {
  let written = (await file.writev(parts, position)).bytesWritten;
  if (written === length) return;
  // A short write (rare): finish it piece by piece.
  const rest = Buffer.concat(parts).subarray(written);
  while (written < length) written += (await file.write(rest, written - (length - rest.length), length - written, position + written)).bytesWritten;
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
  if (prefix[4] !== FORMAT) throw invalid(path, `unknown backup format ${prefix[4]}`);
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
  return { header: header.data, prefix, json, offset: PREFIX + length };
}

/**
 * Decrypts every chunk, handing the plaintext to `write` in order, and checks the file's SHA-256
 * on the way (one read). Any altered, missing or reordered byte fails with BACKUP_INVALID naming
 * the file; callers must discard what `write` received when it throws.
 */
export async function readBackupFile(options: {
  path: string;
  expectedSha256: string;
  keyFor: (header: BackupHeader) => Promise<Buffer>;
  write: (data: Buffer, position: number) => Promise<void>;
  progress?: (done: number, total: number) => void;
}): Promise<BackupHeader> {
  const { path } = options;
  const file = await openBackup(path);
  try {
    const { size } = await file.stat();
    const { header, prefix, json, offset: start } = await readHeader(file, path);
    const fileHash = createHash('sha256').update(prefix).update(json);
    const scratch = Buffer.allocUnsafe(header.chunkBytes);
    const key = await options.keyFor(header);
    const headerDigest = createHash('sha256').update(prefix).update(json).digest();
    let offset = start;
    let done = 0;
    for (let index = 0; ; index++) {
      const head = Buffer.alloc(CHUNK_HEAD);
      if ((await readAt(file, head, CHUNK_HEAD, offset)) < CHUNK_HEAD) throw invalid(path, `it ends before chunk ${index}`);
      const length = head.readUInt32BE(0);
      if (length > header.chunkBytes) throw invalid(path, `chunk ${index} claims ${length} bytes`);
      const ct = scratch.subarray(0, length);
      if ((await readAt(file, ct, length, offset + CHUNK_HEAD)) < length) throw invalid(path, `it ends inside chunk ${index}`);
      fileHash.update(head).update(ct);
      offset += CHUNK_HEAD + length;
      const final = done + length === header.plainBytes;
      const decipher = createDecipheriv('aes-256-gcm', key, head.subarray(4, 4 + IV));
      decipher.setAAD(chunkAad(headerDigest, index, final));
      decipher.setAuthTag(head.subarray(4 + IV));
      let plain: Buffer;
      try {
        plain = Buffer.concat([decipher.update(ct), decipher.final()]);
      } catch {
        throw invalid(path, `chunk ${index} fails authentication (altered, truncated, or not made with backup key ${header.backupKeyHash.slice(0, 12)}…)`);
      }
      await options.write(plain, done);
      done += plain.length;
      options.progress?.(done, header.plainBytes);
      if (final) break;
    }
    if (offset !== size) throw invalid(path, 'it has bytes after its final chunk');
    if (fileHash.digest('hex') !== options.expectedSha256) throw invalid(path, 'its SHA-256 differs from the one recorded when it was written');
    return header;
  } finally {
    await file.close();
  }
}
