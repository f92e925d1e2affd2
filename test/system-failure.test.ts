import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ApplicationFailure } from '@temporalio/common';
import Database from 'better-sqlite3-multiple-ciphers';
import { systemFailure } from '../activities/system-failure';

const errno = (code: string, message: string) => Object.assign(new Error(message), { code });

describe('file-system and SQLite errors leaving an activity', () => {
  it('makes the ones an operator must fix non-retryable, with the fix in the message', () => {
    const cases: [Error, string, RegExp][] = [
      [errno('EACCES', "EACCES: permission denied, open '/backups/crm.kob'"), 'PERMISSION_DENIED', /permission denied.*check the owner and mode/],
      [errno('EROFS', 'EROFS: read-only file system'), 'PERMISSION_DENIED', /read-only/],
      [errno('ENOSPC', 'ENOSPC: no space left on device, write'), 'STORAGE_FULL', /no space left.*free space where KEYOPS_DATA_DIR points/],
    ];
    for (const [err, type, message] of cases) {
      const failure = systemFailure(err);
      assert.ok(failure instanceof ApplicationFailure, type);
      assert.equal(failure.type, type);
      assert.equal(failure.nonRetryable, true, type);
      assert.match(failure.message, message);
    }
  });

  it('classifies a real SQLite error: a file that is not a database', () => {
    const db = new Database(__filename);
    let caught: unknown;
    try {
      db.prepare('SELECT count(*) FROM sqlite_master').get();
    } catch (err) {
      caught = err;
    } finally {
      db.close();
    }
    const failure = systemFailure(caught);
    assert.ok(failure instanceof ApplicationFailure);
    assert.equal(failure.type, 'INVALID_CONFIGURATION');
    assert.equal(failure.nonRetryable, true);
  });

  it('leaves unknown and transient errors as they are, so they are retried', () => {
    for (const err of [new Error('socket hang up'), errno('EAGAIN', 'EAGAIN: resource temporarily unavailable'), errno('SQLITE_BUSY', 'database is locked')]) {
      assert.equal(systemFailure(err), err);
    }
  });
});
