import { existsSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { readBackupKeyExport, writeBackupKeyExport } from './engines/backup-key-export';
import type { DatabaseEngine } from './engines/database-engine';
import { EngineError } from './engines/engine-error';
import { typed } from './typed';

export interface BackupKeyDeps {
  dataDir: string;
  engine: DatabaseEngine;
  /** Read at export time, so a rotated passphrase file needs no worker restart. */
  backupKeyPassphrase?: () => string | undefined;
}

export function createBackupKeyActivities({ dataDir, engine, backupKeyPassphrase }: BackupKeyDeps) {
  const passphrase = (then = 'start the rotation again'): string => {
    const value = backupKeyPassphrase?.();
    if (!value) {
      throw ApplicationFailure.create({
        type: 'INVALID_CONFIGURATION',
        nonRetryable: true,
        message: `no backup-key passphrase: set KEYOPS_BACKUP_KEY_PASSPHRASE or KEYOPS_BACKUP_KEY_PASSPHRASE_FILE on the workers, then ${then}`,
      });
    }
    return value;
  };

  return {
    async createPendingBackupKey(input: { databaseId: string }): Promise<{ hash: string }> {
      return { hash: await typed(() => engine.createPendingBackupKey(input.databaseId)) };
    },

    /**
     * Exports the key under the passphrase to a new file. A retry that finds the file its
     * earlier attempt wrote (same key) accepts it; any other existing file is never replaced.
     */
    async exportBackupKey(input: { databaseId: string; hash: string; fileName: string }): Promise<{ path: string }> {
      const path = join(dataDir, 'key-backups', input.databaseId, input.fileName);
      const secret = passphrase();
      return typed(async () => {
        if (existsSync(path)) {
          const existing = await readBackupKeyExport(path, secret).catch(() => undefined);
          if (existing?.hash === input.hash && existing.databaseId === input.databaseId) {
            existing.material.fill(0);
            return { path };
          }
        }
        const material = await engine.backupKeyMaterial(input.databaseId, input.hash);
        try {
          await writeBackupKeyExport(path, input.databaseId, material, secret);
        } finally {
          material.fill(0);
        }
        return { path };
      });
    },

    /** Reads the export back with the passphrase: it must hold exactly the pending key. */
    async verifyBackupKeyExport(input: { databaseId: string; hash: string; path: string }): Promise<void> {
      const secret = passphrase();
      await typed(async () => {
        const read = await readBackupKeyExport(input.path, secret);
        read.material.fill(0);
        if (read.hash !== input.hash || read.databaseId !== input.databaseId) {
          throw new EngineError('BACKUP_INVALID', `key backup ${input.path} holds key ${read.hash.slice(0, 12)}… of ${read.databaseId}, not the pending key`);
        }
      });
    },

    async activateBackupKey(input: { databaseId: string; hash: string }): Promise<void> {
      await typed(() => engine.activateBackupKey(input.databaseId, input.hash));
    },

    /**
     * `keyops backup key import FILE`: opens an export with the workers' passphrase and registers
     * the key again, wrapped under the database's root key (or `keyId`), so that backups which
     * name it restore. Idempotent; the key itself never leaves this activity.
     */
    async importBackupKey(input: { path: string; keyId?: string }): Promise<{ databaseId: string; hash: string; keyId: string; keyVersion: number; alreadyRegistered: boolean }> {
      if (!isAbsolute(input.path)) {
        throw ApplicationFailure.create({ type: 'INVALID_INPUT', nonRetryable: true, message: `key backup file ${input.path} must be an absolute path (the worker reads it)` });
      }
      if (!existsSync(input.path)) {
        throw ApplicationFailure.create({ type: 'INVALID_INPUT', nonRetryable: true, message: `key backup file ${input.path} does not exist on the worker` });
      }
      const secret = passphrase('import the key again');
      return typed(async () => {
        const read = await readBackupKeyExport(input.path, secret);
        try {
          return { databaseId: read.databaseId, ...(await engine.importBackupKey(read.databaseId, read.material, input.keyId)) };
        } finally {
          read.material.fill(0);
        }
      });
    },
  };
}
