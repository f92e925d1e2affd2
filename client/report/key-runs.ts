import type { Client, WorkflowExecutionInfo } from '@temporalio/client';
import { decodeArrayFromPayloads } from '@temporalio/common/lib/internal-non-workflow';
import { optionalTsToMs } from '@temporalio/common/lib/time';
import type { RewrapProgress } from '../../workflows/root-key-messages';

/** One rewrap (`rewrap/<key>/v<n>`) as its histories tell it, across continue-as-new and re-runs. */
export interface RewrapRun {
  workflowId: string;
  targetVersion: number;
  /** Whether the run was asked to rotate the key (false: the KMS had rotated it, found by the watcher). */
  rotate: boolean | undefined;
  /**
   * Whether it made the version, from its rotateToVersion activity's result: false when the KMS
   * already had it; undefined when it never got that far (or was not asked to rotate).
   */
  rotated?: boolean | undefined;
  /** The workflow that started it as a child (a scheduled rotation), if one did. */
  parent?: { workflowId: string; type: string | undefined } | undefined;
  startedAt: string;
  closedAt?: string | undefined;
  status: string;
  /** Executions it took: continue-as-new and re-runs of a failed one each add one. */
  executions: number;
  /** From its activities: the key rotated, the first rewrap chunk, the first verify chunk, the announcement. */
  steps: { rotatedAt?: string; rewrapStartedAt?: string; verifyStartedAt?: string; announcedAt?: string };
  /** From its result, once it completed. */
  result?: Pick<RewrapProgress, 'rotated' | 'total' | 'rewrapped' | 'verified'> | undefined;
}

/** Any other run the report places on a key's timeline (KMS-only rotations, scheduled rotations, master-key rotations). */
export interface OtherRun {
  workflowId: string;
  type: string;
  startedAt: string;
  closedAt?: string | undefined;
  status: string;
  outcome?: string | undefined;
  keyVersion?: number | undefined;
  /** A KMS-only rotation: whether it made the version (its result), undefined until it completed. */
  rotated?: boolean | undefined;
}

const iso = (ms: number | undefined) => (ms === undefined ? undefined : new Date(ms).toISOString());
const attr = (w: WorkflowExecutionInfo, name: string): unknown => (w.searchAttributes as Record<string, unknown[] | undefined>)[name]?.[0];

function otherRun(w: WorkflowExecutionInfo): OtherRun {
  const outcome = attr(w, 'Outcome');
  const keyVersion = attr(w, 'KeyVersion');
  return {
    workflowId: w.workflowId,
    type: w.type,
    startedAt: w.startTime.toISOString(),
    closedAt: w.closeTime?.toISOString(),
    status: w.status.name,
    ...(typeof outcome === 'string' ? { outcome } : {}),
    ...(typeof keyVersion === 'number' ? { keyVersion } : {}),
  };
}

async function listAll(client: Client, query: string): Promise<WorkflowExecutionInfo[]> {
  const found: WorkflowExecutionInfo[] = [];
  for await (const w of client.workflow.list({ query })) found.push(w);
  return found.sort((a, b) => a.startTime.getTime() - b.startTime.getTime());
}

/**
 * Reads one rewrap's executions from their histories: the input says whether it rotated, the
 * started event names a parent, the activities date its steps, the last result counts its WDEKs.
 */
