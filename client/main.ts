#!/usr/bin/env node
import { Command, CommanderError, Option } from 'commander';
import { CliError, ExitCode } from './cli-error';
import { explainEncryptedPayload } from './connect-or-explain';
import { endQuietlyOnClosedPipe } from './output';
import { registerBackupCommands } from './commands/backup';
import { registerKeyCommands } from './commands/key';
import { registerMasterKeyCommands } from './commands/mk';
import { registerScheduleCommands } from './commands/schedule';
import { registerSignalCommands } from './commands/signal';
import { registerRunsCommand } from './commands/runs';
import { registerInitCommand } from './commands/init';
import { registerRewrapCommands } from './commands/rewrap';
import { registerPingCommand } from './commands/ping';
import { registerDoctorCommand } from './commands/doctor';
import { registerVersionCommand } from './commands/version';
import { registerCompletionCommand } from './commands/completion';
import { registerReportCommand } from './commands/report';

export function buildProgram(): Command {
  const program = new Command('keyops')
    .description(
      'Rotate encryption keys and take encrypted backups on Temporal durable workflows.\n' +
        'Start the local stack with ./temporal-dev.sh; runs are visible at http://127.0.0.1:8233.',
    )
    .addOption(new Option('--address <host:port>', 'Temporal frontend address').env('TEMPORAL_ADDRESS'))
    .addOption(new Option('--namespace <name>', 'Temporal namespace').env('TEMPORAL_NAMESPACE'))
    .addOption(new Option('--profile <name>', 'profile from the Temporal config file').env('TEMPORAL_PROFILE'))
    .addOption(new Option('--config-file <path>', 'Temporal config file (TOML)').env('TEMPORAL_CONFIG_FILE'))
    .option('--json', 'print machine-readable JSON')
    .showHelpAfterError('(run with --help for usage)')
    .addHelpText(
      'after',
      `
Exit codes: 0 ok, 1 operation failed, 2 bad input, 3 Temporal unreachable.`,
    )
    .exitOverride();
  registerVersionCommand(program);
  registerPingCommand(program);
  registerDoctorCommand(program);
  registerKeyCommands(program);
  registerBackupCommands(program);
  registerMasterKeyCommands(program);
  registerScheduleCommands(program);
  registerSignalCommands(program);
  registerRunsCommand(program);
  registerReportCommand(program);
  registerInitCommand(program);
  registerRewrapCommands(program);
  registerCompletionCommand(program);
  return program;
}

async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : ExitCode.ok;
  } catch (thrown) {
    const err = explainEncryptedPayload(thrown) ?? thrown;
    if (err instanceof CommanderError) {
      // Commander already printed the message (or the help / version text).
      return err.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
    }
    if (err instanceof CliError) {
      process.stderr.write(`keyops: ${err.message}\n${err.hint ? `hint: ${err.hint}\n` : ''}`);
      return err.exitCode;
    }
    const detail = process.env.KEYOPS_DEBUG && err instanceof Error ? (err.stack ?? err.message) : String(err instanceof Error ? err.message : err);
    process.stderr.write(`keyops: unexpected error: ${detail}\n(set KEYOPS_DEBUG=1 for the stack trace)\n`);
    return ExitCode.failed;
  }
}

if (require.main === module) {
  endQuietlyOnClosedPipe();
  void main(process.argv).then((code) => process.exit(code));
}
