/** Runs an engine's command-line tool (db2, hdbsql, sqlcmd); swappable so adapters can be tested on transcripts. */
export interface CommandResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export interface CommandRunner {
  run(command: string, args: readonly string[], options?: { timeoutMs?: number; env?: Record<string, string> }): Promise<CommandResult>;
}
