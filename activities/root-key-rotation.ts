import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { ApplicationFailure, type SignalDefinition, WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import { Context, activityInfo, getClient, heartbeat, sleep } from '@temporalio/activity';
import { WorkflowNotFoundError } from '@temporalio/client';
import type { DatabaseEngine } from './engines/database-engine';
import { AdaptiveConcurrency, type ThrottleStats } from './kms/adaptive-concurrency';
import type { BatchResult, KeyManagementService, KeyMetadata, RewrapResult, UnwrapResult } from './kms/key-management-service';
import { KmsError, kmsFailure } from './kms/kms-error';
import { ThrottledBatch, resumableBatch } from './kms/throttled-batch';
import { engineConsumers, type EngineConsumer } from './key-consumers';
import { typed } from './typed';
import type { StoredWdek, WdekRegistry, WdekUpdate } from './wdek-registry/wdek-registry';
import {
  awaitRewrapSignal,
  keyEntityWorkflowId,
  rewrapCompleteSignal,
  rewrapWorkflowId,
  rewrapKmsThrottleSignal,
  type KeyEntityState,
  type RewrapComplete,
  type RewrapWaiter,
} from '../workflows/root-key-messages';
import type { keyEntity } from '../workflows/key-entity';
import type { rotateRootKey } from '../workflows/rotate-root-key';
import { keyEntityMetadata } from '../workflows/key-entity-metadata';

/** Signals in flight at once when the key entity releases its waiters. */
const RELEASE_CONCURRENCY = 50;

export interface RootKeyDeps {
  kms: KeyManagementService;
  registry: WdekRegistry;
  /** Whether the HSM master key protecting the KMS's key storage is being rotated (optional). */
  keyStorageRotation?: () => Promise<{ inProgress: boolean; reason: string | undefined }>;
  /** The databases whose own key records must follow a rewrap, and the engines' own keys (optional). */
  engine?: Pick<DatabaseEngine, 'followRewrap' | 'engineKeys'>;
}

/** Metadata a workflow may carry: ids, versions and dates, never key material. */
export interface KeyStatus {
  keyId: string;
  /** The KMS's name of the key: a label, not a secret. */
  name: string;
  state: 'active' | 'disabled';
  currentVersion: number;
  lastRotateDate: string | undefined;
  /**
   * The version every consumer of the key is on ("complete"): for WDEKs the version keyops last
   * rewrapped them to; for an engine's own key, the latest once the engine has re-encrypted all
   * that version asks of it (read live), else the version last announced.
   */
  rewrappedVersion: number | undefined;
  /** The KMS's automatic rotation interval, when a policy is set. */
  rotationPolicyMonths?: number;
  /** Who holds data under the key: WDEKs keyops rewraps, engines that re-encrypt themselves. */
  consumers?: { wdeks: number; wdeksBehind: number; engines: EngineConsumer[] };
}

export interface ChunkInput {
  keyId: string;
  version: number;
  /** Resume after this WDEK id (the previous chunk's cursor). */
  afterId: string | undefined;
  /** Last id of this chunk's partition (inclusive); undefined for the last partition. */
  untilId?: string | undefined;
  /** Items per chunk: one activity call, reported to the workflow when it ends. */
  maxItems: number;
  /** Items per registry read and transaction. */
  batchSize: number;
  /**
   * Set by runs that wait for a master-key rotation themselves (released by its end): the
   * chunk then stops with a non-retryable MASTER_KEY_ROTATION_IN_PROGRESS instead of spending
   * its retry budget on a rotation that may outlast it. Older runs leave it unset.
   */
  masterKeyHold?: 'workflow';
}

export interface ChunkResult {
  processed: number;
  cursor: string | undefined;
  finished: boolean;
  /**
   * Rewrap only: the key's WDEKs and how many are still below the version, counted when the
   * chunk ended. `processed` under-counts after a retry that resumed from a heartbeat older
   * than the last batch moved; these counts are exact whatever the retries did.
   */
  total?: number;
  stale?: number;
  /** How the KMS throttled the chunk, and the concurrency it ended at. */
  kms?: ThrottleStats;
}

export interface VerifyResult extends ChunkResult {
  /** Ids of WDEKs that are not on the version or do not unwrap (at most 20 listed). */
  failedIds: string[];
  failed: number;
}

/** Quick in-place retries of a transient KMS failure inside a long chunk (100, 200, 400 ms). */
const TRANSIENT_RETRIES = 3;

/**
 * KMS errors leave activities as typed ApplicationFailures; anything else stays retryable.
 * A transient KMS_UNAVAILABLE is first retried in place a few times: one hiccup in the middle
 * of a 50,000-WDEK chunk should cost milliseconds, not an activity retry with backoff.
 */
async function kmsCall<T>(fn: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof KmsError)) throw err;
      if (!err.retryable || attempt >= TRANSIENT_RETRIES) throw kmsFailure(err);
      await sleep(100 * 2 ** attempt);
    }
  }
}

