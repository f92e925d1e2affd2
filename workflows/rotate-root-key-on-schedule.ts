import {
  ApplicationFailure,
  ParentClosePolicy,
  WorkflowIdReusePolicy,
  executeChild,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  startChild,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import type { Activities } from '../activities';
import { awaitRewrap } from './await-rewrap';
import { KMS_ROTATION_SPACING_MS, rewrapWorkflowId } from './root-key-messages';
import { rotateRootKey } from './rotate-root-key';
import { scheduledRotationQuery, type ScheduledRotationPhase, type ScheduledRotationProgress } from './scheduled-rotation-messages';
import { KeyIdAttribute, KeyVersionAttribute, OutcomeAttribute, PhaseAttribute } from './search-attributes';
import { z } from 'zod';
import { durationMsSchema, keyIdSchema, parseInput } from './workflow-input';

const { describeKey } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 10 },
});

export interface RotateRootKeyOnScheduleInput {
  keyId: string;
  /** Bounded wait for a rewrap that was already pending when the schedule fired (default 6 h). */
  pendingRewrapWaitMs?: number;
}

// A KMS clock a little behind ours must not refuse the rotation we waited for.
const QUOTA_MARGIN_MS = 5_000;

const rotateRootKeyOnScheduleInputSchema = z.object({ keyId: keyIdSchema, pendingRewrapWaitMs: durationMsSchema.optional() });

/**
 * What a `rotations:` entry of the schedule file starts every N days: picks the next version and
 * runs the rotation and rewrap `rewrap/<keyId>/v<next>` as a child, so the same run a manual
 * `keyops key rotate` starts does the work. A rewrap still pending from a rotation the KMS did
 * by itself is finished first, so the two never rewrap the same WDEKs at once; a rotation done by
 * hand within the hour is waited out rather than refused by the KMS.
 */
