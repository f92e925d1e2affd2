import { setTimeout as sleep } from 'node:timers/promises';
import { status as grpcStatus } from '@grpc/grpc-js';
import type { Client, ScheduleDescription, ScheduleHandle, ScheduleOptionsStartWorkflowAction, ScheduleOverlapPolicy, ScheduleSpec, Workflow } from '@temporalio/client';
import { ScheduleAlreadyRunning, ServiceError, isGrpcServiceError } from '@temporalio/client';
import { CliError, ExitCode } from '../cli-error';

export type ScheduleChange = 'created' | 'updated' | 'unchanged';

export interface DesiredSchedule<W extends Workflow> {
  spec: ScheduleSpec;
  action: ScheduleOptionsStartWorkflowAction<W>;
  policies: { overlap: ScheduleOverlapPolicy; catchupWindow: number };
  /** The schedule file that declares it (absolute path), so `apply --prune` deletes only its own. */
  declaredIn?: string;
}

/** The schedule file a schedule was last applied from, if any (kept in the action's memo). */
export const declaredIn = (description: ScheduleDescription): string | undefined =>
  description.action.type === 'startWorkflow' ? (description.action.memo?.declaredIn as string | undefined) : undefined;

const DESCRIBE_ATTEMPTS = 5;

/** The server ran out of time answering (its schedulers' worker busy, as right after a thousand creates). */
function timedOut(err: unknown): boolean {
  const cause = err instanceof ServiceError ? err.cause : err;
  if (!isGrpcServiceError(cause)) return false;
  if (cause.code === grpcStatus.DEADLINE_EXCEEDED || cause.code === grpcStatus.UNAVAILABLE || cause.code === grpcStatus.RESOURCE_EXHAUSTED) return true;
  // The server's own query deadline can come back under another code, named only in its text.
  return /deadline exceeded|timed out|timeout/i.test(cause.details ?? cause.message);
}

/**
 * A schedule's description. The server answers by querying the schedule's own workflow, which can
 * take longer than its 30 s deadline while a fleet's schedules are being created; asking again
 * a little later is safe (it reads only), and beats failing an apply of a thousand schedules.
 */
async function describeWhenAnswered(handle: ScheduleHandle): Promise<ScheduleDescription> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await handle.describe();
    } catch (err) {
      if (!timedOut(err)) throw err;
      if (attempt >= DESCRIBE_ATTEMPTS) {
        throw new CliError(
          `the server did not describe schedule ${handle.scheduleId} in time, ${DESCRIBE_ATTEMPTS} times: its schedules are busy (many just created or triggered?)`,
          ExitCode.failed,
          'run the same command again in a minute: it changes only what differs',
        );
      }
      await sleep(2_000 * attempt);
    }
  }
}

/**
 * Creates the schedule, or updates it when it differs from `desired`: applying the same thing
 * twice changes nothing. `sameTimes` compares what the kinds of schedule express differently
 * (calendars, intervals); everything else is compared here.
 */
export async function upsertSchedule<W extends Workflow>(
  client: Client,
  scheduleId: string,
  desired: DesiredSchedule<W>,
  sameTimes: (current: ScheduleDescription) => boolean,
): Promise<ScheduleChange> {
  // The memo's conditional type cannot be narrowed for a generic W.
  const action = { ...desired.action, ...(desired.declaredIn ? { memo: { declaredIn: desired.declaredIn } } : {}) } as ScheduleOptionsStartWorkflowAction<W>;
  try {
    await client.schedule.create({ scheduleId, spec: desired.spec, action, policies: desired.policies });
    return 'created';
  } catch (err) {
    if (!(err instanceof ScheduleAlreadyRunning)) throw err;
  }
  const handle = client.schedule.getHandle(scheduleId);
  const current = await describeWhenAnswered(handle);
  const same =
    sameTimes(current) &&
    (current.spec.jitter ?? 0) === (desired.spec.jitter ?? 0) &&
    current.policies.overlap === desired.policies.overlap &&
    current.policies.catchupWindow === desired.policies.catchupWindow &&
    current.action.type === 'startWorkflow' &&
    current.action.taskQueue === action.taskQueue &&
    current.action.staticSummary === action.staticSummary &&
    current.action.staticDetails === action.staticDetails &&
    // A command that names no file (keyops key watch --every) leaves a file's mark alone.
    (desired.declaredIn === undefined || declaredIn(current) === desired.declaredIn);
  if (same) return 'unchanged';
  await handle.update((previous) => {
    const keepMark = desired.declaredIn === undefined && previous.action.type === 'startWorkflow' && previous.action.memo;
    const kept = keepMark ? ({ ...action, memo: previous.action.memo } as ScheduleOptionsStartWorkflowAction<W>) : action;
    return { ...previous, spec: desired.spec, action: kept, policies: desired.policies };
  });
  return 'updated';
}
