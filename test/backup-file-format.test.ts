import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, open, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
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

  /** Backs `source` up, then restores it into memory through the same reader a restore uses. */
  async function roundTrip(name: string, source: Buffer) {
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
      });
    } finally {
      await input.close();
    }
    const restored = Buffer.alloc(source.length);
    const back = await readBackupFile({
      path,
      expectedSha256: written.sha256,
      keyFor: () => Promise.resolve(key),
      write: (data, position) => {
        data.copy(restored, position);
        return Promise.resolve();
      },
    });
    return { path, written, restored, back };
  }

  it('round-trips a multi-chunk file; the recorded checksum is the SHA-256 of the file on disk', async () => {
    const source = randomBytes(3 * BACKUP_CHUNK_BYTES + 12_345);
    const { path, written, restored, back } = await roundTrip('multi', source);
    const onDisk = readFileSync(path);
    assert.equal(written.bytes, onDisk.length);
    assert.equal(written.sha256, createHash('sha256').update(onDisk).digest('hex'), 'the checksum is what sha256sum would print');
    assert.ok(restored.equals(source), 'every byte restores');
    assert.equal(back.header.plainBytes, source.length);
    assert.equal(back.sha256, written.sha256, 'the reader computes the same checksum');
    assert.ok(!onDisk.includes(source.subarray(1000, 1064)), 'no plaintext run appears in the file');
    assert.deepEqual((await readdir(dir)).filter((f) => f.includes('partial')), [], 'no partial file is left');
  });

  it('round-trips an empty database file and one of exactly one chunk', async () => {
    for (const [name, source] of [
      ['empty', Buffer.alloc(0)],
      ['one-chunk', randomBytes(BACKUP_CHUNK_BYTES)],
    ] as const) {
      const { path, written, restored } = await roundTrip(name, source);
      assert.equal(written.sha256, createHash('sha256').update(readFileSync(path)).digest('hex'), name);
      assert.ok(restored.equals(source), name);
    }
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
        keyFor: () => Promise.resolve(key),
        write: () => new Promise((resolve) => setTimeout(resolve, 50)),
      }),
      /truncated\.kob is not valid: it ends inside chunk 1/,
    );
    await assert.rejects(
      readBackupFile({ path, expectedSha256: written.sha256, keyFor: () => Promise.resolve(key), write: () => Promise.reject(new Error('ENOSPC: no space left')) }),
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

  const readAll = async (path: string, size: number) => {
    const restored = Buffer.alloc(size);
    const back = await readBackupFile({
      path,
      keyFor: () => Promise.resolve(key),
      write: (data, position) => {
        data.copy(restored, position);
        return Promise.resolve();
      },
    });
    return { restored, back };
  };

  it('streams (format 3): a source of unknown length round-trips, ends at its final chunk, and cut at a chunk boundary fails', async () => {
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
      assert.equal(written.sha256, createHash('sha256').update(readFileSync(path)).digest('hex'), name);
      const described = await readBackupHeader(path);
      assert.equal(described.plainBytes, undefined, 'a stream header cannot know its length');
      assert.deepEqual(described.engineKeys, engineKeys);
      const { restored, back } = await readAll(path, size);
      assert.ok(restored.equals(source), `${name}: every byte restores`);
      assert.equal(back.sha256, written.sha256);
    }
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
