import type { KeyManagementService } from '../../activities/kms/key-management-service';

type KmsMethod = {
  [K in keyof KeyManagementService]: KeyManagementService[K] extends (...args: never[]) => Promise<unknown> ? K : never;
}[keyof KeyManagementService];

/** A gate that calls of one KMS method wait at until the test opens it. */
export interface KmsHold {
  /** Calls that reached the gate so far (the test waits on this, never on a clock). */
  readonly reached: number;
  /** Opens the gate: held calls go on, later calls pass straight through. */
  release(): void;
}

/**
 * The real KMS, with calls that the test can stop at an exact point: a rewrap held between its
 * rotation and its first batch, a key read whose answer is held back (a stale read). The KMS
 * itself does all the work; only the moment of the answer is the test's.
 */
export function holdableKms(kms: KeyManagementService) {
  const holds = new Map<KmsMethod, { reached: number; limit: number; answerFirst: boolean; open: boolean; waiting: (() => void)[] }>();
  const wrapped = new Proxy(kms, {
    get(target, prop, receiver) {
      const value: unknown = Reflect.get(target, prop, receiver);
      if (typeof value !== 'function') return value;
      const call = (args: unknown[]) => (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
      const hold = holds.get(prop as KmsMethod);
      if (!hold) return (...args: unknown[]) => call(args);
      return async (...args: unknown[]) => {
        if (hold.open || hold.reached >= hold.limit) return call(args);
        hold.reached++;
        const gate = new Promise<void>((resolve) => hold.waiting.push(resolve));
        if (!hold.answerFirst) return gate.then(() => call(args));
        const answer = await call(args);
        await gate;
        return answer;
      };
    },
  });
  return {
    kms: wrapped,
    /**
     * Holds the next `calls` calls of `method` (all of them by default) until release().
     * `answerFirst`: the KMS answers at once and the answer is held, so the caller acts on what
     * the KMS said before anything the test does meanwhile.
     */
    hold(method: KmsMethod, options: { calls?: number; answerFirst?: boolean } = {}): KmsHold {
      const hold = { reached: 0, limit: options.calls ?? Infinity, answerFirst: options.answerFirst ?? false, open: false, waiting: [] as (() => void)[] };
      holds.set(method, hold);
      return {
        get reached() {
          return hold.reached;
        },
        release() {
          hold.open = true;
          for (const resolve of hold.waiting.splice(0)) resolve();
        },
      };
    },
  };
}
