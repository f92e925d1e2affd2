import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { CommandResult, CommandRunner } from '../activities/engines/command-runner';
import { Db2Cli } from '../activities/engines/db2-cli';
import { classifyDb2Output } from '../activities/engines/db2-messages';
import { EngineError } from '../activities/engines/engine-error';
import { ProcessCommandRunner } from '../activities/engines/process-command-runner';

/**
 * A fake of the Db2 command line processor (no Db2 on this machine): replays transcripts that
 * follow IBM's message texts and exit codes, and records the commands it was given.
 */
class Db2TranscriptRunner implements CommandRunner {
  readonly calls: { command: string; args: readonly string[] }[] = [];
  constructor(private readonly transcript: CommandResult) {}
  run(command: string, args: readonly string[]): Promise<CommandResult> {
    this.calls.push({ command, args });
    return Promise.resolve(this.transcript);
  }
}

const TRANSCRIPTS = {
  success: { exitCode: 0, stdout: '\nBackup successful. The timestamp for this backup image is : 20261201021541\n\n', stderr: '' },
  keystore: {
    exitCode: 4,
    stdout: 'SQL1728N  The command or operation failed because the keystore could not be accessed. Reason code "2".\n',
    stderr: '',
  },
  exclusive: {
    exitCode: 4,
    stdout: 'SQL1035N  The operation failed because the specified database cannot be connected to in the mode requested.  SQLSTATE=57019\n',
    stderr: '',
  },
  privilege: {
    exitCode: 4,
    stdout: 'SQL0551N  "SVCBACKUP" does not have the required authorization or privilege to perform operation "BACKUP" on object "PRODDB".  SQLSTATE=42501\n',
    stderr: '',
  },
  authority: {
    exitCode: 4,
    stdout: 'SQL1092N  The requested command or operation failed because the user ID does not have the authority to perform the requested command or operation.  User ID: "SVCBACKUP".\n',
    stderr: '',
  },
  syntax: {
    exitCode: 4,
    stdout: 'SQL0104N  An unexpected token "ONLNE" was found following "DATABASE PRODDB".  Expected tokens may include:  "ONLINE".  SQLSTATE=42601\n',
    stderr: '',
  },
  unknownState57019: { exitCode: 4, stdout: 'SQL9999N  Something new.  SQLSTATE=57019\n', stderr: '' },
  clpError: { exitCode: 8, stdout: 'DB21034E  The command was processed as an SQL statement because it was not a valid Command Line Processor command.\n', stderr: '' },
} satisfies Record<string, CommandResult>;

describe('Db2 command adapter (fake CLP replaying IBM message transcripts)', () => {
  it('builds the backup command and reads the image timestamp', async () => {
    const runner = new Db2TranscriptRunner(TRANSCRIPTS.success);
    const result = await new Db2Cli(runner).backupDatabase('PRODDB', '/backup/db2');
    assert.deepEqual(result, { timestamp: '20261201021541', command: 'BACKUP DATABASE PRODDB ONLINE TO /backup/db2 ENCRYPT' });
    assert.deepEqual(runner.calls, [{ command: 'db2', args: ['BACKUP DATABASE PRODDB ONLINE TO /backup/db2 ENCRYPT'] }]);
  });

  it('tells the keystore error apart from the exclusive-mode conflict, and both from permission and syntax errors', async () => {
    const expected: [keyof typeof TRANSCRIPTS, string, boolean, string, RegExp][] = [
      ['keystore', 'KEY_UNAVAILABLE', true, 'SQL1728N', /SQL1728N: the keystore could not be accessed/],
      ['exclusive', 'DATABASE_BUSY', true, 'SQL1035N', /SQL1035N: the database cannot be connected to in the mode requested \(held exclusively\), SQLSTATE 57019/],
      ['privilege', 'PERMISSION_DENIED', false, 'SQL0551N', /SVCBACKUP/],
      ['authority', 'PERMISSION_DENIED', false, 'SQL1092N', /does not have the authority/],
      ['syntax', 'ENGINE_COMMAND_FAILED', false, 'SQL0104N', /syntax error, SQLSTATE 42601/],
      ['unknownState57019', 'DATABASE_BUSY', true, 'SQL9999N', /SQLSTATE 57019/],
      ['clpError', 'ENGINE_COMMAND_FAILED', false, undefined as unknown as string, /exit code 8/],
    ];
    for (const [name, code, retryable, engineCode, message] of expected) {
      const err = await new Db2Cli(new Db2TranscriptRunner(TRANSCRIPTS[name])).backupDatabase('PRODDB', '/backup/db2').then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(err instanceof EngineError, `${name}: ${String(err)}`);
      assert.deepEqual({ code: err.code, retryable: err.retryable, engineCode: err.engineCode }, { code, retryable, engineCode }, name);
      assert.match(err.message, /^Db2 backup of PRODDB failed/);
      assert.match(err.message, message, name);
    }
  });

  it('refuses names and paths that would change the command, before running anything', async () => {
    const runner = new Db2TranscriptRunner(TRANSCRIPTS.success);
    const cli = new Db2Cli(runner);
    await assert.rejects(cli.backupDatabase('PRODDB; DROP', '/backup'), (e: unknown) => e instanceof EngineError && e.code === 'INVALID_CONFIGURATION');
    await assert.rejects(cli.backupDatabase('PRODDB', 'relative/dir'), /must be an absolute path/);
    assert.equal(runner.calls.length, 0);
    assert.equal(classifyDb2Output('x', { exitCode: 2, stdout: 'SQL2426W  warning', stderr: '' }), undefined, 'a warning is not a failure');
  });

  it('the process runner reports exit codes and output of real commands', async () => {
    const runner = new ProcessCommandRunner();
    assert.deepEqual(await runner.run('sh', ['-c', 'echo "SQL1035N  held.  SQLSTATE=57019"; exit 4']), {
      exitCode: 4,
      stdout: 'SQL1035N  held.  SQLSTATE=57019\n',
      stderr: '',
    });
    await assert.rejects(runner.run('keyops-no-such-tool', []), /ENOENT/);
  });
});
