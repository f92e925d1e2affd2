import { execFile } from 'node:child_process';
import { DEFAULT_CHILD_TIMEOUT_MS, childEnvironment } from './child-environment';
import type { CommandResult, CommandRunner } from './command-runner';

/**
 * Runs commands as child processes, without a shell (arguments are never re-parsed), and
 * reports a non-zero exit as a result rather than an exception: the engine adapter classifies it.
 */
export class ProcessCommandRunner implements CommandRunner {
  run(command: string, args: readonly string[], options: { timeoutMs?: number; env?: Record<string, string> } = {}): Promise<CommandResult> {
    return new Promise((resolve, reject) => {
      execFile(
        command,
        [...args],
        { timeout: options.timeoutMs ?? DEFAULT_CHILD_TIMEOUT_MS, maxBuffer: 64 * 1024 * 1024, env: childEnvironment(options.env), encoding: 'utf8' },
        (err, stdout, stderr) => {
          if (err && typeof err.code !== 'number') {
            // Not an exit status: the tool is missing (ENOENT), was killed, or timed out.
            reject(new Error(`${command}: ${err.killed ? `did not finish within ${options.timeoutMs ?? DEFAULT_CHILD_TIMEOUT_MS} ms and was stopped (${err.signal ?? 'killed'})` : err.message}`, { cause: err }));
            return;
          }
          resolve({ exitCode: err ? Number(err.code) : 0, stdout, stderr });
        },
      );
    });
  }
}
