import { ApplicationFailure } from '@temporalio/common';
import type { Client, Workflow, WorkflowStartOptions } from '@temporalio/client';
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
    if (await aWorkerTookIt(client, opts.workflowId)) {
      // A worker is there: the step itself was slow or stuck (a KMS that answers slowly, say).
      throw new CliError(
        `a worker on task queue "${opts.taskQueue}" took "${opts.summary}" but did not finish it within ${seconds} s`,
        ExitCode.failed,
        `see workflow ${opts.workflowId} in the Web UI (its pending activity shows the last error), and the worker's log`,
      );
    }
    throw new CliError(
      `no worker answered within ${seconds} s on task queue "${opts.taskQueue}"`,
      ExitCode.failed,
      'start a worker with ./temporal-dev.sh, and check it with keyops ping --workflow',
    );
  }
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
