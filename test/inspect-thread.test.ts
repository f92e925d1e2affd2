/**
 * The test-restore check (activities/engines/inspect-thread.ts) gives the same answer on the
 * calling thread (a database up to INLINE_CHECK_BYTES) and on its own thread (a larger one), and
 * both refuse a wrong key and a damaged file.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3-multiple-ciphers';
import { INLINE_CHECK_BYTES, InspectError, inspectInThread } from '../activities/engines/inspect-thread';

function createKeyed(path: string, dek: Buffer, blobs: number): void {
  const db = new Database(path);
  db.pragma("cipher='sqlcipher'");
  db.pragma('legacy=4');
  db.pragma(`key="x'${dek.toString('hex')}'"`);
  db.exec('CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL); CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)');
  const insert = db.prepare('INSERT INTO blobs (data) VALUES (?)');
  db.transaction(() => {
    for (let i = 0; i < blobs; i++) insert.run(randomBytes(16 * 1024));
  })();
  db.prepare('INSERT INTO notes (text) VALUES (?)').run('one');
  db.close();
}

describe('inspectInThread', () => {
  let dir: string;
  const dek = randomBytes(32);
  let small: string;
  let large: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keyops-inspect-'));
    small = join(dir, 'small.db');
    large = join(dir, 'large.db');
    createKeyed(small, dek, 10);
    createKeyed(large, dek, 400);
    assert.ok((await stat(small)).size <= INLINE_CHECK_BYTES);
    assert.ok((await stat(large)).size > INLINE_CHECK_BYTES);
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('counts tables and rows on either side of the inline limit', async () => {
    assert.deepEqual(await inspectInThread(small, dek), { tables: 2, rows: 11 });
    assert.deepEqual(await inspectInThread(large, dek), { tables: 2, rows: 401 });
  });

  it('refuses a wrong key on either side', async () => {
    const wrong = randomBytes(32);
    await assert.rejects(inspectInThread(small, wrong), /file is not a database/);
    await assert.rejects(inspectInThread(large, wrong), /file is not a database/);
  });

  it('reports a damaged page found by quick_check (thread side)', async () => {
    const copy = join(dir, 'damaged.db');
    createKeyed(copy, dek, 400);
    // Flip bytes in a page in the middle: SQLCipher's per-page HMAC fails on that page.
    const fh = await open(copy, 'r+');
    await fh.write(Buffer.alloc(64, 0xff), 0, 64, 4096 * 200 + 100);
    await fh.close();
    await assert.rejects(inspectInThread(copy, dek), (err: unknown) => err instanceof InspectError || /malformed|not a database|hmac/i.test(String(err)));
  });
});
