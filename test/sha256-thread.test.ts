/**
 * The backup checksum (activities/engines/sha256-thread.ts): the same digest as node:crypto's
 * whether the stream stays under INLINE_BYTES (hashed on this thread) or outgrows it (moved to
 * its thread, held parts first, in order).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { INLINE_BYTES, Sha256Thread } from '../activities/engines/sha256-thread';

async function digestOf(sizes: number[]): Promise<{ ours: string; expected: string }> {
  const parts = sizes.map((n) => randomBytes(n));
  const expected = createHash('sha256');
  for (const p of parts) expected.update(p);
  const hash = new Sha256Thread();
  // Handed over as a backup does: copies it will not touch again (some transferred, one a view).
  for (const p of parts) await hash.update([Buffer.from(p), p.subarray(0, 0)]);
  return { ours: await hash.digest(), expected: expected.digest('hex') };
}

describe('Sha256Thread', () => {
  it('hashes a small stream on the calling thread', async () => {
    const { ours, expected } = await digestOf([100, 4096, 7]);
    assert.equal(ours, expected);
  });

  it('moves a stream that outgrows INLINE_BYTES to its thread, keeping the order', async () => {
    const { ours, expected } = await digestOf([INLINE_BYTES - 10, 5, 20, 1 << 20, 3]);
    assert.equal(ours, expected);
  });

  it('an empty stream', async () => {
    const { ours, expected } = await digestOf([]);
    assert.equal(ours, expected);
  });
});
