import {
  ActivityFailure,
  ApplicationFailure,
  ContinueAsNew,
  condition,
  continueAsNew,
  patched,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import { KeyIdAttribute, KeyVersionAttribute, OutcomeAttribute, PhaseAttribute } from './search-attributes';
import { bulkTaskQueue } from './task-queue';
import { isEngineKey, keyEntityWorkflowId, rewrapKmsThrottleSignal, rewrapProgressQuery, type KmsThrottle, type RewrapPhase, type RewrapProgress } from './root-key-messages';
import { masterKeyRotationEndedSignal, type MasterKeyWait } from './master-key-messages';
import { z } from 'zod';
import { keyIdSchema, parseInput, parseSignal, positiveIntSchema, versionSchema } from './workflow-input';

export interface RotateRootKeyInput {
  keyId: string;
  /** The version every WDEK ends on; the workflow id `rewrap/<keyId>/v<targetVersion>` names it. */
  targetVersion: number;
  /** false when the KMS already rotated (policy or by hand): rewrap only. */
  rotate: boolean;
  /** WDEKs per activity call (progress is reported per chunk). */
  chunkSize?: number;
  /** WDEKs per registry transaction and heartbeat. */
  batchSize?: number;
  /** Continue-as-new past this many history events (tests lower it). */
  maxHistoryEvents?: number;
  /** Id ranges rewrapped and verified concurrently: one chunk per range at a time (default 2). */
  parallelism?: number;
  /** Progress carried across continue-as-new. */
  carried?: { progress: RewrapProgress; partitions: Partition[] };
}

/** One id range of the key's WDEKs and how far the current phase got in it. */
interface Partition {
  afterId: string | undefined;
  untilId: string | undefined;
  cursor: string | undefined;
  finished: boolean;
}

const DEFAULT_CHUNK = 50_000;
const DEFAULT_BATCH = 500;
const DEFAULT_MAX_HISTORY = 2_000;
// Two ranges keep two workers (or cores) busy; more workers scale out with a higher value.
const DEFAULT_PARALLELISM = 2;

// Bounded: about 15 minutes of a KMS or store that keeps failing ends the run with its error
// (the watcher starts it again later) instead of leaving it, and `key rotate --wait`, hanging.
const retry = { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 20 };

const { describeKey, rotateToVersion, countWdeks, partitionWdeks, recordRewrappedVersion, announceRewrapComplete, registerMasterKeyWaiter } = proxyActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry,
});

// An engine re-encrypting a large database takes hours; heartbeats prove the follow is alive.
const { followReencryption } = proxyActivities<Activities>({
  startToCloseTimeout: '24 hours',
  heartbeatTimeout: '30 seconds',
  retry: { initialInterval: '2 seconds', backoffCoefficient: 2, maximumInterval: '1 minute' },
});

// Long chunks: heartbeats prove liveness, so a dead worker is noticed in 30 s, not at the timeout.
const { rewrapChunk, verifyChunk } = proxyActivities<Activities>({
  startToCloseTimeout: '30 minutes',
  heartbeatTimeout: '30 seconds',
  retry,
});

/** Without a signal (a rotation keyops does not run), a held rewrap re-checks this often. */
const MASTER_KEY_RECHECK = '1 minute';

interface MasterKeyHold {
  reason: string;
  /** A held rewrap chunk's count of the key's WDEKs and those still below the version. */
  counts?: { total: number; stale: number };
}

/** Why a chunk was held by a master-key rotation, or undefined for any other failure. */
function masterKeyHoldOf(err: unknown): MasterKeyHold | undefined {
  if (!(err instanceof ActivityFailure) || !(err.cause instanceof ApplicationFailure)) return undefined;
  if (err.cause.type !== 'MASTER_KEY_ROTATION_IN_PROGRESS') return undefined;
  const counts = err.cause.details?.[0] as MasterKeyHold['counts'];
  return { reason: err.cause.message, ...(counts ? { counts } : {}) };
}

/** Of several counts taken as chunks ended, the latest: the one with the fewest WDEKs still to move. */
function latestCount(counts: { total: number; stale: number }[]): { total: number; rewrapped: number } | undefined {
  const latest = [...counts].sort((a, b) => a.stale - b.stale)[0];
  return latest && { total: latest.total, rewrapped: latest.total - latest.stale };
}

