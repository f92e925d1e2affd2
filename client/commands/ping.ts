import { status as grpcStatus } from '@grpc/grpc-js';
import { type Client, type Connection, isGrpcServiceError } from '@temporalio/client';
import type { Command } from 'commander';
import { selfCheck, type SelfCheckResult } from '../../workflows/self-check';
import { TASK_QUEUE } from '../../workflows/task-queue';
import { CliError, ExitCode } from '../cli-error';
import { connectOrExplain } from '../connect-or-explain';
import type { GlobalOptions } from '../global-options';
import { emit } from '../output';
import { livePollers } from '../live-pollers';

interface PingOptions {
  taskQueue: string;
  workflow?: boolean;
  timeout: string;
}

export function registerPingCommand(program: Command): void {
  program
    .command('ping')
    .description('check that Temporal answers, the namespace exists and workers poll the keyops task queue')
    .option('-q, --task-queue <name>', 'task queue whose workers to list', TASK_QUEUE)
    .option('--workflow', 'also run the selfCheck workflow end to end on a worker')
    .option('--timeout <seconds>', 'how long --workflow waits for a worker', '15')
    .addHelpText(
      'after',
      `
Connection comes from the standard Temporal settings: --address/--namespace, else
TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*, TEMPORAL_PROFILE and the
profile file (TEMPORAL_CONFIG_FILE or ~/.config/temporalio/temporal.toml); default 127.0.0.1:7233.

Examples:
  keyops ping                      # server version, namespace, polling workers
  keyops ping --workflow           # plus a workflow run through a real worker
  TEMPORAL_ADDRESS=my-ns.a1b2c.tmprl.cloud:7233 TEMPORAL_NAMESPACE=my-ns.a1b2c \\
  TEMPORAL_API_KEY=... keyops ping # Temporal Cloud`,
    )
    .action(async (opts: PingOptions, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & PingOptions>();
      const timeoutSeconds = Number(opts.timeout);
      if (!Number.isFinite(timeoutSeconds) || timeoutSeconds <= 0) {
        throw new CliError(`--timeout must be a positive number of seconds, got "${opts.timeout}"`, ExitCode.usage);
      }
      const { client, connection, resolved } = await connectOrExplain(options);
      try {
        const { serverVersion } = await connection.workflowService.getSystemInfo({});
        await describeNamespace(connection, resolved.namespace);
        // Self-check first: a worker that just ran it has certainly polled, so it is listed below.
        const check = opts.workflow ? await runSelfCheck(client, opts.taskQueue, timeoutSeconds) : undefined;
        const pollers = await livePollers(connection, resolved.namespace, opts.taskQueue);
        const data = {
          address: resolved.address,
          namespace: resolved.namespace,
          serverVersion: serverVersion || 'unknown',
          taskQueue: opts.taskQueue,
          workers: pollers,
          ...(check ? { selfCheck: check } : {}),
        };
        emit(options, data, () => [
          `Temporal ${data.serverVersion} at ${data.address}, namespace "${data.namespace}"`,
          pollers.length
            ? `${pollers.length} worker(s) polling task queue "${data.taskQueue}": ${pollers.map((p) => p.identity).join(', ')}`
            : `no worker polling task queue "${data.taskQueue}" (start one with ./temporal-dev.sh or npm run worker)`,
          ...(check
            ? [
                `selfCheck ${check.workflowId}: ${check.healthy ? 'healthy' : 'UNHEALTHY'} - worker ${check.worker.hostname} pid ${check.worker.pid}, data dir ${check.worker.dataDir} ${check.worker.dataDirWritable ? 'writable' : `not writable (${check.worker.dataDirError ?? ''})`}`,
              ]
            : []),
        ]);
        if (check && !check.healthy) process.exitCode = ExitCode.failed;
      } finally {
        await connection.close();
      }
    });
}

async function describeNamespace(connection: Connection, namespace: string): Promise<void> {
  try {
    await connection.workflowService.describeNamespace({ namespace });
  } catch (err) {
    if (isGrpcServiceError(err) && err.code === grpcStatus.NOT_FOUND) {
      throw new CliError(
        `namespace "${namespace}" does not exist on this server`,
        ExitCode.usage,
        'pass --namespace or TEMPORAL_NAMESPACE with an existing namespace (the dev server has "default")',
      );
    }
    throw err;
  }
}


async function runSelfCheck(client: Client, taskQueue: string, timeoutSeconds: number): Promise<SelfCheckResult> {
  const workflowId = `self-check/${new Date().toISOString()}`;
  const handle = await client.workflow.start(selfCheck, {
    taskQueue,
    workflowId,
    staticSummary: 'keyops ping --workflow: end-to-end check of server, worker and data directory',
    // Nobody should find a forgotten self-check waiting for a worker days later.
    workflowExecutionTimeout: `${timeoutSeconds} seconds`,
  });
  try {
    return await handle.result();
  } catch {
    throw new CliError(
      `no worker completed the self-check within ${timeoutSeconds}s on task queue "${taskQueue}" (workflow ${workflowId})`,
      ExitCode.failed,
      'start a worker with ./temporal-dev.sh (or npm run worker) and check its log with ./temporal-dev.sh logs worker',
    );
  }
}