async function rewrapRun(client: Client, executions: WorkflowExecutionInfo[], others: Map<string, OtherRun>): Promise<RewrapRun> {
  const first = executions[0]!;
  const last = executions[executions.length - 1]!;
  const converter = client.options.loadedDataConverter;
  const run: RewrapRun = {
    workflowId: first.workflowId,
    targetVersion: Number(attr(first, 'KeyVersion') ?? /\/v(\d+)$/.exec(first.workflowId)?.[1] ?? 0),
    rotate: undefined,
    startedAt: first.startTime.toISOString(),
    closedAt: last.closeTime?.toISOString(),
    status: last.status.name,
    executions: executions.length,
    steps: {},
  };
  for (const [index, execution] of executions.entries()) {
    const events = (await client.workflow.getHandle(execution.workflowId, execution.runId).fetchHistory()).events ?? [];
    const scheduled = new Map<string, string>();
    for (const e of events) {
      const at = iso(optionalTsToMs(e.eventTime));
      const started = e.workflowExecutionStartedEventAttributes;
      if (started && index === 0) {
        const [input] = (await decodeArrayFromPayloads(converter, started.input?.payloads)) as [{ rotate?: unknown } | undefined];
        run.rotate = typeof input?.rotate === 'boolean' ? input.rotate : undefined;
        const parentId = started.parentWorkflowExecution?.workflowId;
        if (parentId) run.parent = { workflowId: parentId, type: others.get(parentId)?.type };
      }
      const activity = e.activityTaskScheduledEventAttributes?.activityType?.name;
      if (activity) {
        scheduled.set(String(e.eventId), activity);
        if (activity === 'rewrapChunk' || activity === 'followReencryption') run.steps.rewrapStartedAt ??= at;
        if (activity === 'verifyChunk') run.steps.verifyStartedAt ??= at;
      }
      const completed = e.activityTaskCompletedEventAttributes;
      if (completed) {
        const name = scheduled.get(String(completed.scheduledEventId));
        if (name === 'rotateToVersion') {
          const [rotation] = (await decodeArrayFromPayloads(converter, completed.result?.payloads)) as [{ rotated?: unknown } | undefined];
          if (rotation?.rotated === true) {
            run.rotated = true;
            run.steps.rotatedAt ??= at;
          } else run.rotated ??= false;
        }
        if (name === 'announceRewrapComplete') run.steps.announcedAt = at;
      }
      const result = e.workflowExecutionCompletedEventAttributes?.result;
      if (result && execution === last) {
        const [progress] = (await decodeArrayFromPayloads(converter, result.payloads)) as [RewrapProgress | undefined];
        if (progress) run.result = { rotated: progress.rotated, total: progress.total, rewrapped: progress.rewrapped, verified: progress.verified };
      }
    }
  }
  return run;
}

export interface KeyRuns {
  rewraps: RewrapRun[];
  /** `keyops key rotate --kms-only` runs and scheduled rotations of the key. */
  others: OtherRun[];
}

/** The key's rewraps, KMS-only rotations and scheduled rotations, oldest first. */
export async function keyRuns(client: Client, keyId: string): Promise<KeyRuns> {
  const key = JSON.stringify(keyId);
  const listed = await listAll(client, `KeyId = ${key} AND WorkflowType IN ("rotateRootKey", "rotateInKms", "rotateRootKeyOnSchedule")`);
  const others = new Map(listed.filter((w) => w.type !== 'rotateRootKey').map((w) => [w.workflowId, otherRun(w)]));
  // A KMS-only rotation made its version only if its result says so.
  for (const w of listed.filter((l) => l.type === 'rotateInKms' && l.status.name === 'COMPLETED')) {
    const events = (await client.workflow.getHandle(w.workflowId, w.runId).fetchHistory()).events ?? [];
    const result = events.find((e) => e.workflowExecutionCompletedEventAttributes)?.workflowExecutionCompletedEventAttributes?.result;
    const [rotation] = (await decodeArrayFromPayloads(client.options.loadedDataConverter, result?.payloads)) as [{ rotated?: unknown } | undefined];
    others.get(w.workflowId)!.rotated = rotation?.rotated === true;
  }
  const byId = new Map<string, WorkflowExecutionInfo[]>();
  for (const w of listed) if (w.type === 'rotateRootKey') byId.set(w.workflowId, [...(byId.get(w.workflowId) ?? []), w]);
  const rewraps: RewrapRun[] = [];
  for (const executions of byId.values()) rewraps.push(await rewrapRun(client, executions, others));
  return { rewraps, others: [...others.values()] };
}

/** Master-key rotations of the worker's crypto units: every KMS key under them lived through each. */
export async function masterKeyRuns(client: Client, taskQueue: string, since: string | undefined): Promise<OtherRun[]> {
  const after = since ? ` AND StartTime >= ${JSON.stringify(since)}` : '';
  return (await listAll(client, `WorkflowType = "rotateMasterKey" AND TaskQueue = ${JSON.stringify(taskQueue)}${after}`)).map(otherRun);
}
