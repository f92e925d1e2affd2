import { ApplicationFailure } from '@temporalio/common';

/**
 * Why a database engine refused. The retryable codes are the transient ones of reference 000:
 * Db2's SQL1728N (keystore not accessible) is KEY_UNAVAILABLE, SQL1035N / SQLSTATE 57019 (the
 * database is held exclusively) is DATABASE_BUSY; a key in the middle of a change is
 * KEY_IN_TRANSITION. Permission and configuration errors stay wrong however often they are tried.
 */
export type EngineErrorCode =
  | 'KEY_UNAVAILABLE'
  | 'KEY_IN_TRANSITION'
  | 'DATABASE_BUSY'
  | 'PERMISSION_DENIED'
  | 'INVALID_CONFIGURATION'
  | 'DATABASE_NOT_FOUND'
  | 'DATABASE_EXISTS'
  | 'BACKUP_INVALID'
  | 'BACKUP_KEY_MISSING'
  | 'ENGINE_COMMAND_FAILED';

const RETRYABLE: ReadonlySet<EngineErrorCode> = new Set(['KEY_UNAVAILABLE', 'KEY_IN_TRANSITION', 'DATABASE_BUSY']);

export class EngineError extends Error {
  readonly retryable: boolean;

  constructor(
    readonly code: EngineErrorCode,
    message: string,
    /** The engine's own code where it has one (e.g. SQL1728N), for the operator. */
    readonly engineCode?: string,
  ) {
    super(message);
    this.name = 'EngineError';
    this.retryable = RETRYABLE.has(code);
  }
}

/** The form an engine error takes when it leaves an activity: typed, retryable only where the code says so. */
export function engineFailure(err: EngineError): ApplicationFailure {
  return ApplicationFailure.create({
    type: err.code,
    message: err.message,
    nonRetryable: !err.retryable,
    details: err.engineCode ? [{ engineCode: err.engineCode }] : [],
  });
}
