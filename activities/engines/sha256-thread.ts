/**
 * SHA-256 of a stream of buffers, computed on a worker thread once the stream is large.
 *
 * A backup spends more CPU on its file checksum than on AES-GCM (SHA-256 runs at about 40 % of
 * AES-GCM's speed here, with SHA-NI and VAES both present), so hashing on the main thread halves
 * the throughput of a two-core machine. Buffers are transferred, not copied: a caller hands a
 * chunk over once it no longer needs it (after its write completes) and must not touch it again.
 *
 * Starting a thread costs about 23 ms of CPU, more than hashing a small backup: a fleet's
 * nightly backups of small databases paid more for their checksum threads than for everything
 * else they did. So the first INLINE_BYTES are only held; the thread starts when more arrive,
 * and a stream that ends before that is hashed here, in about 10 ms at most.
 */
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';

// Plain JavaScript evaluated in the worker, so it loads the same way under tsx and from dist/.
const SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const hash = createHash('sha256');
parentPort.on('message', (message) => {
  if (message === 'digest') return parentPort.postMessage({ digest: hash.digest('hex') });
  for (const part of message) hash.update(new Uint8Array(part));
  parentPort.postMessage({ hashed: 1 });
});
`;

/** Chunks handed over but not hashed yet; past this, `update` waits, bounding memory. */
const MAX_QUEUED = 8;
/** Held (not hashed) until the stream outgrows them; one backup chunk. */
export const INLINE_BYTES = 4 * 1024 * 1024;

export class Sha256Thread {
  private worker: Worker | undefined;
  /** What was handed over before the thread started, in order. */
  private held: Buffer[] = [];
  private heldBytes = 0;
  private queued = 0;
  private wake: (() => void) | undefined;
  private finish: ((hex: string) => void) | undefined;
  private fail: ((err: Error) => void) | undefined;
  private failure: Error | undefined;

  private start(): Worker {
    const worker = new Worker(SOURCE, { eval: true });
    worker.on('message', (message: { hashed?: number; digest?: string }) => {
      if (message.digest !== undefined) this.finish?.(message.digest);
      else this.queued -= 1;
      this.wake?.();
    });
    worker.on('error', (err) => {
      this.failure = err;
      this.wake?.();
      this.fail?.(err);
    });
    this.worker = worker;
    return worker;
  }

  /**
   * Hashes `parts` after everything handed over before them. A part that is the whole of its
   * ArrayBuffer is transferred; any other (a pooled or shared buffer) is copied.
   */
  async update(parts: Buffer[]): Promise<void> {
    if (!this.worker) {
      this.held.push(...parts);
      this.heldBytes += parts.reduce((n, p) => n + p.length, 0);
      if (this.heldBytes <= INLINE_BYTES) return;
      this.start();
      parts = this.held;
      this.held = [];
    }
    while (this.queued >= MAX_QUEUED && !this.failure) await new Promise<void>((resolve) => (this.wake = resolve));
    if (this.failure) throw this.failure;
    const buffers: ArrayBuffer[] = [];
    const transfer: ArrayBuffer[] = [];
    for (const part of parts) {
      const { buffer, byteOffset, byteLength } = part;
      if (byteOffset === 0 && buffer.byteLength === byteLength && buffer instanceof ArrayBuffer) {
        buffers.push(buffer);
        transfer.push(buffer);
      } else {
        buffers.push(Uint8Array.prototype.slice.call(part).buffer);
      }
    }
    this.queued += 1;
    this.worker!.postMessage(buffers, transfer);
  }

  /** The hex digest of everything handed over. The thread, if any, ends with it. */
  async digest(): Promise<string> {
    try {
      if (this.failure) throw this.failure;
      const worker = this.worker;
      if (!worker) {
        const hash = createHash('sha256');
        for (const part of this.held) hash.update(part);
        return hash.digest('hex');
      }
      return await new Promise<string>((resolve, reject) => {
        this.finish = resolve;
        this.fail = reject;
        worker.postMessage('digest');
      });
    } finally {
      await this.close();
    }
  }

  /** Ends the thread without a digest (the backup failed). */
  async close(): Promise<void> {
    this.held = [];
    await this.worker?.terminate();
  }
}
