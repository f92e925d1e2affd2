import { ApplicationFailure, type UpdateDefinition } from '@temporalio/common';
import { WithStartWorkflowOperation, type Client, type Workflow, type WorkflowStartOptions } from '@temporalio/client';
import { lookupDesk } from '../workflows';
import { lookupDeskWorkflowId } from '../workflows/lookup-messages';
import { CliError, ExitCode } from './cli-error';
import { connectOrExplain, explainEncryptedPayload } from './connect-or-explain';
import type { GlobalOptions } from './global-options';

/** The ApplicationFailure at the root of a workflow or activity failure, if any. */
export function rootApplicationFailure(err: unknown): ApplicationFailure | undefined {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if (e instanceof ApplicationFailure) return e;
  }
  return undefined;
}

/** Connects as the global options say, runs `fn`, and always closes the connection. */
export async function withClient<T>(options: GlobalOptions, fn: (client: Client) => Promise<T>): Promise<T> {
  const { client, connection } = await connectOrExplain(options);
  try {
    return await fn(client);
  } finally {
    await connection.close();
  }
}

/** How long a short CLI step may take unless it says otherwise. */
const DEFAULT_TIMEOUT_SECONDS = 30;

/**
 * Runs a short workflow whose activities need what only workers hold (KMS credentials, the
 * catalog), bounded so that a missing worker gives an answer instead of a hang. A typed
 * failure from the worker goes to `explain`, which turns it into an operator-facing error.
 */
export async function runOnWorker<W extends Workflow>(
  client: Client,
  workflow: W,
  opts: { taskQueue: string; workflowId: string; args: Parameters<W>; summary: string; timeoutSeconds?: number },
  explain: (failure: ApplicationFailure) => never,
): Promise<Awaited<ReturnType<W>>> {
  const seconds = opts.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS;
  try {
    // The generic args cannot be checked against WorkflowStartOptions' conditional type.
    const start = {
      taskQueue: opts.taskQueue,
      workflowId: opts.workflowId,
      args: opts.args,
      staticSummary: opts.summary,
      staticDetails: 'A short step of the keyops CLI, run on a worker because only workers hold the KMS credentials, the files and the catalog. It changes nothing unless its summary says so.',
      workflowExecutionTimeout: `${seconds} seconds`,
    } as unknown as WorkflowStartOptions<W>;
    return (await client.workflow.execute(workflow, start)) as Awaited<ReturnType<W>>;
  } catch (err) {
    const failure = rootApplicationFailure(err);
    if (failure) explain(failure);
    const encrypted = explainEncryptedPayload(err);
    if (encrypted) throw encrypted;
    throw unanswered({ ...opts, seconds }, await aWorkerTookIt(client, opts.workflowId));
  }
}

/**
 * Why a step on a worker gave no answer in time: no worker took it, or one did and is slow or
 * stuck (a KMS that answers slowly, say), with where to look.
 */
function unanswered(opts: { taskQueue: string; summary: string; workflowId: string; seconds: number }, taken: boolean): CliError {
  if (taken) {
    return new CliError(
      `a worker on task queue "${opts.taskQueue}" took "${opts.summary}" but did not finish it within ${opts.seconds} s`,
      ExitCode.failed,
      `see workflow ${opts.workflowId} in the Web UI (its pending activity shows the last error), and the worker's log`,
    );
  }
  return new CliError(`no worker answered within ${opts.seconds} s on task queue "${opts.taskQueue}"`, ExitCode.failed, 'start a worker with ./temporal-dev.sh, and check it with keyops ping --workflow');
}

/** Whether any worker started a workflow task of the run: its history says so. */
async function aWorkerTookIt(client: Client, workflowId: string): Promise<boolean> {
  try {
    const history = await client.workflow.getHandle(workflowId).fetchHistory();
    return (history.events ?? []).some((e) => e.workflowTaskStartedEventAttributes);
  } catch {
    return false;
  }
}

/** Said by the desk's validator while its run hands over to the next (lookup-desk.ts). */
const HANDING_OVER = /handing over to the next one/;

/**
 * Asks a worker a read-only question as an update of the task queue's look-up desk (started by
 * the first question): no workflow run per look-up in the list, and the answer still comes from
 * a worker. Bounded like runOnWorker, with the same explanations.
 */
export async function lookUpOnWorker<Ret, Args extends unknown[]>(
  client: Client,
  update: UpdateDefinition<Ret, Args>,
  opts: { taskQueue: string; args: Args; summary: string; timeoutSeconds?: number },
  explain: (failure: ApplicationFailure) => never,
): Promise<Ret> {
  const seconds = opts.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS;
  const workflowId = lookupDeskWorkflowId(opts.taskQueue);
  const deadline = Date.now() + seconds * 1000;
  for (let attempt = 1; ; attempt++) {
    const startWorkflowOperation = new WithStartWorkflowOperation(lookupDesk, {
      workflowId,
      taskQueue: opts.taskQueue,
      args: [{}],
      workflowIdConflictPolicy: 'USE_EXISTING',
      staticSummary: `keyops look-ups for task queue ${opts.taskQueue}`,
      staticDetails:
        'Answers the CLI\'s read-only questions (key show, key versions, rewrap status, backup list, key names) as updates, each by one activity on a worker: ' +
        'only workers hold the KMS credentials and the catalog. One run serves them all, so look-ups add no run to the workflow list. It changes nothing.',
    });
    try {
      return await client.withDeadline(deadline, () => client.workflow.executeUpdateWithStart(update, { args: opts.args, startWorkflowOperation }));
    } catch (err) {
      const failure = rootApplicationFailure(err);
      // The desk's run is handing over to its next run (it continues as new): ask that one.
      const closing = (failure && HANDING_OVER.test(failure.message)) || /workflow execution already completed/i.test(String(err));
      if (closing && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, Math.min(100 * attempt, 1000)));
        continue;
      }
      if (failure && !closing) explain(failure);
      const encrypted = explainEncryptedPayload(err);
      if (encrypted) throw encrypted;
      if (Date.now() < deadline && !closing) throw err;
      const desk = await deskState(client, workflowId);
      if (desk.failingTaskAttempt) {
        // A desk whose workflow task keeps failing answers nobody, with workers polling or not.
        throw new CliError(
          `the look-up desk ${workflowId} is stuck: its workflow task failed ${desk.failingTaskAttempt - 1} time(s)`,
          ExitCode.failed,
          `see the worker's log; \`temporal workflow terminate -w ${workflowId}\` lets the next look-up start a fresh desk (it holds no state)`,
        );
      }
      throw unanswered({ ...opts, workflowId, seconds }, desk.activityPending);
    }
  }
}

/** Whether the desk has an activity under way (a worker took the question), or a failing workflow task. */
async function deskState(client: Client, workflowId: string): Promise<{ activityPending: boolean; failingTaskAttempt?: number }> {
  try {
    const { raw } = await client.workflow.getHandle(workflowId).describe();
    const attempt = raw.pendingWorkflowTask?.attempt ?? 0;
    return { activityPending: (raw.pendingActivities ?? []).length > 0, ...(attempt > 1 ? { failingTaskAttempt: attempt } : {}) };
  } catch {
    return { activityPending: false };
  }
}
