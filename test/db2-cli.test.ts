import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { CommandResult, CommandRunner } from '../activities/engines/command-runner';
import { Db2Cli, db2ImageFileName, parseEncryptionInfo } from '../activities/engines/db2-cli';
import { classifyDb2Output } from '../activities/engines/db2-messages';
import { EngineError } from '../activities/engines/engine-error';
import { engineError } from './helpers/engine-errors';
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

const FIXTURES = join(__dirname, 'fixtures', 'db2');
const fixture = (name: string): string => readFileSync(join(FIXTURES, name), 'utf8');
const ok = (stdout: string, exitCode = 0): CommandResult => ({ exitCode, stdout, stderr: '' });
const failed = (stdout: string, exitCode = 4): CommandResult => ({ exitCode, stdout, stderr: '' });

/**
 * A fake of the CLP and db2ckbkp for command sequences (CONNECT TO, a statement, CONNECT RESET):
 * answers each command from a script keyed by how the command starts, and records every call.
 * A command the script does not expect fails the test rather than passing silently.
 */
class Db2ScriptRunner implements CommandRunner {
  readonly calls: string[] = [];
  constructor(private readonly script: [prefix: string, answer: CommandResult][]) {}
  run(command: string, args: readonly string[]): Promise<CommandResult> {
    const line = [command, ...args].join(' ');
    this.calls.push(line);
    const answer = this.script.find(([prefix]) => line.startsWith(prefix))?.[1];
    if (!answer) return Promise.reject(new Error(`the fake CLP has no answer for: ${line}`));
    return Promise.resolve(answer);
  }
}

const CONNECTED = ok('\n   Database Connection Information\n\n Database server        = DB2/LINUXX8664 11.5.9.0\n SQL authorization ID   = DB2INST1\n Local database alias   = PRODDB\n\n');
const RESET = ok('DB20000I  The SQL command completed successfully.\n');


/** IBM's message texts (SQL message reference) for the causes keyops must tell apart. */
const MESSAGE_CLASSES: { name: string; transcript: CommandResult; code: string; retryable: boolean; message: string; says?: RegExp }[] = [
  {
    name: 'instance not started (SQLSTATE 57019 too, yet not a busy database)',
    transcript: failed('SQL1032N  No start database manager command was issued.  SQLSTATE=57019\n'),
    code: 'ENGINE_COMMAND_FAILED',
    retryable: false,
    message: 'SQL1032N',
    says: /database manager is not started.*db2start/,
  },
  {
    name: 'backup pending (SQLSTATE 57019 too)',
    transcript: failed('SQL1116N  A connection to or activation of database "PRODDB" cannot be made because of BACKUP PENDING.  SQLSTATE=57019\n'),
    code: 'ENGINE_COMMAND_FAILED',
    retryable: false,
    message: 'SQL1116N',
    says: /BACKUP PENDING.*full offline backup/,
  },
  {
    name: 'roll-forward pending',
    transcript: failed('SQL1117N  A connection to or activation of database "PRODDB" cannot be made because of ROLL-FORWARD PENDING.  SQLSTATE=57019\n'),
    code: 'ENGINE_COMMAND_FAILED',
    retryable: false,
    message: 'SQL1117N',
    says: /ROLLFORWARD DATABASE/,
  },
  {
    name: 'requests terminated or forced off',
    transcript: failed(
      'SQL1224N  The database manager is not able to accept new requests, has terminated all requests in progress, or has terminated your particular request due to an error or a force interrupt.  SQLSTATE=55032\n',
    ),
    code: 'ENGINE_COMMAND_FAILED',
    retryable: false,
    message: 'SQL1224N',
    says: /db2diag\.log/,
  },
  {
    name: 'communication error',
    transcript: failed(
      'SQL30081N  A communication error has been detected. Communication protocol being used: "TCP/IP".  Communication API being used: "SOCKETS".  Location where the error was detected: "10.0.0.5".  Communication function detecting the error: "connect".  Protocol specific error code(s): "111", "*", "*".  SQLSTATE=08001\n',
    ),
    code: 'DATABASE_BUSY',
    retryable: true,
    message: 'SQL30081N',
  },
  {
    name: 'no connection',
    transcript: failed('SQL1024N  A database connection does not exist.  SQLSTATE=08003\n'),
    code: 'ENGINE_COMMAND_FAILED',
    retryable: false,
    message: 'SQL1024N',
  },
  {
    name: 'database not found',
    transcript: failed('SQL1013N  The database alias name or database name "PRODDB" could not be found.  SQLSTATE=42705\n'),
    code: 'DATABASE_NOT_FOUND',
    retryable: false,
    message: 'SQL1013N',
  },
  {
    name: 'media error',
    transcript: failed('SQL2062N  An error occurred while accessing media "/backup/db2".  Reason code: "11".\n'),
    code: 'ENGINE_COMMAND_FAILED',
    retryable: false,
    message: 'SQL2062N',
    says: /file system of the backup directory/,
  },
  {
    name: 'media access denied',
    transcript: failed('SQL2061N  An attempt to access media "/backup/db2" is denied.\n'),
    code: 'PERMISSION_DENIED',
    retryable: false,
    message: 'SQL2061N',
  },
  {
    name: 'path not valid',
    transcript: failed('SQL2036N  The path for the file or device "/backup/db2" is not valid.\n'),
    code: 'INVALID_CONFIGURATION',
    retryable: false,
    message: 'SQL2036N',
  },
  {
    name: 'no child process',
    transcript: failed('SQL2043N  Unable to start a child process or thread.\n'),
    code: 'ENGINE_COMMAND_FAILED',
    retryable: false,
    message: 'SQL2043N',
  },
  {
    name: 'object not accessible',
    transcript: failed('SQL2048N  An error occurred while accessing object "SYSCATSPACE". Reason code: "7".\n'),
    code: 'ENGINE_COMMAND_FAILED',
    retryable: false,
    message: 'SQL2048N',
  },
  {
    name: 'encryption library not loadable',
    transcript: failed('SQL2071N  An error occurred while accessing the shared library "/opt/ibm/db2/V11.5/lib64/libdb2encr.so". Reason code: "2".\n'),
    code: 'INVALID_CONFIGURATION',
    retryable: false,
    message: 'SQL2071N',
    says: /ENCRLIB/,
  },
  {
    name: 'device full: a warning that still fails the backup (exit code 2)',
    transcript: failed('SQL2059W  A device full warning was encountered on device "/backup/db2".\n', 2),
    code: 'ENGINE_COMMAND_FAILED',
    retryable: false,
    message: 'SQL2059W',
    says: /free space/,
  },
  {
    // Message number and wording NOT verified against IBM's catalogue (see the report): modelled
    // on ADMIN_ROTATE_MASTER_KEY's documented failure, "the label must be associated with a master
    // key at the keystore". The classifier keys on the wording, not on this number.
    name: 'master key label not in the keystore',
    transcript: failed('SQL1782N  The master key label "PRODDB_MK_2025" was not found in the keystore.\n'),
    code: 'BACKUP_KEY_MISSING',
    retryable: false,
    message: 'SQL1782N',
    says: /master key label is not in the keystore.*Restore the keystore/,
  },
  {
    // A made-up number: what keyops does with a message it does not know.
    name: 'unknown message',
    transcript: failed('SQL9998N  A message keyops has never seen.  SQLSTATE=58004\n'),
    code: 'ENGINE_COMMAND_FAILED',
    retryable: false,
    message: 'SQL9998N',
  },
];

