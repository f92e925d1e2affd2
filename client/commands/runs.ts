import type { Command } from 'commander';
import { CliError, ExitCode } from '../cli-error';
import type { GlobalOptions } from '../global-options';
import { emit } from '../output';
import { withClient } from '../run-on-worker';
import { showTime } from '../operator-time';

const KEYOPS_TYPES = [
  'rotateRootKey',
  'rotateRootKeyOnSchedule',
  'watchRootKeys',
  'nightlyBackup',
  'restoreBackup',
  'verifyBackup',
  'rotateBackupKey',
  'regenerateDataKey',
  'rotateMasterKey',
  'restoreDrill',
];

export function registerRunsCommand(program: Command): void {
  program
    .command('runs')
    .description('recent keyops runs, newest first: workflow, status, phase and outcome')
    .option('--limit <n>', 'at most this many', (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n <= 0 || n > 1000) throw new CliError(`--limit "${v}" is not a whole number from 1 to 1000`, ExitCode.usage);
      return n;
    }, 20)
    .option('--query <visibility-query>', 'narrow with a Temporal visibility query, e.g. \'Phase = "awaiting-rewrap"\'')
    .addHelpText(
      'after',
      `
Examples:
  keyops runs
  keyops runs --query 'KeyId = "…" AND Phase = "awaiting-rewrap"'
  keyops runs --query 'Outcome = "alert"' --json`,
    )
    .action(async (_opts: unknown, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & { limit: number; query?: string }>();
      const types = `WorkflowType IN (${KEYOPS_TYPES.map((t) => `"${t}"`).join(', ')})`;
      const query = options.query ? `${types} AND (${options.query})` : types;
      const runs = await withClient(options, async (client) => {
        const found = [];
        try {
          for await (const w of client.workflow.list({ query })) {
            const attrs = w.searchAttributes as Record<string, unknown[] | undefined>;
            found.push({
              workflowId: w.workflowId,
              runId: w.runId,
              type: w.type,
              status: w.status.name,
              startTime: w.startTime.toISOString(),
              phase: (attrs.Phase?.[0] as string | undefined) ?? null,
              outcome: (attrs.Outcome?.[0] as string | undefined) ?? null,
            });
            if (found.length >= options.limit) break;
          }
        } catch (err) {
          // The server's reason is on the cause (a gRPC INVALID_ARGUMENT, code 3).
          const cause = err instanceof Error ? (err.cause as { code?: number; details?: string; message?: string } | undefined) : undefined;
          if (options.query && cause?.code === 3) {
            throw new CliError(`--query is not a valid visibility query: ${cause.details ?? cause.message ?? String(err)}`, ExitCode.usage);
          }
          throw err;
        }
        return found;
      });
      emit(options, runs, () =>
        runs.length === 0 ? ['no keyops runs'] : runs.map((r) => `${showTime(r.startTime)}  ${r.status.padEnd(10)}  ${r.type.padEnd(17)}  ${r.workflowId}${r.phase ? `  phase ${r.phase}` : ''}${r.outcome ? `  ${r.outcome}` : ''}`),
      );
    });
}
