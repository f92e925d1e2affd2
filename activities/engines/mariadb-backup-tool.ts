import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { childEnvironment } from './child-environment';
import { EngineError } from './engine-error';

/**
 * mariadb-backup's and mariadbd's failures, from what they print. Keys that cannot be fetched
 * (the key store sealed, unreachable or refusing) pass, as reference 000's keystore error does;
 * a server that cannot be reached or is locked passes too; anything not recognised is a fault to
 * look at, not to retry blindly.
 */
export function classifyMariaDbTool(what: string, exitCode: number | null, output: string): EngineError {
  const tail = output.trim().split('\n').slice(-6).join(' | ').slice(0, 1200);
  const said = `${what} failed (exit ${exitCode ?? 'signal'}): ${tail}`;
  if (/hashicorp|vault|curl error|encryption key (?:version )?\d*\s*(?:could not|failed|not found)|Unable to (?:get|fetch|read) (?:the )?key|key_version|Failed to (?:get|decrypt)|cannot decrypt|decryption failed|Plugin 'hashicorp/i.test(output)) {
    return new EngineError('KEY_UNAVAILABLE', said, 'MARIADB_KEY');
  }
  if (/Access denied/i.test(output)) return new EngineError('PERMISSION_DENIED', said, 'ER_ACCESS_DENIED_ERROR');
  if (/Can't connect to|Lost connection|Too many connections|Lock wait timeout|server has gone away|Unable to lock/i.test(output)) return new EngineError('DATABASE_BUSY', said);
  return new EngineError('ENGINE_COMMAND_FAILED', said);
}

/**
 * Runs a MariaDB tool with only the environment it needs (the Vault token as VAULT_TOKEN, never
 * on its command line) and yields its standard output as it comes. After the last byte it waits
 * for the tool's exit: a non-zero exit throws there, so a stream consumer never commits the
 * output of a tool that failed at its end.
 */
export async function* toolOutput(command: string, args: string[], options: { vaultToken: string }): AsyncGenerator<Buffer> {
  const child = spawn(command, args, { env: childEnvironment({ VAULT_TOKEN: options.vaultToken }), stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-64 * 1024)));
  // A tool that cannot be started rejects both: reported through `spawned`, never unhandled.
  const exited = once(child, 'close') as Promise<[number | null, NodeJS.Signals | null]>;
  exited.catch(() => undefined);
  const spawned = once(child, 'spawn').then(
    () => undefined,
    (err: unknown) => err,
  );
  let finished = false;
  try {
    const failed = await spawned;
    if (failed) throw new EngineError('INVALID_CONFIGURATION', `${command} could not be started: ${(failed as Error).message}`);
    for await (const chunk of child.stdout) yield chunk as Buffer;
    const [code] = await exited;
    finished = true;
    if (code !== 0) throw classifyMariaDbTool(command.split('/').pop() ?? command, code, stderr);
  } finally {
    // The consumer stopped early (a failed write): the tool must not be left writing to a full pipe.
    if (!finished && child.exitCode === null) child.kill('SIGKILL');
  }
}

/** Runs a MariaDB tool to its end; throws a classified error on failure. */
export async function runTool(command: string, args: string[], options: { vaultToken: string; timeoutMs?: number }): Promise<string> {
  const child = spawn(command, args, { env: childEnvironment({ VAULT_TOKEN: options.vaultToken }), stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (d: string) => (output = (output + d).slice(-64 * 1024));
  child.stdout.setEncoding('utf8').on('data', keep);
  child.stderr.setEncoding('utf8').on('data', keep);
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 30 * 60_000);
  const exited = (once(child, 'close') as Promise<[number | null, NodeJS.Signals | null]>).catch((err: unknown) => {
    throw new EngineError('INVALID_CONFIGURATION', `${command} could not be started: ${(err as Error).message}`);
  });
  exited.catch(() => undefined);
  try {
    const [code] = await exited;
    if (code !== 0) throw classifyMariaDbTool(command.split('/').pop() ?? command, code, output);
    return output;
  } finally {
    clearTimeout(timer);
    if (child.exitCode === null) child.kill('SIGKILL');
  }
}
