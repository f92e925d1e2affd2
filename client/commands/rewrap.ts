import { WorkflowNotFoundError } from '@temporalio/client';
import type { Command } from 'commander';
import { describeKeyUpdate } from '../../workflows/lookup-messages';
import { type KeyEntityState, type RewrapProgress, keyEntityWorkflowId, keyStateQuery, rewrapProgressQuery, rewrapWorkflowId } from '../../workflows/root-key-messages';
import { TASK_QUEUE } from '../../workflows/task-queue';
import { CliError, ExitCode } from '../cli-error';
import type { GlobalOptions } from '../global-options';
import { KEY_ARGUMENT, resolveKeyId } from '../key-ref';
import { consumerLines } from './key';
import { emit } from '../output';
import { lookUpOnWorker, rootApplicationFailure, withClient } from '../run-on-worker';
import { examples } from '../help-examples';

/** A query of a workflow that may not exist (yet): undefined instead of an error. */
async function queryIfExists<T>(run: () => Promise<T>): Promise<T | undefined> {
  try {
    return await run();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return undefined;
    throw err;
  }
}

export function registerRewrapCommands(program: Command): void {
  const rewrap = program.command('rewrap').description('follow the rewrap of WDEKs after a root-key rotation');

  rewrap
    .command('status <key>')
    .description("the key's current version, the version its WDEKs are rewrapped to, the rewrap run and who waits for it")
    .option('-q, --task-queue <name>', 'task queue of the workers that hold the KMS credentials', TASK_QUEUE)
    .addHelpText('after', `\n${KEY_ARGUMENT}\n`)
    .addHelpText('after', examples('keyops rewrap status demo', 'keyops rewrap status demo --json'))
    .action(async (raw: string, _opts: unknown, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & { taskQueue: string }>();
      const status = await withClient(options, async (client) => {
        const keyId = await resolveKeyId(client, raw, options.taskQueue);
        const key = await lookUpOnWorker(
          client,
          describeKeyUpdate,
          { taskQueue: options.taskQueue, args: [keyId], summary: `keyops: read metadata of key ${keyId}` },
          (failure) => {
            if (failure.type === 'KEY_NOT_FOUND') throw new CliError(`key ${keyId} does not exist in the KMS`, ExitCode.usage);
            throw new CliError(rootApplicationFailure(failure)?.message ?? failure.message, ExitCode.failed);
          },
        );
        const runId = rewrapWorkflowId(keyId, key.currentVersion);
        const run = await queryIfExists<RewrapProgress>(() => client.workflow.getHandle(runId).query(rewrapProgressQuery));
        const entity = await queryIfExists<KeyEntityState>(() => client.workflow.getHandle(keyEntityWorkflowId(keyId)).query(keyStateQuery));
        return {
          keyId,
          currentVersion: key.currentVersion,
          rewrappedVersion: key.rewrappedVersion ?? null,
          upToDate: (key.rewrappedVersion ?? 0) >= key.currentVersion,
          rewrap: run ? { workflowId: runId, phase: run.phase, total: run.total, rewrapped: run.rewrapped, verified: run.verified } : null,
          waiting: entity?.waiters.map((w) => ({ workflowId: w.workflowId, minVersion: w.minVersion })) ?? [],
          ...(key.consumers ? { consumers: key.consumers } : {}),
        };
      });
      emit(options, status, () => [
        `key ${status.keyId}: version ${status.currentVersion}, ${status.consumers?.engines.length ? 'complete at' : 'WDEKs rewrapped to'} ${status.rewrappedVersion ?? 'none recorded'}${status.upToDate ? ' (up to date)' : ' (behind: backups of its databases wait)'}`,
        ...consumerLines(status),
        status.rewrap
          ? `rewrap ${status.rewrap.workflowId}: ${status.rewrap.phase}, ${status.rewrap.rewrapped} of ${status.rewrap.total} rewrapped, ${status.rewrap.verified} verified`
          : `no rewrap run for version ${status.currentVersion}${status.upToDate ? '' : ` (keyops key rotate ${status.keyId}, or wait for the hourly watcher)`}`,
        ...(status.waiting.length ? status.waiting.map((w) => `waiting for version ${w.minVersion}: ${w.workflowId}`) : ['no workflow waiting']),
      ]);
    });
}