/**
 * Between batches: a chunk the worker cancels because it is shutting down (its grace time ran
 * out) stops here, where its last batch is committed and heartbeated, and fails retryably so
 * another worker resumes it at once instead of after the heartbeat timeout. A cancellation the
 * workflow asked for is reported as one.
 */
function stopIfCancelled(what: string, progress: Cursor): void {
  const ctx = Context.current();
  if (!ctx.cancellationSignal.aborted) return;
  const reason = ctx.cancellationSignal.reason as Error;
  // Asked by the workflow, or the server already gave this attempt up (timed out): say so.
  if (reason.message !== 'WORKER_SHUTDOWN') throw reason;
  heartbeat(progress);
  throw ApplicationFailure.create({
    type: 'WORKER_SHUTDOWN',
    message: `${what} stopped after ${progress.processed} WDEKs: the worker is shutting down; another worker resumes it`,
  });
}

/** KMS calls a chunk keeps in flight at first and at most (batches of `batchSize` WDEKs each). */
const INITIAL_LANES = 2;
const MAX_LANES = 16;
/** Answered parts recorded in one registry transaction (one fsync) while more are in flight. */
const RECORD_GROUP_PARTS = 4;

/** What verification keeps of an unwrapped WDEK: its version, never its DEK. */
interface Unwrapped {
  keyVersion: number;
}

/**
 * An unwrap batch for verification: every DEK is zeroed as it arrives, also those a throttled
 * batch carries for its resumed retry, so none waits in memory through a Retry-After.
 */
async function unwrapForCheck(kms: KeyManagementService, keyId: string, wdeks: readonly Buffer[]): Promise<BatchResult<Unwrapped>> {
  const strip = <R extends UnwrapResult | KmsError | undefined>(r: R) => (r === undefined || r instanceof KmsError ? r : (r.dek.fill(0), { keyVersion: r.keyVersion }));
  try {
    return (await kms.unwrapBatch(keyId, wdeks)).map(strip);
  } catch (err) {
    if (err instanceof ThrottledBatch) throw new ThrottledBatch<Unwrapped>(err, (err as ThrottledBatch<UnwrapResult>).answered.map(strip));
    throw err;
  }
}

/**
 * Tells the run how the KMS is throttling this chunk (its Web UI details and progress show it),
 * at once, then at most every 30 s (each report is an event in its history) and only when
 * something changed. Best effort: a lost report changes nothing.
 */
function throttleReporter(window: AdaptiveConcurrency): () => void {
  let reported = { throttled: 0, concurrency: window.concurrency };
  let at = 0;
  return () => {
    const now = window.snapshot();
    if (now.throttled === 0 || Date.now() - at < 30_000 || (now.throttled === reported.throttled && now.concurrency === reported.concurrency)) return;
    reported = now;
    at = Date.now();
    const { workflowExecution } = activityInfo();
    if (!workflowExecution) return;
    getClient()
      .workflow.getHandle(workflowExecution.workflowId)
      .signal(rewrapKmsThrottleSignal, now)
      .catch(() => undefined);
  };
}

