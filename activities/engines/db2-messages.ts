import { EngineError, type EngineErrorCode } from './engine-error';

interface Db2Message {
  code: EngineErrorCode;
  meaning: string;
  /** What the operator does about it; retrying keyops will not. */
  action?: string;
  /** A warning that still means the command did not do its work (the CLP may exit 2 for it). */
  fails?: true;
}

/**
 * Db2 CLP messages keyops must tell apart (IBM message catalogue, see the report of the Db2
 * adapter for sources). The only transient ones are SQL1728N, the keystore could not be accessed
 * (the KMS or its credentials: retry with backoff), SQL1035N / SQLSTATE 57019, the database is
 * held in an incompatible mode (retry later), and SQL30081N, the network between the CLP and the
 * server failed. Everything else needs an operator, and its message says what to do.
 */
const MESSAGES: Record<string, Db2Message> = {
  // Keystore and keys.
  SQL1728N: { code: 'KEY_UNAVAILABLE', meaning: 'the keystore could not be accessed' },
  // Connection and instance. SQL1032N, SQL1116N and SQL1117N share SQLSTATE 57019 with SQL1035N:
  // being listed here is what keeps them from the retryable SQLSTATE fallback below.
  SQL1035N: { code: 'DATABASE_BUSY', meaning: 'the database cannot be connected to in the mode requested (held exclusively)' },
  SQL1032N: { code: 'ENGINE_COMMAND_FAILED', meaning: 'the database manager is not started', action: 'start the instance (db2start) and run it again' },
  SQL1116N: {
    code: 'ENGINE_COMMAND_FAILED',
    meaning: 'the database is in BACKUP PENDING state',
    action: 'take a full offline backup (BACKUP DATABASE without ONLINE) to clear it, then run it again',
  },
  SQL1117N: {
    code: 'ENGINE_COMMAND_FAILED',
    meaning: 'the database is in ROLL-FORWARD PENDING state',
    action: 'finish the roll-forward (ROLLFORWARD DATABASE ... TO END OF LOGS AND STOP, or TO END OF BACKUP AND STOP after restoring an online image)',
  },
  SQL1224N: {
    code: 'ENGINE_COMMAND_FAILED',
    meaning: 'the database manager stopped accepting requests or forced this one off',
    action: 'see db2diag.log for why (a stopped instance, FORCE APPLICATION, QUIESCE); keyops does not retry a request an operator forced off',
  },
  SQL1024N: { code: 'ENGINE_COMMAND_FAILED', meaning: 'no database connection exists', action: 'another command on the same CLP back-end reset the connection; run it again' },
  SQL30081N: { code: 'DATABASE_BUSY', meaning: 'a communication error cut the connection to the database server' },
  SQL1013N: { code: 'DATABASE_NOT_FOUND', meaning: 'the database alias or name could not be found' },
  SQL1005N: { code: 'DATABASE_EXISTS', meaning: 'the database alias already exists in the local or system database directory' },
  // Authority and statements.
  SQL0551N: { code: 'PERMISSION_DENIED', meaning: 'the user lacks the authorization or privilege' },
  SQL1092N: { code: 'PERMISSION_DENIED', meaning: 'the user ID does not have the authority for the command' },
  SQL0104N: { code: 'ENGINE_COMMAND_FAILED', meaning: 'the command has a syntax error' },
  SQL0440N: { code: 'INVALID_CONFIGURATION', meaning: 'no authorized routine of that name and signature exists', action: 'native encryption routines need Db2 10.5 Fix Pack 5 or later' },
  // Backup and restore media.
  SQL2036N: { code: 'INVALID_CONFIGURATION', meaning: 'the backup path or device is not valid' },
  SQL2061N: { code: 'PERMISSION_DENIED', meaning: 'access to the backup media was denied', action: 'give the instance owner read and write access to the directory' },
  SQL2062N: { code: 'ENGINE_COMMAND_FAILED', meaning: 'an error occurred while accessing the backup media', action: 'check the file system of the backup directory (its reason code is in the message)' },
  SQL2059W: { code: 'ENGINE_COMMAND_FAILED', meaning: 'the backup device is full', action: 'free space or choose another backup directory', fails: true },
  SQL2043N: { code: 'ENGINE_COMMAND_FAILED', meaning: 'the utility could not start a child process or thread', action: 'check the process and memory limits of the instance owner' },
  SQL2048N: { code: 'ENGINE_COMMAND_FAILED', meaning: 'an error occurred while accessing a database object', action: 'the reason code in the message names the object and the cause' },
  SQL2071N: { code: 'INVALID_CONFIGURATION', meaning: 'a shared library (encryption, compression or vendor) could not be loaded', action: 'check ENCRLIB / the library path in the message' },
  SQL2542N: { code: 'BACKUP_INVALID', meaning: 'no backup image matches the database alias and timestamp' },
  // Restore prompts before overwriting an existing database: keyops never answers yes to them.
  SQL2539W: { code: 'DATABASE_EXISTS', meaning: 'the restore would overwrite the existing database of the same name', fails: true },
  SQL2529W: { code: 'DATABASE_EXISTS', meaning: 'the restore would overwrite an existing, different database', fails: true },
};

