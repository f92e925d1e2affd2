import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import {
  ParentClosePolicy,
  WorkflowIdReusePolicy,
  proxyActivities,
  setCurrentDetails,
  startChild,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import { keyEntityWorkflowId, rewrapWorkflowId } from './root-key-messages';
import { rotateRootKey } from './rotate-root-key';

const { listRegisteredKeys, describeKey } = proxyActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumAttempts: 5 },
});

export interface WatchResult {
  checked: number;
  /** Rewrap runs this watch started, by workflow id. */
  started: string[];
  /** Keys found behind whose rewrap run already exists (running, or done under the same id). */
  alreadyRunning: string[];
  /** Keys the KMS could not describe (disabled, deleted); the next watch tries again. */
  unreadable: { keyId: string; reason: string }[];
}

/**
 * Detects rotations keyops did not start (a KMS rotation policy fires at an unpredictable
 * moment inside a 24-hour window; an operator may rotate by hand) by comparing each key's
 * current version with the version keyops last rewrapped to, and starts the rewrap, without
 * rotating again. Run by a schedule, hourly by default. The rewrap's workflow id
 * `rewrap/<keyId>/v<version>` makes a second detection of the same version harmless.
 */
export async function watchRootKeys(): Promise<WatchResult> {
  const result: WatchResult = { checked: 0, started: [], alreadyRunning: [], unreadable: [] };
  const keyIds = await listRegisteredKeys.executeWithOptions({ summary: 'list the root keys that protect registered WDEKs' }, []);
  for (const keyId of keyIds) {
    result.checked++;
    let key;
    try {
      key = await describeKey.executeWithOptions({ summary: `compare the current version of key ${keyId} in the KMS with its rewrapped version` }, [keyId]);
    } catch (err) {
      // The useful words are at the root of the chain ("key ... is disabled"), not "Activity task failed".
      let root: unknown = err;
      while (root instanceof Error && root.cause instanceof Error) root = root.cause;
      result.unreadable.push({ keyId, reason: root instanceof Error ? root.message : String(root) });
      continue;
    }
    if (key.currentVersion <= (key.rewrappedVersion ?? 0)) continue;
    const workflowId = rewrapWorkflowId(keyId, key.currentVersion);
    try {
      await startChild(rotateRootKey, {
        workflowId,
        args: [{ keyId, targetVersion: key.currentVersion, rotate: false }],
        // The rewrap must finish even if this watch run ends first.
        parentClosePolicy: ParentClosePolicy.ABANDON,
        // A failed rewrap may be retried by the next watch; a completed one is never redone.
        workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        staticSummary: `Rewrap every WDEK of key ${keyId} to version ${key.currentVersion} (rotation detected by watchRootKeys)`,
        staticDetails: [
          `**Rotation detected** by \`${workflowInfo().workflowId}\`: key \`${keyId}\` (${key.name}) is at version **${key.currentVersion}** in the KMS` +
            ` (rotated ${key.lastRotateDate ?? 'at an unknown date'}); its WDEKs were last rewrapped to ${key.rewrappedVersion === undefined ? 'no version yet' : `version ${key.rewrappedVersion}`}.`,
          '',
          `- The KMS already rotated (its policy or an operator): this run rewraps only and never rotates again.`,
          `- Every WDEK is rewrapped to version ${key.currentVersion}, then checked to unwrap under it; the version is recorded.`,
          `- Then \`${keyEntityWorkflowId(keyId)}\` hears "rewrap complete" and releases the nightly backups waiting for it.`,
          `- The id \`${workflowId}\` names this version: a later watch that sees the same rotation starts nothing.`,
        ].join('\n'),
      });
      result.started.push(workflowId);
    } catch (err) {
      if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
      result.alreadyRunning.push(workflowId);
    }
  }
  setCurrentDetails(
    `Checked ${result.checked} key(s): started ${result.started.length} rewrap(s)` +
      (result.alreadyRunning.length ? `, ${result.alreadyRunning.length} already under way` : '') +
      (result.unreadable.length ? `, ${result.unreadable.length} unreadable` : ''),
  );
  return result;
}
