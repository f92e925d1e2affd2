import { type Command, InvalidArgumentError } from 'commander';
import { initDemo } from '../../workflows';
import { TASK_QUEUE } from '../../workflows/task-queue';
import { CliError, ExitCode } from '../cli-error';
import type { GlobalOptions } from '../global-options';
import { emit } from '../output';
import { runOnWorker, withClient } from '../run-on-worker';
import { examples } from '../help-examples';

function wdekCount(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 100_000) throw new InvalidArgumentError('expected a whole number from 1 to 100000');
  return n;
}

export function registerInitCommand(program: Command): void {
  program
    .command('init')
    .description('create the demo data once: a root key, an encrypted database "demo" with rows, and WDEKs to rewrap (./temporal-dev.sh up runs it)')
    .option('-q, --task-queue <name>', 'task queue of the keyops workers (they hold the KMS and the files)', TASK_QUEUE)
    .option('--wdeks <n>', 'application WDEKs to create under the demo key (a remote KMS wraps each in a round trip)', wdekCount, 2000)
    .addHelpText(
      'after',
      `
Then, for example:
  keyops key rotate <the demo key id> --wait     # rewrap every WDEK of the demo key
  keyops backup run demo --wait                  # a verified, catalogued backup of "demo"
  keyops mk rotate default --wait                # the simulated HSM's master key`,
    )
    .addHelpText('after', examples('keyops init', 'keyops init --wdeks 200'))
    .action(async (_opts: unknown, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & { taskQueue: string; wdeks: number }>();
      const demo = await withClient(options, (client) =>
        // 2,000 WDEKs wrapped by a remote KMS take longer than a look-up: up to the activity's own limit.
        runOnWorker(client, initDemo, { taskQueue: options.taskQueue, workflowId: `init-demo/${Date.now()}`, args: [{ wdeks: options.wdeks }], summary: 'keyops init: demo key, database and WDEKs', timeoutSeconds: 150 }, (failure) => {
          throw new CliError(`init failed: ${failure.message}`, ExitCode.failed);
        }),
      );
      emit(options, demo, () => [
        `${demo.created ? 'created' : 'already there'}: root key ${demo.keyId}, encrypted database ${demo.databaseId} (${demo.rows} rows), ${demo.wdeks} WDEKs under the key`,
        `try: keyops key rotate ${demo.keyId} --wait`,
      ]);
    });
}