export async function rotateRootKeyOnSchedule(input: RotateRootKeyOnScheduleInput): Promise<ScheduledRotationProgress> {
  parseInput('rotateRootKeyOnSchedule', rotateRootKeyOnScheduleInputSchema, input);
  const progress: ScheduledRotationProgress = { keyId: input.keyId, phase: 'checking', rotated: false, rewrapped: 0 };
  setHandler(scheduledRotationQuery, () => progress, { description: 'Phase and versions of this scheduled rotation' });
  const enter = (phase: ScheduledRotationPhase, details: string) => {
    progress.phase = phase;
    upsertSearchAttributes([
      { key: PhaseAttribute, value: phase },
      { key: KeyIdAttribute, value: input.keyId },
      ...(progress.toVersion === undefined ? [] : [{ key: KeyVersionAttribute, value: progress.toVersion }]),
    ]);
    setCurrentDetails(`**${phase}** scheduled rotation of key \`${input.keyId}\`: ${details}`);
  };
  // Sleeps (durably) until the KMS allows the next rotation, plus a margin for clock skew.
  const waitForQuota = async (allowedAt: number) => {
    if (allowedAt + QUOTA_MARGIN_MS <= Date.now()) return;
    const until = new Date(allowedAt + QUOTA_MARGIN_MS).toISOString();
    enter('awaiting-quota', `the KMS allows the next rotation at ${new Date(allowedAt).toISOString()}; waiting until ${until}`);
    await sleep(allowedAt + QUOTA_MARGIN_MS - Date.now(), { summary: `wait until ${until}: the KMS allows one rotation of key ${input.keyId} per hour` });
  };
  try {
    enter('checking', 'reading the key');
    const readKey = (why: string) => describeKey.executeWithOptions({ summary: `read key ${input.keyId}: ${why}` }, [input.keyId]);
    let key = await readKey('its version, last rotation and rewrapped version');
    if (key.state === 'disabled') {
      throw ApplicationFailure.nonRetryable(`key ${input.keyId} is disabled: the KMS refuses to rotate it`, 'KEY_DISABLED');
    }
    // Until the WDEKs have caught up: the KMS may rotate again (its policy) while we wait.
    while ((key.rewrappedVersion ?? 0) < key.currentVersion) {
      const pending = key.currentVersion;
      enter('awaiting-rewrap', `the KMS is at version ${pending} but WDEKs are recorded on ${key.rewrappedVersion ?? 'no version'}: finishing that rewrap first`);
      await startRewrap(input.keyId, pending, false, 'pending when the scheduled rotation fired').catch(ignoreAlreadyStarted);
      await executeChild(awaitRewrap, {
        workflowId: `${workflowInfo().workflowId}/await-rewrap-v${pending}`,
        args: [{ keyId: input.keyId, minVersion: pending, timeoutMs: input.pendingRewrapWaitMs }],
        staticSummary: `Wait for key ${input.keyId} to be rewrapped to version ${pending} before the scheduled rotation`,
        staticDetails: [
          `The KMS rotated key \`${input.keyId}\` to version ${pending} by itself (a policy, or by hand), and its WDEKs are behind.`,
          `The scheduled rotation \`${workflowInfo().workflowId}\` waits for that rewrap, so two rewraps never move the same WDEKs at once.`,
        ].join('\n\n'),
      });
      key = await readKey('the version to rotate from, now that the pending rewrap is done');
    }
    progress.fromVersion = key.currentVersion;
    progress.toVersion = key.currentVersion + 1;
    if (key.lastRotateDate) await waitForQuota(Date.parse(key.lastRotateDate) + KMS_ROTATION_SPACING_MS);

    enter('rotating', `to version ${progress.toVersion} and rewrapping every WDEK in \`${rewrapWorkflowId(input.keyId, progress.toVersion)}\``);
    let result;
    for (let attempt = 1; ; attempt++) {
      try {
        const child = await startRewrap(input.keyId, progress.toVersion, true, 'scheduled rotation');
        result = await child.result();
        break;
      } catch (err) {
        if (err instanceof WorkflowExecutionAlreadyStartedError) {
          // Someone rotated to the same version by hand meanwhile: wait for their rewrap instead.
          await executeChild(awaitRewrap, {
            workflowId: `${workflowInfo().workflowId}/await-rewrap-v${progress.toVersion}`,
            args: [{ keyId: input.keyId, minVersion: progress.toVersion }],
            staticSummary: `Wait for the rewrap of key ${input.keyId} to version ${progress.toVersion}, started elsewhere`,
            staticDetails: [
              `Version ${progress.toVersion} of key \`${input.keyId}\` was being made by another run (a manual \`keyops key rotate\`) when this scheduled rotation started it.`,
              'This run waits for that rewrap instead of rotating again.',
            ].join('\n\n'),
          });
          break;
        }
        // The KMS's clock may run behind ours, or someone rotated by hand since we read the key:
        // a refusal names when the next rotation is allowed, and the failed child id may be reused.
        const refusal = rootFailure(err);
        if (refusal?.type !== 'KEY_ROTATION_NOT_PERMITTED' || attempt >= 3) throw err;
        const retryAfter = Date.parse(String((refusal.details?.[0] as { retryAfter?: string } | undefined)?.retryAfter));
        // Its retryAfter is on its own clock: wait past it, and at least one margin beyond now.
        await waitForQuota(Math.max(Number.isFinite(retryAfter) ? retryAfter : 0, Date.now()) + QUOTA_MARGIN_MS);
        enter('rotating', `to version ${progress.toVersion}, attempt ${attempt + 1}: the KMS refused attempt ${attempt} (${refusal.message})`);
      }
    }
    progress.rotated = result?.rotated ?? false;
    progress.rewrapped = result?.verified ?? 0;
    enter('done', `key at version ${progress.toVersion}${result ? `; ${result.verified} WDEK(s) rewrapped and verified` : ' (rewrapped by another run)'}`);
    upsertSearchAttributes([{ key: OutcomeAttribute, value: 'succeeded' }]);
    return progress;
  } catch (err) {
    upsertSearchAttributes([{ key: OutcomeAttribute, value: 'failed' }]);
    throw err;
  }
}

/** The ApplicationFailure at the root of a child's or activity's failure. */
function rootFailure(err: unknown): ApplicationFailure | undefined {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if (e instanceof ApplicationFailure) return e;
  }
  return undefined;
}

/** The rewrap run outlives this one (ABANDON): a terminated schedule run must not stop a rewrap halfway. */
function startRewrap(keyId: string, targetVersion: number, rotate: boolean, why: string) {
  return startChild(rotateRootKey, {
    workflowId: rewrapWorkflowId(keyId, targetVersion),
    args: [{ keyId, targetVersion, rotate }],
    parentClosePolicy: ParentClosePolicy.ABANDON,
    // A failed rewrap may be retried; a completed one is never redone.
    workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
    staticSummary: `${rotate ? 'Rotate' : 'Rewrap'} key ${keyId} to version ${targetVersion} (${why})`,
    staticDetails: [
      `Started by the rotation schedule of key \`${keyId}\` (\`${workflowInfo().workflowId}\`).`,
      rotate ? `Creates version ${targetVersion} in the KMS, then rewraps every WDEK to it.` : `The KMS is already at version ${targetVersion}; rewraps every WDEK to it.`,
      'Waiting backups are released when every WDEK is on the new version.',
    ].join('\n\n'),
  });
}

function ignoreAlreadyStarted(err: unknown): void {
  if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
}
