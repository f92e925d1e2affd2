import { existsSync, readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { SqliteBackupCatalog } from '../../activities/catalog/sqlite-backup-catalog';

/** The nights a catalog file recorded for a database, as the alert counts them, by night. */
export function recordedNights(catalogPath: string, databaseId: string): { night: string; outcome: string; error: string | null }[] {
  const catalog = SqliteBackupCatalog.open(catalogPath);
  try {
    return catalog
      .listNights({ databaseId })
      .sort((a, b) => a.night.localeCompare(b.night))
      .map((n) => ({ night: n.night, outcome: n.outcome, error: n.error ?? null }));
  } finally {
    catalog.close();
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
