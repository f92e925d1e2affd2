import {
  ApplicationFailure,
  condition,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import { keyEntityWorkflowId, rewrapCompleteSignal } from './root-key-messages';
import { KeyIdAttribute, KeyVersionAttribute, PhaseAttribute } from './search-attributes';
import { z } from 'zod';
import { durationMsSchema, keyIdSchema, parseInput, parseSignal, versionSchema } from './workflow-input';

const { describeKey, registerRewrapWaiter } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1 second', maximumInterval: '1 minute' },
});

export interface AwaitRewrapInput {
  keyId: string;
  /** Released once every WDEK of the key is on this version or later. */
  minVersion: number;
  /** Give up after this long (ms); default 6 hours, the bounded wait of DESIGN.md. */
  timeoutMs?: number;
  /** Re-read the registry this often (ms), so a lost signal cannot block forever; default 10 min. */
  recheckEveryMs?: number;
}

export interface AwaitRewrapResult {
  keyId: string;
  version: number;
  releasedBy: 'already-rewrapped' | 'signal' | 'recheck';
  waitedMs: number;
}

const awaitRewrapInputSchema = z.object({ keyId: keyIdSchema, minVersion: versionSchema, timeoutMs: durationMsSchema.optional(), recheckEveryMs: durationMsSchema.optional() });

/**
 * Waits for "rewrap complete (key, version)" without a fixed sleep. It registers with the key's
 * entity workflow, which signals it in order with the announcement, whether the rewrap ended
 * before, during or after the registration; periodic re-checks of the registry are the backstop.
 * Nightly backups are meant to reuse this wait.
 */
export async function awaitRewrap(input: AwaitRewrapInput): Promise<AwaitRewrapResult> {
  parseInput('awaitRewrap', awaitRewrapInputSchema, input);
  const started = Date.now();
  const deadline = started + (input.timeoutMs ?? 6 * 3600_000);
  const recheckEvery = input.recheckEveryMs ?? 10 * 60_000;
  let reached: number | undefined;
  let releasedBy: AwaitRewrapResult['releasedBy'] = 'signal';

  setHandler(rewrapCompleteSignal, (payload) => {
    const done = parseSignal('rewrapComplete', z.object({ keyId: z.string(), version: versionSchema }), payload);
    if (done && done.keyId === input.keyId && done.version >= input.minVersion) reached = Math.max(reached ?? 0, done.version);
  });
  upsertSearchAttributes([
    { key: KeyIdAttribute, value: input.keyId },
    { key: KeyVersionAttribute, value: input.minVersion },
    { key: PhaseAttribute, value: 'awaiting-rewrap' },
  ]);

  // The Web UI lists each activity and timer by its summary: name the key and version awaited.
  const key = await describeKey.executeWithOptions({ summary: `check whether key ${input.keyId} was already rewrapped to version ${input.minVersion}` }, [input.keyId]);
  if ((key.rewrappedVersion ?? 0) >= input.minVersion) {
    reached = key.rewrappedVersion;
    releasedBy = 'already-rewrapped';
  } else {
    await registerRewrapWaiter.executeWithOptions({ summary: `ask ${keyEntityWorkflowId(input.keyId)} to signal this run when the rewrap reaches version ${input.minVersion}` }, [
      { keyId: input.keyId, workflowId: workflowInfo().workflowId, minVersion: input.minVersion, taskQueue: workflowInfo().taskQueue },
    ]);
  }
  while (reached === undefined) {
    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      throw ApplicationFailure.nonRetryable(
        `rewrap of key ${input.keyId} did not reach version ${input.minVersion} within ${Math.round((deadline - started) / 60_000)} min`,
        'REWRAP_WAIT_TIMEOUT',
      );
    }
    setCurrentDetails(`Waiting for every consumer of key \`${input.keyId}\` (its WDEKs, or the engine re-encrypting its pages) to reach version ${input.minVersion} (signal from \`key/${input.keyId}\`, re-check every ${Math.round(recheckEvery / 60_000)} min)`);
    const timeout = Math.min(recheckEvery, remaining);
    const then = timeout < recheckEvery ? 'the bounded wait ends after this' : 'then re-check the key';
    const summary = `wait for "rewrap complete (${input.keyId}, v${input.minVersion})" from ${keyEntityWorkflowId(input.keyId)}; ${then}`;
    if (await condition(() => reached !== undefined, timeout, { summary })) break;
    const now = await describeKey.executeWithOptions({ summary: `re-check whether key ${input.keyId} was rewrapped to version ${input.minVersion} (no signal yet)` }, [input.keyId]);
    if ((now.rewrappedVersion ?? 0) >= input.minVersion) {
      reached = now.rewrappedVersion;
      releasedBy = 'recheck';
    }
  }
  upsertSearchAttributes([{ key: PhaseAttribute, value: 'done' }]);
  setCurrentDetails(`Key \`${input.keyId}\` reached version ${reached} (${releasedBy})`);
  return { keyId: input.keyId, version: reached!, releasedBy, waitedMs: Date.now() - started };
}
