/** Exit codes the CLI promises; scripts and `temporal-dev.sh` rely on them. */
export const ExitCode = {
  ok: 0,
  /** The operation ran and failed (a failed workflow, an unhealthy worker). */
  failed: 1,
  /** The user's input is wrong: unknown option, bad value, unknown namespace. */
  usage: 2,
  /** Temporal could not be reached. */
  unreachable: 3,
} as const;

/** An error meant for the operator: printed as one line plus a hint, never as a stack trace. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = ExitCode.failed,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'CliError';
  }
}