describe('Db2 message classes (fake CLP replaying IBM message texts)', () => {
  for (const c of MESSAGE_CLASSES) {
    it(`${c.name}: ${c.message} is ${c.code}${c.retryable ? ', retried' : ', not retried'}`, async () => {
      const err = await engineError(new Db2Cli(new Db2TranscriptRunner(c.transcript)).backupDatabase('PRODDB', '/backup/db2'));
      assert.deepEqual({ code: err.code, retryable: err.retryable, engineCode: err.engineCode }, { code: c.code, retryable: c.retryable, engineCode: c.message });
      assert.match(err.message, /^Db2 backup of PRODDB failed/);
      assert.ok(err.message.includes(c.message), err.message);
      if (c.says) assert.match(err.message, c.says);
    });
  }

  it('a known message wins over a warning printed before it, and over the SQLSTATE', () => {
    const err = classifyDb2Output('backup of PRODDB', failed('SQL2426W  something first\nSQL1116N  A connection to or activation of database "PRODDB" cannot be made because of BACKUP PENDING.  SQLSTATE=57019\n'));
    assert.deepEqual([err?.code, err?.retryable, err?.engineCode], ['ENGINE_COMMAND_FAILED', false, 'SQL1116N']);
  });

  it('a failure without any message number is non-retryable and keeps the exit code', () => {
    const err = classifyDb2Output('backup of PRODDB', { exitCode: 4, stdout: '', stderr: 'db2: cannot attach to the back-end process' });
    assert.deepEqual([err?.code, err?.retryable, err?.engineCode], ['ENGINE_COMMAND_FAILED', false, undefined]);
    assert.match(err?.message ?? '', /exit code 4\): db2: cannot attach/);
  });
});