/** A bad number here would loop or finish without work; refuse it before anything happens. */
function checkInput(input: RotateRootKeyInput): void {
  parseInput(
    'rotateRootKey',
    z.object({
      keyId: keyIdSchema,
      targetVersion: versionSchema,
      rotate: z.boolean(),
      chunkSize: positiveIntSchema.optional(),
      batchSize: positiveIntSchema.optional(),
      maxHistoryEvents: positiveIntSchema.optional(),
      parallelism: positiveIntSchema.max(64).optional(),
      carried: z.unknown().optional(),
    }),
    input,
  );
  const positive: [string, number | undefined][] = [
    ['targetVersion', input.targetVersion],
    ['chunkSize', input.chunkSize],
    ['batchSize', input.batchSize],
    ['parallelism', input.parallelism],
    ['maxHistoryEvents', input.maxHistoryEvents],
  ];
  for (const [name, value] of positive) {
    if (value !== undefined && !(Number.isInteger(value) && value > 0)) {
      throw ApplicationFailure.nonRetryable(`${name} must be a positive whole number, got ${String(value)}`, 'INVALID_INPUT');
    }
  }
  if (typeof input.keyId !== 'string' || input.keyId.length === 0) {
    throw ApplicationFailure.nonRetryable('keyId is required', 'INVALID_INPUT');
  }
}

/**
 * Root-key rotation in a KMS and rewrap of every WDEK the key protects: rotate (at most once,
 * however often this is retried) → rewrap in chunks → verify every WDEK unwraps under the new
 * version → record it → announce "rewrap complete (key, version)" to the key's entity, which
 * releases waiting backups. The workflow id is the idempotency key.
 */
export async function rotateRootKey(input: RotateRootKeyInput): Promise<RewrapProgress> {
  try {
    return await rotateAndRewrap(input);
  } catch (err) {
    // So `Outcome = "failed"` finds it in the Web UI; continue-as-new is not a failure.
    if (!(err instanceof ContinueAsNew)) upsertSearchAttributes([{ key: OutcomeAttribute, value: 'failed' }]);
    throw err;
  }
}

