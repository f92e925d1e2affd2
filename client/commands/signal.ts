import type { Command } from 'commander';
import { keyEntity } from '../../workflows';
import { keyEntityMetadata } from '../../workflows/key-entity-metadata';
import { keyEntityWorkflowId, rewrapCompleteSignal } from '../../workflows/root-key-messages';
import { TASK_QUEUE } from '../../workflows/task-queue';
import { CliError, ExitCode } from '../cli-error';
import type { GlobalOptions } from '../global-options';
import { emit } from '../output';
import { withClient } from '../run-on-worker';
import { examples } from '../help-examples';

export function registerSignalCommands(program: Command): void {
  const signal = program.command('signal').description('tell keyops about events that happened outside it');

  signal
    .command('rewrap-complete <keyId>')
    .description('announce that every WDEK of a root key is on a version (a rewrap done outside keyops): waiting backups are released')
    .requiredOption('--version <n>', 'the root-key version every WDEK is on now', (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new CliError(`--version "${v}" is not a key version (a whole number from 1)`, ExitCode.usage);
      return n;
    })
    .option('-q, --task-queue <name>', 'task queue of the keyops workers (if the key entity has to be started)', TASK_QUEUE)
    .addHelpText(
      'after',
      `
The key's entity workflow (key/<keyId>) records the version and signals every workflow waiting
for it. A backup released too early still cannot record mixed keys: the engine refuses to back
up while any WDEK of the database is behind the key, and the night retries.`,
    )
    .addHelpText('after', examples('keyops signal rewrap-complete 0f6b9b2e-4c1d-4a8e-9d3a-5b7c2e1f8a90 --version 3'))
    .action(async (keyId: string, _opts: unknown, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & { version: number; taskQueue: string }>();
      if (!/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/.test(keyId)) throw new CliError(`key id "${keyId}" is malformed`, ExitCode.usage);
      const workflowId = keyEntityWorkflowId(keyId);
      await withClient(options, (client) =>
        client.workflow.signalWithStart(keyEntity, {
          workflowId,
          taskQueue: options.taskQueue,
          args: [{ keyId, rewrappedVersion: 0, waiters: [] }],
          signal: rewrapCompleteSignal,
          signalArgs: [{ keyId, version: options.version }],
          ...keyEntityMetadata(keyId),
        }),
      );
      emit(options, { workflowId, keyId, version: options.version }, () => [`signalled ${workflowId}: every WDEK of ${keyId} is on version ${options.version}`]);
    });
}