describe('Db2 key state from SYSPROC.ADMIN_GET_ENCRYPTION_INFO', () => {
  const ROW = {
    objectName: 'PRODDB',
    objectType: 'DATABASE',
    algorithm: 'AES',
    algorithmMode: 'CBC',
    keyLength: 256,
    masterKeyLabel: 'DB2_SYSGEN_db2inst1_PRODDB_2026-03-01-02.00.00_A1B2C3D4',
    keystoreName: '/home/db2inst1/keystore/prod keys.p12',
    keystoreType: 'PKCS12',
    keystoreHost: 'db2host.example.com',
    keystoreIp: '10.0.0.5',
    keystoreIpType: 'IPV4',
    previousMasterKeyLabel: 'DB2_SYSGEN_db2inst1_PRODDB_2025-03-01-02.00.00_0F0E0D0C',
    rotationTime: '2026-03-01-02.00.00.000000',
  };

  it('decodes the hex columns the query asks for, blanks and all (the CLP pads the line)', () => {
    assert.deepEqual(parseEncryptionInfo(fixture('admin-get-encryption-info.out')), [ROW]);
  });

  it('keeps NULL apart from the empty string', () => {
    const [row] = parseEncryptionInfo('x504C41494E x4441544142415345 - - - - x - - - - - -\n');
    assert.deepEqual(row, {
      objectName: 'PLAIN',
      objectType: 'DATABASE',
      algorithm: null,
      algorithmMode: null,
      keyLength: null,
      masterKeyLabel: null,
      keystoreName: '',
      keystoreType: null,
      keystoreHost: null,
      keystoreIp: null,
      keystoreIpType: null,
      previousMasterKeyLabel: null,
      rotationTime: null,
    });
  });

  it('refuses the CLP table format and rows that do not fit the columns', () => {
    const table = 'OBJECT_NAME  OBJECT_TYPE  ALGORITHM\n-----------  -----------  ---------\nPRODDB       DATABASE     AES\n';
    assert.throws(() => parseEncryptionInfo(table), (e: unknown) => e instanceof EngineError && e.code === 'ENGINE_COMMAND_FAILED' && /cannot read \(3 fields, expected 13/.test(e.message));
    // KEY_LENGTH "abc" and a rotation time in the wrong format.
    const bad = 'x50 x44 - - x616263 - - - - - - - x32303236\n';
    assert.throws(() => parseEncryptionInfo(bad), /row keyops cannot read/);
  });

  it('connects, runs the query with -x, resets the connection, and returns the DATABASE row', async () => {
    const runner = new Db2ScriptRunner([
      ['db2 CONNECT TO PRODDB', CONNECTED],
      ['db2 -x SELECT', ok(fixture('admin-get-encryption-info.out'))],
      ['db2 CONNECT RESET', RESET],
    ]);
    assert.deepEqual(await new Db2Cli(runner).encryptionInfo('PRODDB'), ROW);
    assert.equal(runner.calls.length, 3);
    assert.deepEqual([runner.calls[0], runner.calls[2]], ['db2 CONNECT TO PRODDB', 'db2 CONNECT RESET']);
    const query = runner.calls[1] ?? '';
    assert.match(query, /FROM TABLE\(SYSPROC\.ADMIN_GET_ENCRYPTION_INFO\(\)\) AS T$/);
    for (const column of ['OBJECT_NAME', 'OBJECT_TYPE', 'MASTER_KEY_LABEL', 'KEYSTORE_NAME', 'PREVIOUS_MASTER_KEY_LABEL', 'CHAR(ROTATION_TIME)', 'RTRIM(CHAR(KEY_LENGTH))']) {
      assert.ok(query.includes(`COALESCE('x' || HEX(${column}), '-')`), column);
    }
  });

  it('a failed CONNECT names the database and runs nothing else; a failed query still resets the connection', async () => {
    const down = new Db2ScriptRunner([['db2 CONNECT TO PRODDB', failed('SQL1032N  No start database manager command was issued.  SQLSTATE=57019\n')]]);
    const err = await engineError(new Db2Cli(down).encryptionInfo('PRODDB'));
    assert.deepEqual([err.code, err.retryable, err.engineCode], ['ENGINE_COMMAND_FAILED', false, 'SQL1032N']);
    assert.match(err.message, /^Db2 key state of PRODDB failed \(SQL1032N/);
    assert.deepEqual(down.calls, ['db2 CONNECT TO PRODDB']);

    const keystore = new Db2ScriptRunner([
      ['db2 CONNECT TO PRODDB', CONNECTED],
      ['db2 -x SELECT', failed('SQL1728N  The command or operation failed because the keystore could not be accessed. Reason code "2".\n')],
      ['db2 CONNECT RESET', RESET],
    ]);
    const locked = await engineError(new Db2Cli(keystore).encryptionInfo('PRODDB'));
    assert.deepEqual([locked.code, locked.retryable], ['KEY_UNAVAILABLE', true]);
    assert.equal(keystore.calls.at(-1), 'db2 CONNECT RESET');
  });

  it('a database without a DATABASE row is an error, not an unencrypted guess', async () => {
    const runner = new Db2ScriptRunner([
      ['db2 CONNECT TO PRODDB', CONNECTED],
      ['db2 -x SELECT', ok('x5453 x5441424C455350414345 - - - - - - - - - - -\n')],
      ['db2 CONNECT RESET', RESET],
    ]);
    await assert.rejects(new Db2Cli(runner).encryptionInfo('PRODDB'), /no DATABASE row \(1 rows\)/);
  });
});

describe('Db2 master key rotation (CALL SYSPROC.ADMIN_ROTATE_MASTER_KEY)', () => {
  // The output parameter block as IBM documents it for the procedure.
  const rotated = (label: string): CommandResult => ok(`\n  Value of output parameters\n  --------------------------\n  Parameter Name  : LABEL\n  Parameter Value : ${label}\n\n  Return Status = 0\n`);

  it('with NULL: Db2 generates the master key and keyops returns its label', async () => {
    const runner = new Db2ScriptRunner([
      ['db2 CONNECT TO PRODDB', CONNECTED],
      ['db2 CALL', rotated('DB2_SYSGEN_db2inst1_PRODDB_2026-12-01-02.15.41')],
      ['db2 CONNECT RESET', RESET],
    ]);
    assert.deepEqual(await new Db2Cli(runner).rotateMasterKey('PRODDB'), {
      label: 'DB2_SYSGEN_db2inst1_PRODDB_2026-12-01-02.15.41',
      command: 'CALL SYSPROC.ADMIN_ROTATE_MASTER_KEY(NULL)',
    });
    assert.deepEqual(runner.calls, ['db2 CONNECT TO PRODDB', 'db2 CALL SYSPROC.ADMIN_ROTATE_MASTER_KEY(NULL)', 'db2 CONNECT RESET']);
  });

  it('with a label: passes it as a string literal and checks Db2 used it', async () => {
    const runner = new Db2ScriptRunner([
      ['db2 CONNECT TO PRODDB', CONNECTED],
      ["db2 CALL SYSPROC.ADMIN_ROTATE_MASTER_KEY('PRODDB_MK_2026')", rotated('PRODDB_MK_2026')],
      ['db2 CONNECT RESET', RESET],
    ]);
    assert.equal((await new Db2Cli(runner).rotateMasterKey('PRODDB', 'PRODDB_MK_2026')).label, 'PRODDB_MK_2026');
    const other = new Db2ScriptRunner([
      ['db2 CONNECT TO PRODDB', CONNECTED],
      ['db2 CALL', rotated('SOMETHING_ELSE')],
      ['db2 CONNECT RESET', RESET],
    ]);
    await assert.rejects(new Db2Cli(other).rotateMasterKey('PRODDB', 'PRODDB_MK_2026'), /asked for label PRODDB_MK_2026 but reported SOMETHING_ELSE/);
  });

  it('refuses a label that could close the SQL string, before connecting', async () => {
    const runner = new Db2ScriptRunner([]);
    const cli = new Db2Cli(runner);
    for (const label of ["x') ; DROP DATABASE PRODDB --", 'two words', '', 'a'.repeat(256)]) {
      const err = await engineError(cli.rotateMasterKey('PRODDB', label));
      assert.equal(err.code, 'INVALID_CONFIGURATION', label);
    }
    await assert.rejects(cli.rotateMasterKey('PROD DB'), /must be 1 to 8 letters/);
    assert.deepEqual(runner.calls, []);
  });

  it('a non-zero return status or no label is a failure, and a missing label is BACKUP_KEY_MISSING', async () => {
    const status = new Db2ScriptRunner([
      ['db2 CONNECT TO PRODDB', CONNECTED],
      ['db2 CALL', ok('\n  Value of output parameters\n  --------------------------\n  Parameter Name  : LABEL\n  Parameter Value : X\n\n  Return Status = -1\n')],
      ['db2 CONNECT RESET', RESET],
    ]);
    await assert.rejects(new Db2Cli(status).rotateMasterKey('PRODDB'), (e: unknown) => e instanceof EngineError && e.code === 'ENGINE_COMMAND_FAILED' && /return status 0/.test(e.message));
    const missing = new Db2ScriptRunner([
      ['db2 CONNECT TO PRODDB', CONNECTED],
      // Wording not verified (see the message classes above).
      ['db2 CALL', failed('SQL1782N  The master key label "PRODDB_MK_2026" was not found in the keystore.\n')],
      ['db2 CONNECT RESET', RESET],
    ]);
    const err = await engineError(new Db2Cli(missing).rotateMasterKey('PRODDB', 'PRODDB_MK_2026'));
    assert.deepEqual([err.code, err.retryable], ['BACKUP_KEY_MISSING', false]);
    assert.match(err.message, /^Db2 master key rotation of PRODDB failed/);
  });
});

describe('Db2 restore into a new database', () => {
  const RESTORED = ok('DB20000I  The RESTORE DATABASE command completed successfully.\n');

  it('online image: checks the directory, restores into the new name with ENCRYPT, rolls forward to the end of the backup', async () => {
    const runner = new Db2ScriptRunner([
      ['db2 LIST DATABASE DIRECTORY', ok(fixture('list-database-directory.out'))],
      ['db2 RESTORE DATABASE', RESTORED],
      ['db2 ROLLFORWARD DATABASE', ok(fixture('rollforward.out'))],
    ]);
    const result = await new Db2Cli(runner).restoreDatabase({ source: 'PRODDB', directory: '/backup/db2', takenAt: '20261201021541', into: 'PRODNEW', logTarget: '/restore/logs' });
    const commands = [
      'RESTORE DATABASE PRODDB FROM /backup/db2 TAKEN AT 20261201021541 INTO PRODNEW LOGTARGET /restore/logs ENCRYPT',
      'ROLLFORWARD DATABASE PRODNEW TO END OF BACKUP AND STOP OVERFLOW LOG PATH (/restore/logs)',
    ];
    assert.deepEqual(result, { database: 'PRODNEW', commands });
    assert.deepEqual(runner.calls, ['db2 LIST DATABASE DIRECTORY', ...commands.map((c) => `db2 ${c}`)]);
  });

  it('offline image: WITHOUT ROLLING FORWARD, and the master key label when one is named', async () => {
    const runner = new Db2ScriptRunner([
      ['db2 LIST DATABASE DIRECTORY', ok('SQL1057W  The system database directory is empty.\n', 2)],
      ['db2 RESTORE DATABASE', RESTORED],
    ]);
    const result = await new Db2Cli(runner).restoreDatabase({ source: 'PRODDB', directory: '/backup/db2', takenAt: '20261201021541', into: 'PRODNEW', masterKeyLabel: 'PRODNEW_MK_1' });
    assert.deepEqual(result.commands, ['RESTORE DATABASE PRODDB FROM /backup/db2 TAKEN AT 20261201021541 INTO PRODNEW WITHOUT ROLLING FORWARD ENCRYPT MASTER KEY LABEL PRODNEW_MK_1']);
    assert.equal(runner.calls.length, 2);
  });

  it('never over an existing database unless explicitly asked', async () => {
    const runner = new Db2ScriptRunner([['db2 LIST DATABASE DIRECTORY', ok(fixture('list-database-directory.out'))]]);
    const cli = new Db2Cli(runner);
    const same = await engineError(cli.restoreDatabase({ source: 'PRODDB', directory: '/backup/db2', takenAt: '20261201021541', into: 'proddb' }));
    assert.deepEqual([same.code, same.retryable], ['DATABASE_EXISTS', false]);
    assert.match(same.message, /would replace the database the image was taken from/);
    assert.deepEqual(runner.calls, []);
    const existing = await engineError(cli.restoreDatabase({ source: 'PRODDB', directory: '/backup/db2', takenAt: '20261201021541', into: 'PRODCHK' }));
    assert.equal(existing.code, 'DATABASE_EXISTS');
    assert.match(existing.message, /database PRODCHK already exists/);
    assert.deepEqual(runner.calls, ['db2 LIST DATABASE DIRECTORY'], 'no RESTORE was run');
  });

  it('replaceExisting is the only way over a database: REPLACE EXISTING WITHOUT PROMPTING, no ENCRYPT clause', async () => {
    const runner = new Db2ScriptRunner([['db2 RESTORE DATABASE', RESTORED]]);
    const result = await new Db2Cli(runner).restoreDatabase({ source: 'PRODDB', directory: '/backup/db2', takenAt: '20261201021541', into: 'PRODDB', replaceExisting: true });
    assert.deepEqual(result.commands, ['RESTORE DATABASE PRODDB FROM /backup/db2 TAKEN AT 20261201021541 INTO PRODDB REPLACE EXISTING WITHOUT ROLLING FORWARD WITHOUT PROMPTING']);
    assert.equal(runner.calls.length, 1, 'no directory check when replacing is what was asked');
    await assert.rejects(
      new Db2Cli(runner).restoreDatabase({ source: 'PRODDB', directory: '/backup/db2', takenAt: '20261201021541', into: 'PRODDB', replaceExisting: true, masterKeyLabel: 'MK1' }),
      /applies only to a new database/,
    );
    assert.equal(runner.calls.length, 1);
  });

  it('Db2 asking before an overwrite (SQL2539W) is DATABASE_EXISTS; an image that is not there is BACKUP_INVALID', async () => {
    const prompt = new Db2ScriptRunner([
      ['db2 LIST DATABASE DIRECTORY', ok('SQL1057W  The system database directory is empty.\n', 2)],
      [
        'db2 RESTORE DATABASE',
        ok(
          'SQL2539W  The specified name of the backup image to restore is the same as the\nname of the target database.  Restoring to an existing database that is the\nsame as the backup image database will cause the current database to be\noverwritten by the backup version.\nDo you want to continue ? (y/n)',
          2,
        ),
      ],
    ]);
    const asked = await engineError(new Db2Cli(prompt).restoreDatabase({ source: 'PRODDB', directory: '/backup/db2', takenAt: '20261201021541', into: 'PRODNEW' }));
    assert.deepEqual([asked.code, asked.engineCode], ['DATABASE_EXISTS', 'SQL2539W']);
    assert.match(asked.message, /^Db2 restore of PRODDB into PRODNEW failed \(SQL2539W/);
    const missing = new Db2ScriptRunner([
      ['db2 LIST DATABASE DIRECTORY', ok('SQL1057W  The system database directory is empty.\n', 2)],
      ['db2 RESTORE DATABASE', failed('SQL2542N  No match for a database image file was found based on the source database alias "PRODDB" and timestamp "20261201021541" provided.\n')],
    ]);
    const gone = await engineError(new Db2Cli(missing).restoreDatabase({ source: 'PRODDB', directory: '/backup/db2', takenAt: '20261201021541', into: 'PRODNEW' }));
    assert.deepEqual([gone.code, gone.retryable, gone.engineCode], ['BACKUP_INVALID', false, 'SQL2542N']);
  });

  it('a roll-forward that leaves the database pending is a failure', async () => {
    const runner = new Db2ScriptRunner([
      ['db2 LIST DATABASE DIRECTORY', ok('SQL1057W  The system database directory is empty.\n', 2)],
      ['db2 RESTORE DATABASE', RESTORED],
      ['db2 ROLLFORWARD DATABASE', ok(fixture('rollforward.out').replace('= not pending', '= DB  working'))],
    ]);
    await assert.rejects(
      new Db2Cli(runner).restoreDatabase({ source: 'PRODDB', directory: '/backup/db2', takenAt: '20261201021541', into: 'PRODNEW', logTarget: '/restore/logs' }),
      /roll-forward of PRODNEW ended with rollforward status "DB {2}working"/,
    );
  });

  it('refuses names, paths, timestamps and labels that would change the command, before running anything', async () => {
    const runner = new Db2ScriptRunner([]);
    const cli = new Db2Cli(runner);
    const base = { source: 'PRODDB', directory: '/backup/db2', takenAt: '20261201021541', into: 'PRODNEW' };
    const refusals: [Partial<typeof base> & { logTarget?: string; masterKeyLabel?: string }, RegExp][] = [
      [{ source: 'PRODDB FROM /etc' }, /source database name "PRODDB FROM \/etc"/],
      [{ into: 'NEW;DROP' }, /target database name/],
      [{ into: 'TOOLONGNAME' }, /must be 1 to 8 letters/],
      [{ directory: 'backup/db2' }, /backup directory "backup\/db2" must be an absolute path/],
      [{ directory: '/backup/../etc' }, /without \.\. segments/],
      [{ directory: '/backup/db2 WITHOUT PROMPTING' }, /must be an absolute path/],
      [{ logTarget: '/restore/logs)' }, /log target directory/],
      [{ takenAt: '2026120102' }, /14 digits/],
      [{ takenAt: '20261201021541 REPLACE EXISTING' }, /14 digits/],
      [{ masterKeyLabel: 'MK LABEL' }, /master key label "MK LABEL"/],
    ];
    for (const [change, message] of refusals) {
      const err = await engineError(cli.restoreDatabase({ ...base, ...change }));
      assert.equal(err.code, 'INVALID_CONFIGURATION', JSON.stringify(change));
      assert.match(err.message, message);
    }
    assert.deepEqual(runner.calls, []);
  });
});

describe('Db2 backup image checks (db2ckbkp)', () => {
  const IMAGE = '/backup/db2/PRODDB.0.db2inst1.DBPART000.20261201021541.001';

  it('"Image Verification Complete - successful." is a verified image', async () => {
    const runner = new Db2ScriptRunner([['db2ckbkp', ok('\n[1] Buffers processed:  ##########\n\nImage Verification Complete - successful.\n')]]);
    assert.deepEqual(await new Db2Cli(runner).verifyBackupImage(IMAGE), { image: IMAGE, command: `db2ckbkp ${IMAGE}` });
    assert.deepEqual(runner.calls, [`db2ckbkp ${IMAGE}`]);
  });

  it('errors detected, or no verdict at all, is BACKUP_INVALID', async () => {
    const damaged = new Db2ScriptRunner([['db2ckbkp', failed('\n[1] Buffers processed:  ####\nERROR!  Page checksum failure in object 4 of pool 2\n\nImage Verification Complete - ERRORS DETECTED:    1\n', 1)]]);
    const err = await engineError(new Db2Cli(damaged).verifyBackupImage(IMAGE));
    assert.deepEqual([err.code, err.retryable], ['BACKUP_INVALID', false]);
    assert.match(err.message, /PRODDB\.0\.db2inst1\.DBPART000\.20261201021541\.001 failed db2ckbkp: Image Verification Complete - ERRORS DETECTED: {4}1/);
    const silent = new Db2ScriptRunner([['db2ckbkp', ok('\n[1] Buffers processed:  ####\n')]]);
    await assert.rejects(new Db2Cli(silent).verifyBackupImage(IMAGE), (e: unknown) => e instanceof EngineError && e.code === 'BACKUP_INVALID');
  });

  it('a keystore error while checking an encrypted image stays a retryable key error', async () => {
    const runner = new Db2ScriptRunner([['db2ckbkp', failed('SQL1728N  The command or operation failed because the keystore could not be accessed. Reason code "2".\n', 1)]]);
    const err = await engineError(new Db2Cli(runner).verifyBackupImage(IMAGE));
    assert.deepEqual([err.code, err.retryable, err.engineCode], ['KEY_UNAVAILABLE', true, 'SQL1728N']);
  });

  it('-h reads the media header (IBM technote transcript)', async () => {
    const runner = new Db2ScriptRunner([['db2ckbkp -h', ok(fixture('db2ckbkp-h.out'))]]);
    assert.deepEqual(await new Db2Cli(runner, 'db2', { db2ckbkp: 'db2ckbkp' }).describeBackupImage('/backup/db2/SAMPLE.0.db2inst1.DBPART000.20100730130237.001'), {
      database: 'SAMPLE',
      alias: 'SAMPLE',
      clientAlias: 'SAMPLE',
      timestamp: '20100730130237',
      instance: 'db2inst1',
      partition: 0,
      sequence: 1,
      backupType: 0,
      online: true,
      includesLogs: true,
    });
    const garbage = new Db2ScriptRunner([['db2ckbkp -h', ok('nothing like a header\n')]]);
    await assert.rejects(new Db2Cli(garbage).describeBackupImage(IMAGE), (e: unknown) => e instanceof EngineError && e.code === 'BACKUP_INVALID' && /no readable media header/.test(e.message));
  });

  it('refuses image paths that are relative, climb out or carry options', async () => {
    const runner = new Db2ScriptRunner([]);
    const cli = new Db2Cli(runner);
    for (const image of ['PRODDB.0.db2inst1.DBPART000.20261201021541.001', '/backup/../etc/shadow', '/backup/x -a']) {
      await assert.rejects(cli.verifyBackupImage(image), (e: unknown) => e instanceof EngineError && e.code === 'INVALID_CONFIGURATION');
    }
    assert.deepEqual(runner.calls, []);
  });
});

describe('Db2 scratch databases: RESTORE ... ON, DROP DATABASE, row counts', () => {
  const hex = (s: string) => Buffer.from(s, 'utf8').toString('hex').toUpperCase();
  const tableLine = (schema: string, name: string) => `x${hex(schema)} x${hex(name)}`;
  const NO_ROWS = ok('SQL0100W  No row was found for FETCH, UPDATE or DELETE; or the result of a query is an empty table.  SQLSTATE=02000\n', 1);

  it('ON puts the new database (storage paths and database path) in a directory of its own', async () => {
    const runner = new Db2ScriptRunner([
      ['db2 LIST DATABASE DIRECTORY', ok(fixture('list-database-directory.out'))],
      ['db2 RESTORE DATABASE', ok('DB20000I  The RESTORE DATABASE command completed successfully.\n')],
    ]);
    const result = await new Db2Cli(runner).restoreDatabase({ source: 'PRODDB', directory: '/backup/db2', takenAt: '20261201021541', into: 'PRODNEW', on: '/restore/PRODNEW' });
    assert.deepEqual(result.commands, ['RESTORE DATABASE PRODDB FROM /backup/db2 TAKEN AT 20261201021541 ON /restore/PRODNEW INTO PRODNEW WITHOUT ROLLING FORWARD ENCRYPT']);
    const refused = await engineError(new Db2Cli(new Db2ScriptRunner([])).restoreDatabase({ source: 'PRODDB', directory: '/backup/db2', takenAt: '20261201021541', into: 'PRODNEW', on: '/restore/x INTO OTHER' }));
    assert.equal(refused.code, 'INVALID_CONFIGURATION');
    assert.match(refused.message, /restore target directory/);
  });

  it('DROP DATABASE: success is DB20000I; a database that is not there is DATABASE_NOT_FOUND', async () => {
    const runner = new Db2ScriptRunner([['db2 DROP DATABASE KOCHK1A2', ok('DB20000I  The DROP DATABASE command completed successfully.\n')]]);
    assert.deepEqual(await new Db2Cli(runner).dropDatabase('KOCHK1A2'), { command: 'DROP DATABASE KOCHK1A2' });
    assert.deepEqual(runner.calls, ['db2 DROP DATABASE KOCHK1A2']);
    const gone = new Db2ScriptRunner([['db2 DROP DATABASE', failed('SQL1013N  The database alias name or database name "KOCHK1A2" could not be found.  SQLSTATE=42705\n')]]);
    assert.equal((await engineError(new Db2Cli(gone).dropDatabase('KOCHK1A2'))).code, 'DATABASE_NOT_FOUND');
    const none = new Db2ScriptRunner([]);
    assert.equal((await engineError(new Db2Cli(none).dropDatabase('KOCHK; X'))).code, 'INVALID_CONFIGURATION');
    assert.deepEqual(none.calls, []);
  });

  it('counts the ordinary tables outside SYS* and every row of them, quoting names as delimited identifiers', async () => {
    const runner = new Db2ScriptRunner([
      ['db2 CONNECT TO KOCHK1A2', CONNECTED],
      ["db2 -x SELECT 'x' || HEX(TABSCHEMA)", ok(`${tableLine('APP', 'ORDERS')}   \n${tableLine('APP', 'odd "name"')}\n${tableLine('SALES', 'EMPTY')}\n`)],
      ["db2 -x SELECT 'n'", ok('n1234   \n')],
      ['db2 CONNECT RESET', RESET],
    ]);
    assert.deepEqual(await new Db2Cli(runner).countUserTables('KOCHK1A2'), { tables: 3, rows: 1234 });
    assert.match(runner.calls[1] ?? '', /FROM SYSCAT\.TABLES WHERE TYPE = 'T' AND TABSCHEMA NOT LIKE 'SYS%'/);
    assert.equal(
      runner.calls[2],
      `db2 -x SELECT 'n' || RTRIM(CHAR(SUM(N))) FROM (SELECT COUNT_BIG(*) AS N FROM "APP"."ORDERS" UNION ALL SELECT COUNT_BIG(*) AS N FROM "APP"."odd ""name""" UNION ALL SELECT COUNT_BIG(*) AS N FROM "SALES"."EMPTY") AS C`,
    );
    assert.equal(runner.calls.at(-1), 'db2 CONNECT RESET');
  });

  it('no tables (SQL0100W, exit code 1) is 0 tables and 0 rows; many tables are counted 100 per statement', async () => {
    const empty = new Db2ScriptRunner([
      ['db2 CONNECT TO KOCHK1A2', CONNECTED],
      ['db2 -x SELECT', NO_ROWS],
      ['db2 CONNECT RESET', RESET],
    ]);
    assert.deepEqual(await new Db2Cli(empty).countUserTables('KOCHK1A2'), { tables: 0, rows: 0 });
    assert.equal(empty.calls.length, 3);
    const many = new Db2ScriptRunner([
      ['db2 CONNECT TO KOCHK1A2', CONNECTED],
      ["db2 -x SELECT 'x'", ok(Array.from({ length: 150 }, (_, i) => tableLine('APP', `T${i}`)).join('\n'))],
      ["db2 -x SELECT 'n'", ok('n10\n')],
      ['db2 CONNECT RESET', RESET],
    ]);
    assert.deepEqual(await new Db2Cli(many).countUserTables('KOCHK1A2'), { tables: 150, rows: 20 });
    const counts = many.calls.filter((c) => c.startsWith("db2 -x SELECT 'n'"));
    assert.deepEqual(
      counts.map((c) => c.split('COUNT_BIG').length - 1),
      [100, 50],
    );
  });

  it('a table Db2 cannot read fails the count (and the connection is reset); output keyops cannot read is refused', async () => {
    const pending = new Db2ScriptRunner([
      ['db2 CONNECT TO KOCHK1A2', CONNECTED],
      ["db2 -x SELECT 'x'", ok(`${tableLine('APP', 'ORDERS')}\n`)],
      ["db2 -x SELECT 'n'", failed('SQL0668N  Operation not allowed for reason code "1" on table "APP.ORDERS".  SQLSTATE=57016\n')],
      ['db2 CONNECT RESET', RESET],
    ]);
    const err = await engineError(new Db2Cli(pending).countUserTables('KOCHK1A2'));
    assert.deepEqual([err.code, err.retryable, err.engineCode], ['ENGINE_COMMAND_FAILED', false, 'SQL0668N']);
    assert.match(err.message, /^Db2 row count of KOCHK1A2 failed/);
    assert.equal(pending.calls.at(-1), 'db2 CONNECT RESET');
    const table = new Db2ScriptRunner([
      ['db2 CONNECT TO KOCHK1A2', CONNECTED],
      ['db2 -x SELECT', ok('TABSCHEMA TABNAME\n--------- -------\nAPP       ORDERS\n')],
      ['db2 CONNECT RESET', RESET],
    ]);
    await assert.rejects(new Db2Cli(table).countUserTables('KOCHK1A2'), /SYSCAT\.TABLES returned a line keyops cannot read/);
  });

  it('the image file name RESTORE looks for is built from the media header', () => {
    const header = { database: 'SAMPLE', alias: 'SAMPLE', clientAlias: 'sample', timestamp: '20100730130237', instance: 'db2inst1', partition: 0, sequence: 1, backupType: 0, online: true, includesLogs: true };
    assert.equal(db2ImageFileName(header), 'SAMPLE.0.db2inst1.DBPART000.20100730130237.001');
  });
});
