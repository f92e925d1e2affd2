import { ApplicationFailure } from '@temporalio/common';

/**
 * File-system and SQLite errors an operator must fix: retrying them for half an hour only
 * delays the failed night. Anything else stays retryable (an unknown error may be transient).
 */
export function systemFailure(err: unknown): unknown {
  const code = (err as { code?: unknown }).code;
  const message = err instanceof Error ? err.message : String(err);
  const fixable: Record<string, [type: string, hint: string]> = {
    EACCES: ['PERMISSION_DENIED', 'check the owner and mode of the data directory'],
    EPERM: ['PERMISSION_DENIED', 'check the owner and mode of the data directory'],
    EROFS: ['PERMISSION_DENIED', 'the file system is read-only'],
    ENOSPC: ['STORAGE_FULL', 'free space where KEYOPS_DATA_DIR points'],
    EDQUOT: ['STORAGE_FULL', 'the disk quota is exhausted'],
    SQLITE_NOTADB: ['INVALID_CONFIGURATION', 'the file is not a database this key opens'],
    SQLITE_READONLY: ['PERMISSION_DENIED', 'the database file is read-only'],
    SQLITE_CANTOPEN: ['INVALID_CONFIGURATION', 'the database file cannot be opened'],
    SQLITE_FULL: ['STORAGE_FULL', 'free space where KEYOPS_DATA_DIR points'],
  };
  const known = typeof code === 'string' ? fixable[code] : undefined;
  if (!known) return err;
  return ApplicationFailure.create({ type: known[0], message: `${message} (${known[1]})`, nonRetryable: true, cause: err instanceof Error ? err : undefined });
}
