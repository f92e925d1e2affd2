import { EngineError, type EngineErrorCode } from './engine-error';

/**
 * Db2 CLP messages keyops must tell apart (IBM message catalogue). The two transient ones of
 * reference 000 are distinct causes: SQL1728N, the keystore could not be accessed (the KMS or
 * its credentials: retry with backoff), and SQL1035N / SQLSTATE 57019, the database is held in
 * an incompatible mode, e.g. exclusively by another connection (retry later).
 */
const MESSAGES: Record<string, { code: EngineErrorCode; meaning: string }> = {
  SQL1728N: { code: 'KEY_UNAVAILABLE', meaning: 'the keystore could not be accessed' },
  SQL1035N: { code: 'DATABASE_BUSY', meaning: 'the database cannot be connected to in the mode requested (held exclusively)' },
  SQL0551N: { code: 'PERMISSION_DENIED', meaning: 'the user lacks the authorization or privilege' },
  SQL1092N: { code: 'PERMISSION_DENIED', meaning: 'the user ID does not have the authority for the command' },
  SQL0104N: { code: 'ENGINE_COMMAND_FAILED', meaning: 'the command has a syntax error' },
  SQL1013N: { code: 'DATABASE_NOT_FOUND', meaning: 'the database alias or name could not be found' },
  SQL2036N: { code: 'INVALID_CONFIGURATION', meaning: 'the backup path or device is not valid' },
};

/** SQLSTATEs that identify a cause even when the message number is not in the table. */
const SQLSTATES: Record<string, EngineErrorCode> = {
  '57019': 'DATABASE_BUSY',
  '42501': 'PERMISSION_DENIED',
  '42601': 'ENGINE_COMMAND_FAILED',
};

/**
 * The error a failed Db2 command means, from its output; undefined when the command succeeded.
 * An unknown failure is non-retryable: retrying what keyops does not understand hides it.
 */
export function classifyDb2Output(operation: string, result: { exitCode: number; stdout: string; stderr: string }): EngineError | undefined {
  const output = `${result.stdout}\n${result.stderr}`;
  const message = /\b(SQL\d{4,5}[NWC])\b/.exec(output)?.[1];
  // The CLP exits 0 on success, 1 when no rows, 2 on warnings, 4 on DB2/SQL errors, 8 on CLP errors.
  if (result.exitCode <= 2 && !(message && message.endsWith('N'))) return undefined;
  const sqlstate = /SQLSTATE\s*=?\s*([0-9A-Z]{5})/.exec(output)?.[1];
  const line = output.split('\n').find((l) => message && l.includes(message))?.trim() ?? output.trim().split('\n')[0] ?? '';
  const known = message ? MESSAGES[message] : undefined;
  const code = known?.code ?? (sqlstate ? SQLSTATES[sqlstate] : undefined) ?? 'ENGINE_COMMAND_FAILED';
  const what = known ? `${message}: ${known.meaning}` : message ? `${message}` : `exit code ${result.exitCode}`;
  return new EngineError(code, `Db2 ${operation} failed (${what}${sqlstate ? `, SQLSTATE ${sqlstate}` : ''}): ${line}`, message ?? (sqlstate ? `SQLSTATE ${sqlstate}` : undefined));
}