/** SQLSTATEs that identify a cause even when the message number is not in the table. */
const SQLSTATES: Record<string, EngineErrorCode> = {
  '57019': 'DATABASE_BUSY',
  '08001': 'DATABASE_BUSY',
  '42501': 'PERMISSION_DENIED',
  '42601': 'ENGINE_COMMAND_FAILED',
  '42705': 'DATABASE_NOT_FOUND',
};

/**
 * A master key label the keystore does not hold. Matched on the text rather than a message
 * number: the number could not be verified against IBM's catalogue (see the report), and the
 * condition is what matters. It is permanent until the operator restores the keystore (or its
 * backup) that held the label, so it is BACKUP_KEY_MISSING, never retried.
 */
const LABEL_MISSING = /master key label\b[^\n]*?\b(?:could not be found|was not found|not found|does not exist|is not in the keystore|no association)/i;

const MESSAGE_ID = /\b(SQL\d{4,5}[NWC])\b/g;

/** The message that explains the failure: the first one keyops knows, else the first error. */
function pickMessage(output: string): string | undefined {
  const ids = [...output.matchAll(MESSAGE_ID)].map((m) => m[1] as string);
  return ids.find((id) => id in MESSAGES) ?? ids.find((id) => !id.endsWith('W')) ?? ids[0];
}

/**
 * The error a failed Db2 command means, from its output; undefined when the command succeeded.
 * An unknown failure is non-retryable: retrying what keyops does not understand hides it.
 */
export function classifyDb2Output(operation: string, result: { exitCode: number; stdout: string; stderr: string }): EngineError | undefined {
  const output = `${result.stdout}\n${result.stderr}`;
  const message = pickMessage(output);
  const known = message ? MESSAGES[message] : undefined;
  // The CLP exits 0 on success, 1 when no rows, 2 on warnings, 4 on DB2/SQL errors, 8 on CLP errors.
  if (result.exitCode <= 2 && !known?.fails && !(message && !message.endsWith('W'))) return undefined;
  const sqlstate = /SQLSTATE\s*=?\s*([0-9A-Z]{5})/.exec(output)?.[1];
  const line = output.split('\n').find((l) => message && l.includes(message))?.trim() ?? output.trim().split('\n')[0] ?? '';
  const state = sqlstate ? `, SQLSTATE ${sqlstate}` : '';
  const engineCode = message ?? (sqlstate ? `SQLSTATE ${sqlstate}` : undefined);
  const label = LABEL_MISSING.exec(output);
  if (label) {
    return new EngineError(
      'BACKUP_KEY_MISSING',
      `Db2 ${operation} failed (${message ? `${message}: ` : ''}the master key label is not in the keystore${state}): ${line}. Restore the keystore (or its backup) that holds the label; keyops will not retry`,
      engineCode,
    );
  }
  const code = known?.code ?? (sqlstate ? SQLSTATES[sqlstate] : undefined) ?? 'ENGINE_COMMAND_FAILED';
  const what = known ? `${message}: ${known.meaning}` : (message ?? `exit code ${result.exitCode}`);
  return new EngineError(code, `Db2 ${operation} failed (${what}${state}): ${line}${known?.action ? `. ${known.action}` : ''}`, engineCode);
}