async function rotateAndRewrap(input: RotateRootKeyInput): Promise<RewrapProgress> {
  checkInput(input);
  const chunkSize = input.chunkSize ?? DEFAULT_CHUNK;
  const batchSize = input.batchSize ?? DEFAULT_BATCH;
  const maxHistory = input.maxHistoryEvents ?? DEFAULT_MAX_HISTORY;
  const progress: RewrapProgress = input.carried?.progress ?? {
    keyId: input.keyId,
    phase: 'rotating',
    targetVersion: input.targetVersion,
    rotated: false,
    total: 0,
    rewrapped: 0,
    verified: 0,
  };
  let partitions: Partition[] = input.carried?.partitions ?? [];
  setHandler(rewrapProgressQuery, () => progress, { description: 'Phase, WDEKs done/total and versions' });
  // A chunk held by a master-key rotation under the KMS (reference 002) fails at once, and the
  // run waits here until the rotation's end is signalled: however long the rotation takes, it
  // spends none of the chunk's retry budget. Runs started before this retried the chunk instead.
  const hold = patched('rewrap-master-key-hold');
  let masterKeyEnded = false;
  let registered: MasterKeyWait | undefined;
  setHandler(masterKeyRotationEndedSignal, () => void (masterKeyEnded = true), {
    description: 'The master-key rotation holding this rewrap ended: resume the held chunks',
  });

  let details = '';
  const showDetails = () => {
    const kms = progress.kms;
    const throttling = kms && kms.throttled > 0 ? `\n\nKMS throttling: ${kms.throttled} call(s) refused and retried, ${Math.round(kms.waitedMs / 1000)} s waited; ${kms.concurrency} batch call(s) in flight` : '';
    setCurrentDetails(`**${progress.phase}** key \`${input.keyId}\` to version ${input.targetVersion}: ${details}${throttling}`);
  };
  const enter = (phase: RewrapPhase, text: string) => {
    progress.phase = phase;
    details = text;
    upsertSearchAttributes([
      { key: PhaseAttribute, value: phase },
      { key: KeyIdAttribute, value: input.keyId },
      { key: KeyVersionAttribute, value: input.targetVersion },
    ]);
    showDetails();
  };
  // Chunks report throttling as it happens; the details show it without waiting for the chunk.
  const throttledBy = (kms: KmsThrottle | undefined) => {
    if (!kms || kms.throttled === 0) return;
    progress.kms = { concurrency: kms.concurrency, throttled: Math.max(kms.throttled, progress.kms?.throttled ?? 0), waitedMs: Math.max(kms.waitedMs, progress.kms?.waitedMs ?? 0) };
    showDetails();
  };
  const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
  const throttleSchema = z.object({ concurrency: count, throttled: count, waitedMs: count }).strict();
  setHandler(rewrapKmsThrottleSignal, (kms) => throttledBy(parseSignal('rewrapKmsThrottle', throttleSchema, kms)), { description: 'A chunk reports how the KMS throttles it (shown in the details)' });
  const shouldContinueAsNew = () => workflowInfo().continueAsNewSuggested || workflowInfo().historyLength > maxHistory;
  const continueWith = () => continueAsNew<typeof rotateRootKey>({ ...input, carried: { progress, partitions } });
  const restart = () => partitions.forEach((p) => Object.assign(p, { cursor: undefined, finished: false }));
  const chunkArgs = (p: Partition) => ({
    keyId: input.keyId,
    version: input.targetVersion,
    afterId: p.cursor ?? p.afterId,
    untilId: p.untilId,
    maxItems: chunkSize,
    batchSize,
    ...(hold ? { masterKeyHold: 'workflow' as const } : {}),
  });
  /**
   * Runs one chunk per open range. Fulfilled chunks are returned beside their range; held ones
   * leave theirs open and the run waits for the rotation's end; any other failure fails the run.
   */
  const runChunks = async <T>(phase: RewrapPhase, open: Partition[], start: (p: Partition) => Promise<T>): Promise<[Partition, T][]> => {
    if (!hold) return (await Promise.all(open.map(start))).map((chunk, i) => [open[i]!, chunk]);
    const settled = await Promise.allSettled(open.map(start));
    const failures = settled.flatMap((s) => (s.status === 'rejected' ? [s.reason as Error] : []));
    const other = failures.find((f) => masterKeyHoldOf(f) === undefined);
    if (other) throw other;
    const done = settled.flatMap((s, i): [Partition, T][] => (s.status === 'fulfilled' ? [[open[i]!, s.value]] : []));
    const holds = failures.flatMap((f) => masterKeyHoldOf(f) ?? []);
    if (holds.length > 0) {
      const counted = latestCount(holds.flatMap((h) => h.counts ?? []));
      if (counted) Object.assign(progress, counted);
      progress.heldBy = holds[0]!.reason;
      enter(phase, `held: ${progress.heldBy}; resumes when the master-key rotation ends`);
      // Asked once per rotation: a re-check while the rotation still owes its signal asks
      // nothing again (each request would be an event in the rotation's history).
      if (registered !== 'signal' || masterKeyEnded) {
        masterKeyEnded = false;
        registered = await registerMasterKeyWaiter.executeWithOptions({ summary: `ask the master-key rotation under the KMS to release this rewrap of ${key} when it ends` }, [
          { workflowId: workflowInfo().workflowId },
        ]);
      }
      if (registered !== 'ended') {
        await condition(() => masterKeyEnded, MASTER_KEY_RECHECK, { summary: `rewrap of ${key} held: wait for the master-key rotation under the KMS to end (released by its signal), re-checking after ${MASTER_KEY_RECHECK}` });
      }
      delete progress.heldBy;
    }
    return done;
  };
  // One CPU-bound chunk per worker process at a time: parallel ranges land on different cores.
  const bulk = bulkTaskQueue(workflowInfo().taskQueue);
  const where = (p: Partition) => `after ${p.cursor ?? p.afterId ?? 'the start'}${p.untilId ? ` up to ${p.untilId}` : ''}`;
  // The Web UI shows each activity by its summary: say what the call does for this key and version.
  const key = `key ${input.keyId}`;
  const version = `version ${input.targetVersion}`;

  if (progress.phase === 'rotating') {
    enter('rotating', input.rotate ? 'creating the new key version' : 'the KMS already rotated; checking the version');
    if (input.rotate) {
      const result = await rotateToVersion.executeWithOptions({ summary: `rotate ${key} to ${version} in the KMS (at most once for this run)` }, [
        { keyId: input.keyId, targetVersion: input.targetVersion, requestId: workflowInfo().workflowId },
      ]);
      progress.rotated = result.rotated;
    } else {
      const current = await describeKey.executeWithOptions({ summary: `check that the KMS already rotated ${key} to ${version} or later (rewrap only)` }, [input.keyId]);
      if (current.currentVersion < input.targetVersion) {
        throw ApplicationFailure.nonRetryable(
          `key ${input.keyId} is at version ${current.currentVersion}, below the requested ${input.targetVersion}`,
          'STALE_TARGET_VERSION',
        );
      }
    }
    const counts = await countWdeks.executeWithOptions({ summary: `count the WDEKs of ${key} and those not yet on ${version}` }, [
      { keyId: input.keyId, version: input.targetVersion },
    ]);
    progress.total = counts.total;
    progress.rewrapped = counts.total - counts.stale;
    const parts = input.parallelism ?? DEFAULT_PARALLELISM;
    const bounds = await partitionWdeks.executeWithOptions({ summary: `split the ${counts.total} WDEKs of ${key} into ${parts} id ranges` }, [{ keyId: input.keyId, parts }]);
    partitions = [...bounds, undefined].map((untilId, i) => ({ afterId: bounds[i - 1], untilId, cursor: undefined, finished: false }));
    progress.phase = 'rewrapping';
  }

  if (progress.phase === 'rewrapping') {
    for (let open = partitions.filter((p) => !p.finished); open.length; open = partitions.filter((p) => !p.finished)) {
      enter('rewrapping', `${progress.rewrapped}/${progress.total} WDEKs on the new version`);
      const chunks = await runChunks('rewrapping', open, (p) =>
        rewrapChunk.executeWithOptions({ summary: `rewrap up to ${chunkSize} WDEKs of ${key} to ${version}, ids ${where(p)}`, taskQueue: bulk }, [chunkArgs(p)]),
      );
      for (const [p, chunk] of chunks) {
        Object.assign(p, { cursor: chunk.cursor ?? p.cursor, finished: chunk.finished });
        progress.rewrapped = Math.min(progress.total, progress.rewrapped + chunk.processed);
        throttledBy(chunk.kms);
      }
      // A chunk retried from an older heartbeat under-reports what it moved; the registry's own
      // count at the end of the latest chunk is exact (older workers do not send it).
      const counted = latestCount(chunks.flatMap(([, c]) => (c.stale === undefined || c.total === undefined ? [] : [{ total: c.total, stale: c.stale }])));
      if (counted) Object.assign(progress, counted);
      if (partitions.some((p) => !p.finished) && shouldContinueAsNew()) return continueWith();
    }
    progress.phase = 'verifying';
    restart();
  }

  if (progress.phase === 'verifying') {
    for (let open = partitions.filter((p) => !p.finished); open.length; open = partitions.filter((p) => !p.finished)) {
      enter('verifying', `${progress.verified}/${progress.total} WDEKs unwrap under version ${input.targetVersion}`);
      const chunks = await runChunks('verifying', open, (p) =>
        verifyChunk.executeWithOptions({ summary: `verify up to ${chunkSize} WDEKs of ${key} unwrap under ${version}, ids ${where(p)}`, taskQueue: bulk }, [chunkArgs(p)]),
      );
      const failed = chunks.reduce((n, [, c]) => n + c.failed, 0);
      if (failed > 0) {
        throw ApplicationFailure.nonRetryable(
          `${failed} WDEK(s) of key ${input.keyId} are not on version ${input.targetVersion} or do not unwrap: ${chunks.flatMap(([, c]) => c.failedIds).slice(0, 20).join(', ')}`,
          'REWRAP_VERIFICATION_FAILED',
        );
      }
      for (const [p, chunk] of chunks) {
        Object.assign(p, { cursor: chunk.cursor ?? p.cursor, finished: chunk.finished });
        progress.verified += chunk.processed;
        throttledBy(chunk.kms);
      }
      if (partitions.some((p) => !p.finished) && shouldContinueAsNew()) return continueWith();
    }
    progress.total = progress.verified;
    progress.phase = 'recording';
  }

  // An engine's own key has no WDEKs (the chunks above found none): its consumer is the engine,
  // which re-encrypts its pages itself. "Complete" waits for it. (Only engine keys, which older
  // workers never rotated, take this step.)
  if (isEngineKey(input.keyId) && patched('follow-engine-reencryption')) {
    enter('following', `waiting for the database engines to re-encrypt their pages for ${version}`);
    const followed = await followReencryption.executeWithOptions(
      { summary: `follow the engines that re-encrypt their pages under ${key} until every page needing it is on ${version} (heartbeats: tablespaces and pages still to move)` },
      [{ keyId: input.keyId, version: input.targetVersion }],
    );
    progress.engines = followed.consumers.map((c) => ({ databaseId: c.databaseId, spaces: c.spaces, oldestVersionNeeded: c.oldestVersionNeeded }));
  }

  enter('recording', 'recording the rewrapped version');
  await recordRewrappedVersion.executeWithOptions({ summary: `record ${version} as the rewrapped version of ${key}` }, [
    { keyId: input.keyId, version: input.targetVersion },
  ]);
  enter('announcing', 'releasing workflows that wait for this rewrap');
  await announceRewrapComplete.executeWithOptions({ summary: `announce "rewrap complete (${input.keyId}, v${input.targetVersion})" to ${keyEntityWorkflowId(input.keyId)}, which releases waiting backups` }, [
    { keyId: input.keyId, version: input.targetVersion, taskQueue: workflowInfo().taskQueue },
  ]);
  enter('done', `${progress.total} WDEKs rewrapped and verified`);
  upsertSearchAttributes([{ key: OutcomeAttribute, value: 'succeeded' }]);
  return progress;
}