/** What a chunk heartbeats, and what its retry resumes from. */
interface Cursor {
  cursor: string | undefined;
  processed: number;
  /** Verification only: failures found so far must survive a retry of the chunk. */
  failed?: number;
  failedIds?: string[];
}

/** Where a retried chunk resumes: the last heartbeat of the failed attempt, if any. */
function resumePoint(input: ChunkInput): Cursor {
  const details = activityInfo().heartbeatDetails as Cursor | undefined;
  return details ?? { cursor: input.afterId, processed: 0 };
}

export function createRootKeyActivities({ kms, registry, keyStorageRotation, engine }: RootKeyDeps) {
  const toStatus = (meta: KeyMetadata): KeyStatus => ({
    keyId: meta.keyId,
    name: meta.name,
    state: meta.state,
    currentVersion: meta.currentVersion,
    lastRotateDate: meta.lastRotateDate,
    rewrappedVersion: registry.getRewrappedVersion(meta.keyId),
    ...(meta.rotationPolicy ? { rotationPolicyMonths: meta.rotationPolicy.intervalMonths } : {}),
  });

  async function describeKey(keyId: string): Promise<KeyStatus> {
    const status = toStatus(await kmsCall(() => kms.getKeyMetadata(keyId)));
    const { total, below } = registry.countBelowVersion(keyId, status.currentVersion);
    const { consumers: engines } = await typed(() => engineConsumers(engine, keyId));
    // An engine that settled needs no announcement to be complete: a rotation made outside
    // keyops, already followed by the engine, releases waiters on their next re-check.
    const settled = engines.length > 0 && engines.every((e) => e.settled && !e.lostKey);
    // A key no rewrap ever recorded whose WDEKs all sit on its current version (a new key, its
    // first databases) is complete as it is: without this, every new key of a fleet looked
    // "behind" to the watcher and got a rewrap run of its own version 1.
    const fresh = engines.length === 0 && status.rewrappedVersion === undefined && total > 0 && below === 0;
    const rewrappedVersion = settled || fresh ? Math.max(status.rewrappedVersion ?? 0, status.currentVersion) : status.rewrappedVersion;
    return { ...status, rewrappedVersion, consumers: { wdeks: total, wdeksBehind: below, engines } };
  }

  // A new entity starts from the registry's recorded version, so a waiter that registers
  // first is judged against what is already done.
  const initialEntityState = (keyId: string): KeyEntityState => ({ keyId, rewrappedVersion: registry.getRewrappedVersion(keyId) ?? 0, waiters: [] });

  /** Signal-with-start: the entity exists from the first message on, whichever comes first. */
  async function signalKeyEntity<T>(keyId: string, taskQueue: string, signal: SignalDefinition<[T]>, arg: T): Promise<void> {
    await getClient().workflow.signalWithStart<typeof keyEntity, [T]>('keyEntity', {
      workflowId: keyEntityWorkflowId(keyId),
      taskQueue,
      args: [initialEntityState(keyId)],
      signal,
      signalArgs: [arg],
      ...keyEntityMetadata(keyId),
    });
  }

  async function startFollowRun(keyId: string, version: number, taskQueue: string): Promise<void> {
    const workflowId = rewrapWorkflowId(keyId, version);
    try {
      await getClient().workflow.start<typeof rotateRootKey>('rotateRootKey', {
        workflowId,
        taskQueue,
        args: [{ keyId, targetVersion: version, rotate: false }],
        workflowIdReusePolicy: 'ALLOW_DUPLICATE_FAILED_ONLY',
        staticSummary: `Follow the database engine re-encrypting its pages for key ${keyId} version ${version} (started for a waiting backup)`,
        staticDetails: `Key \`${keyId}\` is at version ${version}; a backup waits until the engine has re-encrypted its pages. This run rotates nothing: it follows the engine, then announces "complete (${keyId}, v${version})" to \`${keyEntityWorkflowId(keyId)}\`.`,
      });
    } catch (err) {
      if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    }
  }

  /** The window of batch calls a chunk starts with and may grow to, as the KMS serves them. */
  const lanes = (keyId: string) => {
    // Only a plain whole number counts: a wrapper that makes every method async returns a promise.
    const hint: unknown = kms.batchConcurrency?.(keyId);
    const max = typeof hint === 'number' && Number.isInteger(hint) && hint >= 1 ? Math.min(hint, MAX_LANES) : MAX_LANES;
    return { initial: Math.min(INITIAL_LANES, max), max };
  };

  /**
   * Operational work waits while the master key under the KMS's key storage changes (reference
   * 002). Checked before every KMS batch, not once per chunk: a rotation that starts mid-chunk
   * must stop WDEKs moving before its new master key is loaded. The progress so far is
   * heartbeated first, so the next attempt resumes where this one stopped.
   */
  async function holdForMasterKey(input: ChunkInput, what: string, progress?: Cursor, counts?: () => { total: number; stale: number }): Promise<void> {
    const masterKey = await keyStorageRotation?.();
    if (!masterKey?.inProgress) return;
    if (progress && progress.processed > 0) heartbeat(progress);
    throw ApplicationFailure.create({
      type: 'MASTER_KEY_ROTATION_IN_PROGRESS',
      // Runs that wait in the workflow are released by the rotation's end; older runs retry.
      nonRetryable: input.masterKeyHold === 'workflow',
      message: `${what} waits: ${masterKey.reason ?? 'a master-key rotation is running'}`,
      // What the held chunk moved before it stopped: the count shown while held stays exact.
      details: counts ? [counts()] : [],
    });
  }

  return {
    describeKey,

    /** Sets (or, without a interval, removes) the KMS's automatic rotation policy of a key. */
    async setRotationPolicy(input: { keyId: string; intervalMonths?: number }): Promise<KeyStatus> {
      return toStatus(await kmsCall(() => kms.setRotationPolicy(input.keyId, input.intervalMonths === undefined ? undefined : { intervalMonths: input.intervalMonths })));
    },

    async createKey(input: { name: string; kms?: string }): Promise<KeyStatus> {
      return toStatus(await kmsCall(() => kms.createKey(input)));
    },

    /** Keys keyops protects WDEKs with, for the watcher. */
    async listRegisteredKeys(): Promise<string[]> {
      const engineKeys = [...(engine?.engineKeys?.().keys() ?? [])];
      return Promise.resolve([...new Set([...registry.listKeys().map((k) => k.keyId), ...engineKeys])]);
    },

    /**
     * Brings the key to `targetVersion`. Idempotent twice over: the KMS remembers the request id
     * (the workflow id), and a key already at or past the target is not rotated again.
     */
    async rotateToVersion(input: { keyId: string; targetVersion: number; requestId: string }): Promise<{ version: number; rotated: boolean }> {
      const meta = await kmsCall(() => kms.getKeyMetadata(input.keyId));
      if (meta.currentVersion >= input.targetVersion) {
        // An earlier attempt of this activity may have rotated and lost the answer: that is
        // still this run's rotation. A first attempt finding it done was preceded by another
        // run with the same id (or by a policy, by hand): not this run's.
        const made = meta.versions.find((v) => v.version === input.targetVersion);
        return { version: meta.currentVersion, rotated: activityInfo().attempt > 1 && made?.requestId === input.requestId };
      }
      if (meta.currentVersion !== input.targetVersion - 1) {
        throw ApplicationFailure.create({
          type: 'STALE_TARGET_VERSION',
          nonRetryable: true,
          message: `key ${input.keyId} is at version ${meta.currentVersion}; cannot rotate it to version ${input.targetVersion}`,
        });
      }
      let sent = 0;
      const result = await kmsCall(() => (sent++, kms.rotateKey(input.keyId, input.requestId)));
      // A transient error after the KMS acted makes the retry find this request already done.
      return sent > 1 ? { ...result, rotated: true } : result;
    },

    async countWdeks(input: { keyId: string; version: number }): Promise<{ total: number; stale: number }> {
      const { total, below } = registry.countBelowVersion(input.keyId, input.version);
      return Promise.resolve({ total, stale: below });
    },

    /**
     * Rewraps up to `maxItems` WDEKs still below `version` in the chunk's id range. Each
     * registry write is a compare-and-set on the old version, so a retry after a crash never
     * double-applies; a WDEK rewrapped in the KMS but not yet recorded is simply rewrapped
     * again (same DEK). Whatever was rewrapped before a failure is recorded first, so every
     * attempt makes progress even against a KMS that fails often.
     *
     * A sliding window, not rounds: as many batch calls stay in flight as the adaptive window
     * allows, a new one is sent as soon as the oldest answers, and answers are recorded in id
     * order (the cursor only ever passes recorded WDEKs). Rounds would leave the KMS idle while
     * the slowest call of each round finished and while the registry wrote.
     */
    async rewrapChunk(input: ChunkInput): Promise<ChunkResult> {
      let { cursor, processed } = resumePoint(input);
      const range = () => ({ afterId: cursor, untilId: input.untilId });
      const counts = () => {
        const { total, below } = registry.countBelowVersion(input.keyId, input.version);
        return { total, stale: below };
      };
      const window = new AdaptiveConcurrency({ ...lanes(input.keyId), sleep: (ms) => sleep(ms), onWait: () => heartbeat({ cursor, processed } satisfies Cursor) });
      const report = throttleReporter(window);
      const counted = (finished: boolean): ChunkResult => ({ processed, cursor, finished, ...counts(), kms: window.snapshot() });
      const what = `rewrap of ${input.keyId}`;
      stopIfCancelled(what, { cursor, processed });
      await holdForMasterKey(input, what, undefined, counts);

      interface Part {
        rows: StoredWdek[];
        results: Promise<BatchResult<RewrapResult>>;
        answered: boolean;
      }
      /** Sent, not yet recorded, oldest (lowest ids) first. */
      const inFlight: Part[] = [];
      let readAfter = cursor;
      let room = input.maxItems - processed;
      let exhausted = false;
      let held = false;
      /**
       * Set when this attempt ends, however it ends: calls still in flight or waiting out a
       * throttle then send nothing more (a retry of the chunk sends those WDEKs itself, and each
       * would otherwise cost the KMS quota twice).
       */
      let stopped = false;
      /**
       * Sends parts until the window is full. The master-key hold is checked before every one:
       * a rotation that starts mid-chunk stops WDEKs moving before its new master key loads.
       */
      const fill = async () => {
        while (!exhausted && !held && room > 0 && inFlight.length < window.concurrency && !Context.current().cancellationSignal.aborted) {
          if ((await keyStorageRotation?.())?.inProgress) {
            held = true;
            return;
          }
          const rows = registry.listBelowVersion(input.keyId, input.version, { afterId: readAfter, untilId: input.untilId }, Math.min(input.batchSize, room));
          if (rows.length === 0) {
            exhausted = true;
            return;
          }
          readAfter = rows[rows.length - 1]!.id;
          room -= rows.length;
          // A throttle retry resends only what the KMS had not answered yet.
          const call = resumableBatch(
            rows.map((r) => r.wdek),
            (wdeks) => (stopped ? Promise.reject(new Error(`${what}: this attempt ended`)) : kms.rewrapBatch(input.keyId, wdeks)),
          );
          const part: Part = { rows, results: kmsCall(() => window.run(call)), answered: false };
          // Awaited in order later; one that fails while an older one is awaited must not go unhandled.
          part.results.then(
            () => (part.answered = true),
            () => undefined,
          );
          inFlight.push(part);
        }
      };

      /** Answered, not yet recorded: written together, so that a commit (an fsync) covers many parts. */
      let unrecorded: WdekUpdate[] = [];
      const record = () => {
        if (unrecorded.length === 0) return;
        registry.update(unrecorded);
        processed += unrecorded.length;
        cursor = unrecorded[unrecorded.length - 1]!.id;
        unrecorded = [];
        heartbeat({ cursor, processed } satisfies Cursor);
      };
      const groupSize = input.batchSize * RECORD_GROUP_PARTS;

      try {
        await fill();
        await pipeline();
      } catch (err) {
        // Whatever answered before the failure is recorded first: a retry resumes after it. A
        // failing registry write fails the same way again; the first error is the one to report.
        try {
          record();
        } catch {
          // reported below
        }
        throw err;
      } finally {
        stopped = true;
      }
      // A cancellation that came while the chunk was held or idle ends it as one, not as a chunk that finished.
      stopIfCancelled(what, { cursor, processed });
      return counted(registry.listBelowVersion(input.keyId, input.version, range(), 1).length === 0);

      async function pipeline(): Promise<void> {
        while (inFlight.length > 0 || held) {
          if (inFlight.length === 0) {
            // Held, and everything sent is recorded: the counts the hold carries are exact. It
            // throws while the rotation runs; one that ended meanwhile lets the chunk go on.
            record();
            await holdForMasterKey(input, what, undefined, counts);
            held = false;
            await fill();
            continue;
          }
          // About to wait: what already answered is recorded now, not after a Retry-After.
          if (!inFlight[0]!.answered) record();
          await inFlight[0]!.results.catch((err: unknown) => {
            // What was rewrapped before the failure is recorded first: a retry resumes after it.
            record();
            // A stopping worker cancels a throttle pause or a retry sleep too: report it as the
            // shutdown it is (resumed at once elsewhere), not as a cancellation nobody asked for.
            stopIfCancelled(what, { cursor, processed });
            throw err;
          });
          // The oldest and every answered part right behind it.
          let ready = 1;
          while (ready < inFlight.length && inFlight[ready]!.answered) ready++;
          const parts = inFlight.splice(0, ready);
          // Their places go to the KMS before these are recorded: it works while the registry writes.
          await fill();
          report();
          let invalid: { id: string; error: KmsError } | undefined;
          for (const part of parts) {
            const results = await part.results;
            if (results.length !== part.rows.length) {
              // Rows past the answered ones would be skipped and the chunk reported finished.
              record();
              throw ApplicationFailure.create({ type: 'KMS_UNAVAILABLE', message: `the KMS answered ${results.length} of ${part.rows.length} WDEKs of key ${input.keyId} in a batch` });
            }
            for (const [i, result] of results.entries()) {
              const row = part.rows[i]!;
              if (result instanceof KmsError) {
                invalid = { id: row.id, error: result };
                break;
              }
              unrecorded.push({ id: row.id, wdek: result.wdek, keyVersion: result.keyVersion, expectedVersion: row.keyVersion, expectedWdek: row.wdek });
            }
            if (invalid) break;
          }
          const stopping = Context.current().cancellationSignal.aborted;
          // Recorded in groups; always before the chunk stops, holds or ends, so a retry resumes
          // after every WDEK this attempt moved, and the counts a hold carries are exact.
          if (unrecorded.length >= groupSize || inFlight.length === 0 || invalid || stopping) record();
          if (invalid) {
            throw ApplicationFailure.create({
              type: 'CIPHERTEXT_INVALID',
              nonRetryable: true,
              message: `WDEK ${invalid.id} of key ${input.keyId} is invalid or tampered: ${invalid.error.message}`,
            });
          }
          stopIfCancelled(what, { cursor, processed });
          // A local KMS answers without I/O: without this, a whole chunk would run as one task
          // and starve every other activity and timer of this worker (a nightly backup's among them).
          await yieldToEventLoop();
        }
        record();
      }
    },

    /**
     * Checks that every WDEK in the chunk's range is recorded on `version` and really unwraps
     * under it. A sliding window like rewrap's: rounds would leave the KMS (and a rate-limit
     * quota) idle while each round's slowest or throttled call finished.
     */
    async verifyChunk(input: ChunkInput): Promise<VerifyResult> {
      const resumed = resumePoint(input);
      let { cursor, processed } = resumed;
      const failedIds = resumed.failedIds ?? [];
      let failed = resumed.failed ?? 0;
      const progress = (): Cursor => ({ cursor, processed, failed, failedIds });
      const range = () => ({ afterId: cursor, untilId: input.untilId });
      // "On the version or later": a rotation that happened meanwhile (policy, operator) moves
      // WDEKs past the target, which still satisfies it; the watcher rewraps to the newer one.
      const current = (v: number) => v >= input.version;
      const window = new AdaptiveConcurrency({ ...lanes(input.keyId), sleep: (ms) => sleep(ms), onWait: () => heartbeat(progress()) });
      const report = throttleReporter(window);
      const what = `verification of ${input.keyId}`;
      stopIfCancelled(what, progress());
      await holdForMasterKey(input, what, progress());

      interface Part {
        rows: StoredWdek[];
        /** Positions in `rows` of the WDEKs recorded on the version: only those go to the KMS. */
        onVersion: number[];
        results: Promise<BatchResult<Unwrapped>>;
        answered: boolean;
      }
      /** Sent, not yet counted, oldest (lowest ids) first. */
      const inFlight: Part[] = [];
      let readAfter = cursor;
      let room = input.maxItems - processed;
      let exhausted = false;
      let held = false;
      /** Set when this attempt ends: calls waiting out a throttle then send nothing more. */
      let stopped = false;
      const fill = async () => {
        while (!exhausted && !held && room > 0 && inFlight.length < window.concurrency && !Context.current().cancellationSignal.aborted) {
          if ((await keyStorageRotation?.())?.inProgress) {
            held = true;
            return;
          }
          const rows = registry.list(input.keyId, { afterId: readAfter, untilId: input.untilId }, Math.min(input.batchSize, room));
          if (rows.length === 0) {
            exhausted = true;
            return;
          }
          readAfter = rows[rows.length - 1]!.id;
          room -= rows.length;
          const onVersion = rows.flatMap((r, i) => (current(r.keyVersion) ? [i] : []));
          const call = resumableBatch(
            onVersion.map((i) => rows[i]!.wdek),
            (wdeks) => (stopped ? Promise.reject(new Error(`${what}: this attempt ended`)) : unwrapForCheck(kms, input.keyId, wdeks)),
          );
          const part: Part = { rows, onVersion, results: onVersion.length > 0 ? kmsCall(() => window.run(call)) : Promise.resolve([]), answered: false };
          part.results.then(
            () => (part.answered = true),
            () => undefined,
          );
          inFlight.push(part);
        }
      };
      const tally = (part: Part, results: BatchResult<Unwrapped>) => {
        const ok = part.rows.map(() => false);
        results.forEach((result, j) => {
          if (result instanceof KmsError) return;
          ok[part.onVersion[j]!] = current(result.keyVersion);
        });
        part.rows.forEach((record, i) => {
          if (ok[i]) return;
          failed++;
          if (failedIds.length < 20) failedIds.push(record.id);
        });
        processed += part.rows.length;
        cursor = part.rows[part.rows.length - 1]!.id;
      };

      try {
        await fill();
        while (inFlight.length > 0 || held) {
          if (inFlight.length === 0) {
            // Everything sent is counted: throws while the rotation runs, goes on once it ended.
            await holdForMasterKey(input, what, progress());
            held = false;
            await fill();
            continue;
          }
          await inFlight[0]!.results.catch((err: unknown) => {
            stopIfCancelled(what, progress());
            throw err;
          });
          let ready = 1;
          while (ready < inFlight.length && inFlight[ready]!.answered) ready++;
          const parts = inFlight.splice(0, ready);
          // Their places go to the KMS before these are counted.
          await fill();
          report();
          for (const part of parts) tally(part, await part.results);
          heartbeat(progress());
          stopIfCancelled(what, progress());
          await yieldToEventLoop();
        }
      } finally {
        stopped = true;
      }
      stopIfCancelled(what, progress());
      return { processed, cursor, finished: registry.list(input.keyId, range(), 1).length === 0, failedIds, failed, kms: window.snapshot() };
    },

    /** Ids that split the key's WDEKs into `parts` ranges, so chunks can run on several workers. */
    async partitionWdeks(input: { keyId: string; parts: number }): Promise<string[]> {
      return Promise.resolve(registry.partitionIds(input.keyId, input.parts));
    },

    async recordRewrappedVersion(input: RewrapComplete): Promise<void> {
      // Databases keep their WDEKs beside them too: those follow first, so that a registry lost
      // after this point is rebuilt at the rewrapped version, not one behind.
      if (engine) await typed(() => engine.followRewrap(input.keyId));
      registry.setRewrappedVersion(input.keyId, input.version);
    },

    /** Asks the key's entity workflow (starting it if needed) to signal `workflowId` at `minVersion`. */
    async registerRewrapWaiter(input: RewrapWaiter & { keyId: string; taskQueue: string }): Promise<void> {
      await signalKeyEntity(input.keyId, input.taskQueue, awaitRewrapSignal, { workflowId: input.workflowId, minVersion: input.minVersion });
      // An engine's own key may have been rotated outside keyops (a KV write by hand): the run
      // that follows the engine and announces "complete" starts now, as the watcher would start
      // it within the hour. Its id names the version: a run already there is joined, not repeated.
      if (engine?.engineKeys?.().has(input.keyId)) await startFollowRun(input.keyId, input.minVersion, input.taskQueue);
    },

    /**
     * The key entity's release of its waiters, run as its local activity: a signal sent from here
     * is written straight into the waiter's history, where one sent by the workflow is a
     * server-side task that also writes back into the entity's history, one after another. In a
     * busy night that put 100 ms between consecutive waiters. Every waiter is tried; if any
     * signal failed for another reason than its waiter having ended, the attempt fails and the
     * retry signals them all again, which is harmless (a waiter keeps the highest version).
     * Returns how many had ended (on a retry, also those the earlier attempt released).
     */
    async releaseRewrapWaiters(input: RewrapComplete & { workflowIds: string[] }): Promise<{ closed: number }> {
      let closed = 0;
      const failures: string[] = [];
      for (let i = 0; i < input.workflowIds.length; i += RELEASE_CONCURRENCY) {
        await Promise.all(
          input.workflowIds.slice(i, i + RELEASE_CONCURRENCY).map(async (workflowId) => {
            try {
              await getClient().workflow.getHandle(workflowId).signal(rewrapCompleteSignal, { keyId: input.keyId, version: input.version });
            } catch (err) {
              if (err instanceof WorkflowNotFoundError) closed++;
              else failures.push(`${workflowId}: ${err instanceof Error ? err.message : String(err)}`);
            }
          }),
        );
      }
      if (failures.length) throw new Error(`${failures.length} of ${input.workflowIds.length} waiters of key ${input.keyId} were not signalled, e.g. ${failures[0]}`);
      return { closed };
    },

    /**
     * Tells the key's entity workflow (starting it if needed) that rewrap reached `version`;
     * the entity releases every waiter. Signalling twice is harmless.
     */
    async announceRewrapComplete(input: RewrapComplete & { taskQueue: string }): Promise<void> {
      await signalKeyEntity(input.keyId, input.taskQueue, rewrapCompleteSignal, { keyId: input.keyId, version: input.version });
    },
  };
}
