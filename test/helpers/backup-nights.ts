import { existsSync, readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import Database from 'better-sqlite3-multiple-ciphers';

/**
 * The nights a catalog file recorded for a database, as the alert counts them. The catalog has no
 * reader for them (only recordNight, which also writes), so the test reads its file, read-only.
 */
export function recordedNights(catalogPath: string, databaseId: string): { night: string; outcome: string; error: string | null }[] {
  const db = new Database(catalogPath, { readonly: true, fileMustExist: true });
  try {
    return db
      .prepare<[string], { night: string; outcome: string; error: string | null }>('SELECT night, outcome, error FROM nights WHERE database_id = ? ORDER BY night')
      .all(databaseId);
  } finally {
    db.close();
  }
}

/** Every file a backup run left under `<dataDir>/backups/<databaseId>` (finished, partial or scratch). */
export function backupFiles(dataDir: string, databaseId: string): string[] {
  const dir = join(dataDir, 'backups', databaseId);
  return existsSync(dir) ? readdirSync(dir) : [];
}

/**
 * Whatever a restore left at `targetPath`: the file itself and any partial beside it
 * (`<name>.partial-<pid>-<random>`). Empty when the directory does not exist.
 */
export function filesAt(targetPath: string): string[] {
  const dir = dirname(targetPath);
  return existsSync(dir) ? readdirSync(dir).filter((name) => name.startsWith(basename(targetPath))) : [];
}
