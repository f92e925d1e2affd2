import { KmsError } from './kms-error';

export interface ThrottleStats {
  /** KMS calls in flight allowed now. */
  concurrency: number;
  /** Calls the KMS refused as throttled (each was retried). */
  throttled: number;
  /** Time paused because of throttling (each pause once, not per waiting call). */
  waitedMs: number;
}

export interface AdaptiveConcurrencyOptions {
  initial: number;
  max: number;
  /** Cancellation-aware in activities: a stopping worker ends the wait. */
  sleep: (ms: number) => Promise<void>;
  now?: () => number;
  /** Called while waiting out a throttle, e.g. to heartbeat through a long Retry-After. */
  onWait?: () => void;
}

/** Longest single wait between heartbeats while a Retry-After runs. */
const WAIT_SLICE_MS = 5_000;
const MAX_BACKOFF_MS = 30_000;
const MAX_RETRY_AFTER_MS = 5 * 60_000;

/**
 * AIMD for KMS calls, as TCP does for packets: every throttled call halves the calls allowed in
 * flight and pauses new ones until the KMS's Retry-After (or an exponential backoff); every
 * `concurrency` successes in a row allow one more (before the first throttle, every success: slow
 * start). A throttled call is retried, never failed: throttling slows a rewrap down and never
 * loses a WDEK.
 */
export class AdaptiveConcurrency {
  private limit: number;
  private active = 0;
  private pausedUntil = 0;
  private successes = 0;
  private consecutiveThrottles = 0;
  private slowStart = true;
  private readonly waiting: (() => void)[] = [];
  private readonly now: () => number;
  readonly stats: Omit<ThrottleStats, 'concurrency'> = { throttled: 0, waitedMs: 0 };

  constructor(private readonly options: AdaptiveConcurrencyOptions) {
    if (!Number.isInteger(options.initial) || !Number.isInteger(options.max) || options.initial < 1 || options.max < 1) {
      throw new RangeError(`concurrency must be whole numbers of at least 1 (initial ${String(options.initial)}, max ${String(options.max)})`);
    }
    this.limit = Math.min(options.initial, options.max);
    this.now = options.now ?? Date.now;
  }

  get concurrency(): number {
    return this.limit;
  }

  snapshot(): ThrottleStats {
    return { concurrency: this.limit, ...this.stats };
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    for (;;) {
      await this.acquire();
      let throttled: KmsError | undefined;
      try {
        const result = await fn();
        this.succeeded();
        return result;
      } catch (err) {
        if (!(err instanceof KmsError) || err.code !== 'KMS_THROTTLED') throw err;
        throttled = err;
      } finally {
        this.release();
      }
      this.throttledBy(throttled);
    }
  }

  private succeeded(): void {
    this.consecutiveThrottles = 0;
    if (this.limit >= this.options.max) return;
    // Slow start until the KMS first throttles: each success allows one more call, so the window
    // doubles every round trip instead of growing by one. A short rewrap against a KMS with room
    // to spare would otherwise end before it reached the concurrency the KMS serves best.
    if (this.slowStart || ++this.successes >= this.limit) {
      this.limit++;
      this.successes = 0;
      this.wake();
    }
  }

  private throttledBy(err: KmsError): void {
    this.slowStart = false;
    this.stats.throttled++;
    this.successes = 0;
    // Calls that were in flight together are refused together: that is one signal, not
    // several, so the window halves once per pause (as TCP halves once per round trip).
    if (this.now() < this.pausedUntil) return;
    this.limit = Math.max(1, Math.floor(this.limit / 2));
    const backoff = Math.min(MAX_BACKOFF_MS, 100 * 2 ** this.consecutiveThrottles++);
    const retryAfter = err.retryAfter === undefined ? 0 : Date.parse(err.retryAfter) - Date.now();
    // A KMS asking for more than this is treated as if it asked for this: the chunk keeps
    // heartbeating through the wait either way.
    const wait = Math.min(MAX_RETRY_AFTER_MS, Math.max(backoff, Number.isFinite(retryAfter) ? retryAfter : 0));
    this.pausedUntil = this.now() + wait;
    // Time paused, counted once, however many calls wait it out together.
    this.stats.waitedMs += wait;
  }

  private async acquire(): Promise<void> {
    for (;;) {
      const pause = this.pausedUntil - this.now();
      if (pause > 0) {
        await this.options.sleep(Math.min(pause, WAIT_SLICE_MS));
        this.options.onWait?.();
        continue;
      }
      if (this.active < this.limit) {
        this.active++;
        return;
      }
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    }
  }

  private release(): void {
    this.active--;
    this.wake();
  }

  private wake(): void {
    for (const resolve of this.waiting.splice(0)) resolve();
  }
}
