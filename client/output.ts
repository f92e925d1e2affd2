import { ExitCode } from './cli-error';
import type { GlobalOptions } from './global-options';

/** Prints `data` as JSON with `--json`, otherwise the human-readable lines. */
export function emit(options: GlobalOptions, data: unknown, human: () => string[]): void {
  if (options.json) {
    process.stdout.write(`${JSON.stringify(data, null, 2)}\n`);
  } else {
    process.stdout.write(`${human().join('\n')}\n`);
  }
}

/**
 * A reader that stops early (`keyops runs | head -1`) closes the pipe, and the next write fails
 * with EPIPE. C tools then die quietly of SIGPIPE; Node ignores SIGPIPE and would crash on the
 * stream's unhandled 'error' event with a stack trace instead. keyops ends quietly, exit 0 as
 * ripgrep does: the reader had what it wanted, and `set -o pipefail` scripts do not fail on it.
 * A closed stderr is ignored (there is nowhere left to report anything); any other stdout
 * error (EIO, ENOSPC on a redirect) is one line on stderr and exit 1.
 */
export function endQuietlyOnClosedPipe(exit: (code: number) => never = (code) => process.exit(code)): void {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') exit(ExitCode.ok);
    try {
      process.stderr.write(`keyops: cannot write the output: ${err.message}\n`);
    } catch {
      // stderr is gone too
    }
    exit(ExitCode.failed);
  });
  process.stderr.on('error', () => {});
}
