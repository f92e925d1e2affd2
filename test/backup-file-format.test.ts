import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, open, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { INLINE_OPEN_BYTES } from '../activities/engines/gcm-open-threads';
import { BACKUP_CHUNK_BYTES, readBackupFile, readBackupHeader, writeBackupFile, writeBackupStream } from '../activities/engines/backup-file-format';

const header = {
  databaseId: 'files',
  backupId: 'backup/files/2026-11-23',
  night: '2026-11-23',
  createdAt: '2026-11-23T02:00:00.000Z',
  keyId: 'key-1',
  keyVersion: 3,
  wdek: 'd2Rlaw==',
  backupKeyHash: 'a'.repeat(64),
  backupKey: { keyId: 'key-1', keyVersion: 3, wdek: 'YmFja3Vw' },
};

describe('backup file format (real AES-256-GCM, real files)', () => {
  let dir: string;
  const key = randomBytes(32);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keyops-backup-file-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /**
   * The format 4 integrity value, computed here from the file's bytes as the format's comment
   * describes it: SHA-256 of the header's digest, then of every chunk's tag in order.
   */
  function tagsValue(file: Buffer): string {
    const headerEnd = 4 + 1 + 4 + file.readUInt32BE(5);
    const hash = createHash('sha256').update(createHash('sha256').update(file.subarray(0, headerEnd)).digest());
    for (let at = headerEnd; at < file.length; at += 32 + file.readUInt32BE(at)) hash.update(file.subarray(at + 16, at + 32));
    return `tags-sha256:${hash.digest('hex')}`;
  }

  /** Backs `source` up, then restores it into memory through the same reader a restore uses. */
  async function roundTrip(name: string, source: Buffer, format?: 2 | 4) {
    const sourcePath = join(dir, `${name}.src`);
    writeFileSync(sourcePath, source);
    const input = await open(sourcePath, 'r');
    const path = join(dir, `${name}.kob`);
    let written;
    try {
      written = await writeBackupFile({
        path,
        header,
        plainBytes: source.length,
        key,
        read: async (buffer, length, position) => (await input.read(buffer, 0, length, position)).bytesRead,
        ...(format ? { format } : {}),
      });
    } finally {
      await input.close();
    }
    const restored = Buffer.alloc(source.length);
    const back = await readBackupFile({
      path,
      expectedSha256: written.sha256,
      keyFor: () => Promise.resolve(Buffer.from(key)),
      write: (data, position) => {
        data.copy(restored, position);
        return Promise.resolve();
      },
    });
    return { path, written, restored, back };
  }

  it('round-trips a multi-chunk file (format 4); its integrity value is the hash of its chunk tags', async () => {
    const source = randomBytes(3 * BACKUP_CHUNK_BYTES + 12_345);
    const { path, written, restored, back } = await roundTrip('multi', source);
    const onDisk = readFileSync(path);
    assert.equal(onDisk[4], 4, 'format 4');
    assert.equal(written.bytes, onDisk.length);
    assert.equal(written.sha256, tagsValue(onDisk), 'the value is computed from the tags on disk');
    assert.ok(restored.equals(source), 'every byte restores');
    assert.equal(back.header.plainBytes, source.length);
    assert.equal(back.sha256, written.sha256, 'the reader computes the same value');
    // The key a read is given is its own, and zeroed once the file is read.
    const given = Buffer.from(key);
    await readBackupFile({ path, keyFor: () => Promise.resolve(given), write: () => Promise.resolve() });
    assert.ok(given.every((b) => b === 0), 'the backup key is zeroed after the read');
    assert.ok(!onDisk.includes(source.subarray(1000, 1064)), 'no plaintext run appears in the file');
    assert.deepEqual((await readdir(dir)).filter((f) => f.includes('partial')), [], 'no partial file is left');
  });

  it('round-trips an empty database file and one of exactly one chunk', async () => {
    for (const [name, source] of [
      ['empty', Buffer.alloc(0)],
      ['one-chunk', randomBytes(BACKUP_CHUNK_BYTES)],
    ] as const) {
      const { path, written, restored } = await roundTrip(name, source);
      assert.equal(written.sha256, tagsValue(readFileSync(path)), name);
      assert.ok(restored.equals(source), name);
    }
  });

  it('a format 2 file keeps its whole-file SHA-256: written before format 4, it still restores against the value its catalog holds', async () => {
    const source = randomBytes(2 * BACKUP_CHUNK_BYTES + 7);
    const { path, written, restored, back } = await roundTrip('legacy', source, 2);
    const onDisk = readFileSync(path);
    assert.equal(onDisk[4], 2);
    assert.equal(written.sha256, createHash('sha256').update(onDisk).digest('hex'), 'what sha256sum prints');
    assert.equal(back.sha256, written.sha256);
    assert.ok(restored.equals(source));
    // The other kind of value, or another file's, is refused.
    await assert.rejects(readAll(path, source.length, tagsValue(onDisk)), /legacy\.kob is not valid: its integrity value differs from the one recorded when it was written \(its SHA-256\)/);
  });

  it('a format 4 file whose recorded value is another\'s, or whose tag was altered, is refused', async () => {
    const source = randomBytes(BACKUP_CHUNK_BYTES + 99);
    const { path, written } = await roundTrip('tags', source);
    const other = await roundTrip('tags-other', source);
    assert.notEqual(other.written.sha256, written.sha256, 'fresh IVs: the same bytes give another value');
    await assert.rejects(readAll(path, source.length, other.written.sha256), /tags\.kob is not valid: its integrity value differs .* \(the hash of its chunk tags\)/);
    const altered = readFileSync(path);
    const headerEnd = 4 + 1 + 4 + altered.readUInt32BE(5);
    altered[headerEnd + 20] = altered[headerEnd + 20]! ^ 1; // inside chunk 0's tag
    const alteredPath = join(dir, 'tags-altered.kob');
    writeFileSync(alteredPath, altered);
    await assert.rejects(readAll(alteredPath, source.length, written.sha256), /tags-altered\.kob is not valid: chunk 0 fails authentication/);
  });

  it('a large file is opened on threads: it round-trips, and a chunk altered in its middle is named', async () => {
    const source = randomBytes(INLINE_OPEN_BYTES + 5 * BACKUP_CHUNK_BYTES + 321);
    const { path, written, restored } = await roundTrip('threads', source);
    assert.ok(restored.equals(source), 'every byte restores, in order');
    const altered = readFileSync(path);
    const headerEnd = 4 + 1 + 4 + altered.readUInt32BE(5);
    const chunk = 6;
    const at = headerEnd + chunk * (32 + BACKUP_CHUNK_BYTES) + 32 + 1000; // inside chunk 6's ciphertext
    altered[at] = altered[at]! ^ 0x80;
    const alteredPath = join(dir, 'threads-altered.kob');
    writeFileSync(alteredPath, altered);
    const writes: number[] = [];
    await assert.rejects(
      readBackupFile({ path: alteredPath, expectedSha256: written.sha256, keyFor: () => Promise.resolve(Buffer.from(key)), write: (_data, position) => {
          writes.push(position);
          return Promise.resolve();
        },
      }),
      /threads-altered\.kob is not valid: chunk 6 fails authentication/,
    );
    assert.ok(writes.every((p) => p < chunk * BACKUP_CHUNK_BYTES), 'nothing of the altered chunk or after it was written');
  });

  it('fails naming the short source and leaves no partial file', async () => {
    const path = join(dir, 'short.kob');
    const source = randomBytes(BACKUP_CHUNK_BYTES + 10);
    await assert.rejects(
      writeBackupFile({
        path,
        header,
        plainBytes: source.length + BACKUP_CHUNK_BYTES,
        key,
        read: (buffer, length, position) => Promise.resolve(source.copy(buffer, 0, position, Math.min(source.length, position + length))),
      }),
      /the database file ended at 4194314 bytes, expected 8388618/,
    );
    assert.deepEqual((await readdir(dir)).filter((f) => f.startsWith('short')), []);
  });

  it('fails, without ending the process, when a read-ahead or a restore write fails while other work is pending', async () => {
    // Each of these rejects while the loop awaits something else: before the fix the rejection
    // was unhandled for a moment, and Node ended the whole worker process.
    const source = randomBytes(3 * BACKUP_CHUNK_BYTES);
    await assert.rejects(
      writeBackupFile({
        path: join(dir, 'bad-read.kob'),
        header,
        plainBytes: source.length,
        key,
        read: (buffer, length, position) =>
          position >= BACKUP_CHUNK_BYTES ? Promise.reject(new Error('EIO: the disk went away')) : Promise.resolve(source.copy(buffer, 0, position, position + length)),
      }),
      /EIO: the disk went away/,
    );
    assert.deepEqual((await readdir(dir)).filter((f) => f.startsWith('bad-read')), []);

    const { path, written } = await roundTrip('to-truncate', source);
    const truncated = join(dir, 'truncated.kob');
    writeFileSync(truncated, readFileSync(path).subarray(0, 2 * BACKUP_CHUNK_BYTES + 100));
    await assert.rejects(
      readBackupFile({
        path: truncated,
        expectedSha256: written.sha256,
        keyFor: () => Promise.resolve(Buffer.from(key)),
        write: () => new Promise((resolve) => setTimeout(resolve, 50)),
      }),
      /truncated\.kob is not valid: it ends inside chunk 1/,
    );
    await assert.rejects(
      readBackupFile({ path, expectedSha256: written.sha256, keyFor: () => Promise.resolve(Buffer.from(key)), write: () => Promise.reject(new Error('ENOSPC: no space left')) }),
      /ENOSPC/,
    );
  });

  /** A producer writing to a pipe: pieces of uneven sizes, then (optionally) a failure at its end. */
  async function* pieces(source: Buffer, failAtEnd?: Error): AsyncGenerator<Buffer> {
    let at = 0;
    for (let i = 0; at < source.length; i++) {
      const n = [65_536, 1, 3_000_001, 777][i % 4]!;
      yield source.subarray(at, at + n);
      at += n;
      await new Promise(setImmediate); // a pipe delivers between turns of the loop
    }
    if (failAtEnd) throw failAtEnd;
  }

  const readAll = async (path: string, size: number, expectedSha256?: string) => {
    const restored = Buffer.alloc(size);
    const back = await readBackupFile({
      path,
      ...(expectedSha256 ? { expectedSha256 } : {}),
      keyFor: () => Promise.resolve(Buffer.from(key)),
      write: (data, position) => {
        data.copy(restored, position);
        return Promise.resolve();
      },
    });
    return { restored, back };
  };

  it('streams: a source of unknown length round-trips, ends at its final chunk, and cut at a chunk boundary fails', async () => {
    for (const [name, size] of [
      ['stream', 2 * BACKUP_CHUNK_BYTES + 4321],
      ['stream-exact', 2 * BACKUP_CHUNK_BYTES],
      ['stream-empty', 0],
    ] as const) {
      const source = randomBytes(size);
      const path = join(dir, `${name}.kob`);
      const engineKeys = { store: 'vault-kv', keyId: 1, oldestVersion: 2, latestVersion: 3 };
      const written = await writeBackupStream({ path, header: { ...header, engineKeys }, source: pieces(source), key });
      assert.equal(written.plainBytes, size, name);
      assert.equal(readFileSync(path)[4], 4, `${name}: format 4`);
      assert.equal(written.sha256, tagsValue(readFileSync(path)), name);
      const described = await readBackupHeader(path);
      assert.equal(described.plainBytes, undefined, 'a stream header cannot know its length');
      assert.deepEqual(described.engineKeys, engineKeys);
      const { restored, back } = await readAll(path, size, written.sha256);
      assert.ok(restored.equals(source), `${name}: every byte restores`);
      assert.equal(back.sha256, written.sha256);
    }
    // A stream written before format 4 (format 3) still restores against its whole-file SHA-256.
    const legacySource = randomBytes(BACKUP_CHUNK_BYTES + 5);
    const legacy = join(dir, 'stream-format-3.kob');
    const old = await writeBackupStream({ path: legacy, header, source: pieces(legacySource), key, format: 3 });
    assert.equal(readFileSync(legacy)[4], 3);
    assert.equal(old.sha256, createHash('sha256').update(readFileSync(legacy)).digest('hex'));
    assert.ok((await readAll(legacy, legacySource.length, old.sha256)).restored.equals(legacySource));
    // Cut after its second chunk, a three-chunk stream ends on a chunk not sealed as final.
    const whole = readFileSync(join(dir, 'stream.kob'));
    const header0 = 4 + 1 + 4 + whole.readUInt32BE(5);
    const cut = join(dir, 'stream-cut.kob');
    writeFileSync(cut, whole.subarray(0, header0 + 2 * (32 + BACKUP_CHUNK_BYTES)));
    await assert.rejects(readAll(cut, 3 * BACKUP_CHUNK_BYTES), /stream-cut\.kob is not valid: chunk 1 fails authentication/);
  });

  it('streams: a producer that fails, even after its last byte, leaves no file and no partial file', async () => {
    const path = join(dir, 'stream-failed.kob');
    await assert.rejects(
      writeBackupStream({ path, header, source: pieces(randomBytes(BACKUP_CHUNK_BYTES + 10), new Error('mariadb-backup exited with 1')), key }),
      /mariadb-backup exited with 1/,
    );
    assert.deepEqual((await readdir(dir)).filter((f) => f.startsWith('stream-failed')), []);
  });
});
