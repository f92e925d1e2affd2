import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { link, lstat, mkdir, readFile, readdir, realpath, rm, rmdir, stat, symlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { KeyManagementService } from '../kms/key-management-service';
import { processAlive } from '../process-alive';
import type { BackupDescription, BackupImage, BackupToRead, DatabaseEngine, DatabaseKeyState, EngineCapabilities, Progress, RestoreCheck, VerifiedBackupFile } from './database-engine';
import { type Db2Cli, type Db2ImageHeader, db2ImageFileName } from './db2-cli';
import { EngineError } from './engine-error';

export interface Db2DatabaseEngineOptions {
  /** The Db2 database name (or local alias) the CLP connects to. */
  database: string;
  cli: Db2Cli;
  /**
   * The keyops KMS key that plays the role of Db2's master key in its keystore. Db2 wraps its DEK
   * itself: keyops holds no WDEK of this database, it only records which root key and version a
   * backup was taken under, so retention keeps them.
   */
  rootKeyId: string;
  kms: Pick<KeyManagementService, 'getKeyMetadata'>;
  /**
   * Scratch space: the test restore's database (room for one copy of the database) and its
   * extracted logs. The Db2 instance owner writes here, so the worker runs as that user.
   */
  workDir: string;
  /** How often a Db2 command that reports nothing (BACKUP, RESTORE, db2ckbkp) still calls `progress`. */
  heartbeatMs?: number;
}

const DB_NAME = /^[A-Za-z][A-Za-z0-9_@#$]{0,7}$/;
/** Staging and check directories beside backups, named with the pid so a sweep knows whose they are. */
const SIBLING_SCRATCH = /^\.db2-(?:backup|check)-(\d+)-[0-9a-f]+$/;
/** Errors after which the image's own directory cannot take a hard link (a read-only import mount, another file system). */
const NO_SIBLING_LINK = new Set(['EXDEV', 'EROFS', 'EACCES', 'EPERM', 'ENOTSUP', 'EMLINK']);

/** yyyymmddhhmmss in the Db2 server's local time; the CLP runs on that host, so it is this process's too. */
function imageTime(timestamp: string): string {
  const [y, mo, d, h, mi, s] = [0, 4, 6, 8, 10, 12].map((at, i) => Number(timestamp.slice(at, i === 0 ? 4 : at + 2))) as [number, number, number, number, number, number];
  return new Date(y, mo - 1, d, h, mi, s).toISOString();
}

function errnoOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    (err: unknown) => {
      if (errnoOf(err) === 'ENOENT') return false;
      throw err;
    },
  );
}

/** Removes staging and check directories left beside backups by a process that is gone (killed: its `finally` never ran). */
async function sweepSiblings(dir: string): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names) {
    const pid = Number(SIBLING_SCRATCH.exec(name)?.[1]);
    if (pid && pid !== process.pid && !processAlive(pid)) await rm(join(dir, name), { recursive: true, force: true });
  }
}

/**
 * One Db2 database behind the DatabaseEngine port, driven through the command line processor.
 * Db2 encrypts with its own native encryption: its DEK is wrapped by a master key in the
 * keystore, and ADMIN_ROTATE_MASTER_KEY rewraps the DEK under a new master key without touching
 * a page. That is the port's "reprotect"; nothing else of keyops' key model applies:
 * - no WDEK of this database is in keyops' registry (`wdekVersions` is empty), and a master-key
 *   rotation finishes inside the CALL, so no key change is ever in progress;
 * - backups are Db2's own images, encrypted by Db2 (BACKUP ... ENCRYPT) under its master key:
 *   no keyops backup key, so no backup key hash, staging, export or import;
 * - DEK regeneration is not something Db2 does in place.
 * Backup files are Db2 images, not keyops' format: they carry no backup id, night or KMS key
 * version, which is why the description of a file leaves those out (see describeBackup).
 */
export class Db2DatabaseEngine implements DatabaseEngine {
  /** The test restore's database: per keyops database, and at most 8 characters as Db2 names are. */
  readonly scratchDatabase: string;
  /** Verifies of this engine share the scratch database name: one at a time. */
  private checks: Promise<unknown> = Promise.resolve();

  constructor(
    readonly databaseId: string,
    private readonly options: Db2DatabaseEngineOptions,
  ) {
    this.scratchDatabase = `KOCHK${createHash('sha256').update(databaseId).digest('hex').slice(0, 3).toUpperCase()}`;
  }

  supports(): EngineCapabilities {
    return { reprotect: true, regenerate: false, stagedBackupKeys: false };
  }

  private get database(): string {
    return this.options.database;
  }

  private check(databaseId: string): void {
    if (databaseId !== this.databaseId) throw new EngineError('DATABASE_NOT_FOUND', `database ${databaseId} is not the Db2 database configured as ${this.databaseId}`);
  }

  /** A rejected promise rather than a throw: a caller chaining .catch on the call still gets it. */
  private unsupported(what: string, instead: string): Promise<never> {
    return Promise.reject(new EngineError('INVALID_CONFIGURATION', `database ${this.databaseId} is Db2 database ${this.database}: ${what} is not supported (${instead})`));
  }

  /** Keeps heartbeats going while a Db2 command that reports no progress of its own runs. */
  private async running<T>(progress: Progress | undefined, work: () => Promise<T>): Promise<T> {
    if (!progress) return work();
    progress(0, 1);
    const timer = setInterval(() => progress(0, 1), this.options.heartbeatMs ?? 10_000);
    try {
      return await work();
    } finally {
      clearInterval(timer);
    }
  }

  async keyState(databaseId: string): Promise<DatabaseKeyState> {
    this.check(databaseId);
    const info = await this.options.cli.encryptionInfo(this.database);
    // A backup of a plaintext database would be one keyops cannot account for: refuse it here,
    // where every backup and rotation starts.
    const missing = [info.algorithm?.trim() ? undefined : 'no algorithm', info.masterKeyLabel?.trim() ? undefined : 'no master key label'].filter((m) => m !== undefined);
    if (missing.length > 0) {
      throw new EngineError(
        'INVALID_CONFIGURATION',
        `database ${databaseId} (Db2 database ${this.database}) is not natively encrypted: ADMIN_GET_ENCRYPTION_INFO reports ${missing.join(' and ')}. keyops manages only encrypted databases: encrypt it first (restore a backup of it into a new database with ENCRYPT)`,
      );
    }
    return { databaseId, keyId: this.options.rootKeyId, wdekVersions: [], keyChangeInProgress: false, backupKeyHash: '' };
  }

  /**
   * Db2 names its image itself (ALIAS.0.instance.DBPART000.timestamp.001) in the directory it is
   * given, so the backup goes to a fresh directory beside `path` (same file system) and is
   * hard-linked to `path` once Db2 reported success: link() never replaces a file, and a partial
   * image never carries the final name. `label` cannot be stored: the image is Db2's format.
   */
  async backup(databaseId: string, path: string, progress?: Progress, _label?: { backupId: string; night: string }): Promise<BackupImage> {
    this.check(databaseId);
    const dir = dirname(path);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    // An earlier attempt of this activity got as far as naming its image (the worker died before
    // it returned): the path is this run's own, so the complete image there is that backup.
    if (await exists(path)) return this.adopt(path, progress);
    await this.keyState(databaseId);
    // Read before Db2 starts: the version the image is taken under, not one a rotation during a
    // long backup moved to.
    const key = await this.keyOfBackup();
    await sweepSiblings(dir);
    const staging = join(dir, `.db2-backup-${process.pid}-${randomBytes(4).toString('hex')}`);
    await mkdir(staging, { mode: 0o700 });
    try {
      const { timestamp } = await this.running(progress, () => this.options.cli.backupDatabase(this.database, staging));
      const written = await readdir(staging);
      const image = new RegExp(`^[A-Za-z0-9_@#$]+\\.0\\.[A-Za-z0-9_]+\\.DBPART\\d{3}\\.${timestamp}\\.001$`);
      if (written.length !== 1 || !image.test(written[0] as string)) {
        throw new EngineError(
          'ENGINE_COMMAND_FAILED',
          `Db2 backup of ${this.database} (image ${timestamp}) left ${written.length} file(s) in ${staging} (${written.join(', ') || 'none'}); keyops expects the one file of a single-session image`,
        );
      }
      try {
        await link(join(staging, written[0] as string), path);
      } catch (err) {
        if (errnoOf(err) !== 'EEXIST') throw err;
        throw new EngineError('INVALID_CONFIGURATION', `backup target ${path} appeared while Db2 backed up ${this.database}; a backup never overwrites a file`);
      }
      const { sha256, bytes } = await hashFile(path, progress);
      return { databaseId, path, bytes, sha256, ...key, createdAt: imageTime(timestamp) };
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  /** The root-key version is read now: the earlier attempt's reading died with it. */
  private async adopt(path: string, progress?: Progress): Promise<BackupImage> {
    const header = await this.header(path);
    const { sha256, bytes } = await hashFile(path, progress);
    return { databaseId: this.databaseId, path, bytes, sha256, ...(await this.keyOfBackup()), createdAt: imageTime(header.timestamp) };
  }

  /**
   * The root key and its current version: the image itself names only Db2's master key label.
   * backupKeyHash is empty: no keyops backup key encrypted the file.
   */
  private async keyOfBackup(): Promise<{ keyId: string; keyVersion: number; backupKeyHash: string }> {
    const key = await this.options.kms.getKeyMetadata(this.options.rootKeyId);
    return { keyId: this.options.rootKeyId, keyVersion: key.currentVersion, backupKeyHash: '' };
  }

  /** The image's media header, refused when it is another database's image. */
  private async header(path: string): Promise<Db2ImageHeader> {
    const header = await this.options.cli.describeBackupImage(path);
    const ours = this.database.toUpperCase();
    if (header.database.toUpperCase() !== ours && header.alias.toUpperCase() !== ours && header.clientAlias.toUpperCase() !== ours) {
      throw new EngineError('BACKUP_INVALID', `backup ${path} is an image of Db2 database ${header.database}, not of ${this.database} (database ${this.databaseId})`);
    }
    return header;
  }

  /** What a restore from this one file needs: a whole database in one file, with its logs when it was online. */
  private restorable(path: string, header: Db2ImageHeader): void {
    const why =
      header.backupType !== 0
        ? `it is not a full database image (backup type ${header.backupType})`
        : header.sequence !== 1
          ? `it is file ${header.sequence} of a multi-file image`
          : header.online && !header.includesLogs
            ? 'it is an online image without its logs, which cannot be rolled forward from the file alone'
            : undefined;
    if (why) throw new EngineError('BACKUP_INVALID', `backup ${path} of Db2 database ${header.database} cannot be restored on its own: ${why}`);
  }

  async verifyBackup(image: BackupToRead, progress?: Progress): Promise<RestoreCheck> {
    return (await this.verifyBackupFile(image, progress)).check;
  }

  /**
   * Checksum, db2ckbkp (every page of the image), then a real RESTORE into a scratch database
   * whose ordinary tables are counted row by row, and which is dropped afterwards: the counts are
   * what a restore of this file gives, not what its header claims.
   */
  async verifyBackupFile(image: BackupToRead, progress?: Progress): Promise<VerifiedBackupFile> {
    const { header, sha256 } = await this.checkFile(image, progress);
    const check = await this.exclusiveCheck(() => this.testRestore(image.path, header, progress));
    return { check, sha256, description: this.describe(header) };
  }

  /** Checksum, header and db2ckbkp: everything short of restoring. */
  private async checkFile(image: BackupToRead, progress?: Progress): Promise<{ header: Db2ImageHeader; sha256: string }> {
    const { sha256 } = await hashFile(image.path, progress);
    if (image.sha256 !== undefined && image.sha256 !== sha256) throw new EngineError('BACKUP_INVALID', `backup ${image.path}: its SHA-256 differs from the one recorded when it was written`);
    const header = await this.header(image.path);
    this.restorable(image.path, header);
    await this.running(progress, () => this.options.cli.verifyBackupImage(image.path));
    return { header, sha256 };
  }

  private exclusiveCheck<T>(work: () => Promise<T>): Promise<T> {
    const run = this.checks.then(work, work);
    this.checks = run.catch(() => undefined);
    return run;
  }

  /**
   * RESTORE finds an image by Db2's file name in a directory, and the backup file has keyops'
   * name: a directory holding a hard link under Db2's name (beside the file, so the same file
   * system), or a symbolic link in workDir where the backup's directory takes no link (a
   * read-only mount).
   */
  private async present(path: string, header: Db2ImageHeader, kind: string): Promise<string> {
    const name = db2ImageFileName(header);
    // The file itself: link() of a symbolic link links the link, which may be relative to its own directory.
    const file = await realpath(path);
    const sibling = join(dirname(file), `.db2-${kind}-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      await mkdir(sibling, { mode: 0o700 });
      await link(file, join(sibling, name));
      return sibling;
    } catch (err) {
      await rm(sibling, { recursive: true, force: true }).catch(() => undefined);
      if (!NO_SIBLING_LINK.has(errnoOf(err) ?? '')) throw err;
    }
    const inWork = join(this.options.workDir, `image-${process.pid}-${randomBytes(4).toString('hex')}`);
    await mkdir(inWork, { recursive: true, mode: 0o700 });
    await symlink(file, join(inWork, name));
    return inWork;
  }

  /**
   * The scratch database is keyops' only when workDir holds its marker: a database of that name
   * without one is somebody else's and is never dropped. A marker whose process is gone is a
   * killed check's leftover, dropped before the next check starts.
   */
  private async clearScratch(marker: string): Promise<void> {
    const owner = await readFile(marker, 'utf8').then(
      (text) => Number(/^\d+/.exec(text)?.[0]),
      (err: unknown) => {
        if (errnoOf(err) === 'ENOENT') return undefined;
        throw err;
      },
    );
    if (owner !== undefined && owner !== process.pid && processAlive(owner)) {
      throw new EngineError('DATABASE_BUSY', `scratch database ${this.scratchDatabase} of database ${this.databaseId} is in use by the check of process ${owner}`);
    }
    const listed = (await this.options.cli.listDatabases(`check of ${this.databaseId}`)).includes(this.scratchDatabase);
    if (listed && owner === undefined) {
      throw new EngineError(
        'DATABASE_EXISTS',
        `scratch database ${this.scratchDatabase} (for test restores of database ${this.databaseId}) exists but was not created by keyops (no marker in ${this.options.workDir}); drop or rename it, keyops will not`,
      );
    }
    if (listed) await this.options.cli.dropDatabase(this.scratchDatabase);
    await rm(marker, { force: true });
  }

  private async testRestore(path: string, header: Db2ImageHeader, progress?: Progress): Promise<RestoreCheck> {
    const { cli, workDir } = this.options;
    await mkdir(workDir, { recursive: true, mode: 0o700 });
    const marker = join(workDir, `${this.scratchDatabase}.scratch`);
    await this.clearScratch(marker);
    const scratch = join(workDir, `check-${process.pid}-${randomBytes(4).toString('hex')}`);
    let presented: string | undefined;
    try {
      await mkdir(join(scratch, 'data'), { recursive: true, mode: 0o700 });
      if (header.online) await mkdir(join(scratch, 'logs'), { mode: 0o700 });
      presented = await this.present(path, header, 'check');
      const label = await this.currentLabel();
      await writeFile(marker, `${process.pid}\n`, { mode: 0o600 });
      await this.running(progress, () =>
        cli.restoreDatabase({
          source: header.clientAlias,
          directory: presented as string,
          takenAt: header.timestamp,
          into: this.scratchDatabase,
          on: join(scratch, 'data'),
          ...(header.online ? { logTarget: join(scratch, 'logs') } : {}),
          ...(label ? { masterKeyLabel: label } : {}),
        }),
      );
      return await this.running(progress, () => cli.countUserTables(this.scratchDatabase));
    } finally {
      try {
        if ((await cli.listDatabases(`check of ${this.databaseId}`)).includes(this.scratchDatabase)) await cli.dropDatabase(this.scratchDatabase);
        await rm(marker, { force: true });
      } catch {
        // A failed drop does not make a good image bad, nor replaces the check's own failure: the
        // marker stays, and the next check drops the database before it starts.
      }
      if (presented) await rm(presented, { recursive: true, force: true });
      await rm(scratch, { recursive: true, force: true });
    }
  }

  /**
   * The master key the scratch copy is encrypted with: the database's own, so checks do not add a
   * generated master key to the keystore every night (DROP DATABASE leaves keystore keys behind).
   * Db2 generates one only when the database itself is gone (a catalog rebuilt after losing it).
   */
  private async currentLabel(): Promise<string | undefined> {
    try {
      return (await this.options.cli.encryptionInfo(this.database)).masterKeyLabel ?? undefined;
    } catch (err) {
      if (err instanceof EngineError && err.code === 'DATABASE_NOT_FOUND') return undefined;
      throw err;
    }
  }

  /** A Db2 image of this database (its media header names it); anything else, or an unreadable file, is not. */
  async ownsBackupFile(path: string): Promise<boolean> {
    return this.header(path).then(
      () => true,
      () => false,
    );
  }

  async describeBackup(path: string): Promise<BackupDescription> {
    return this.describe(await this.header(path));
  }

  /**
   * keyVersion is 0, "unknown": the image names Db2's master key label, never a KMS key version,
   * so a catalog rebuilt from files cannot say which root-key version a backup was taken under.
   */
  private describe(header: Db2ImageHeader): BackupDescription {
    return {
      databaseId: this.databaseId,
      backupId: undefined,
      night: undefined,
      createdAt: imageTime(header.timestamp),
      keyId: this.options.rootKeyId,
      keyVersion: 0,
      backupKeyHash: '',
      backupKeyVersion: undefined,
      backupKeyId: undefined,
      plainBytes: undefined,
    };
  }

  /**
   * A new, encrypted Db2 database from the image. For Db2 `targetPath` is a directory: the new
   * database's storage and database path (RESTORE ... ON targetPath), and its last segment is the
   * new database's name, which must be a Db2 name (1 to 8 letters, digits, _@#$) not in use.
   */
  async restore(image: BackupToRead, targetPath: string, progress?: Progress): Promise<RestoreCheck> {
    const { cli, workDir } = this.options;
    const into = basename(targetPath).toUpperCase();
    if (!DB_NAME.test(into)) {
      throw new EngineError(
        'INVALID_CONFIGURATION',
        `restore target ${targetPath}: for Db2 the last segment of the target directory names the new database, and ${JSON.stringify(basename(targetPath))} is not a Db2 database name (1 to 8 letters, digits or _@#$, starting with a letter)`,
      );
    }
    const present = await readdir(targetPath).catch((err: unknown) => {
      if (errnoOf(err) === 'ENOENT') return undefined;
      throw err;
    });
    if (present && present.length > 0) throw new EngineError('INVALID_CONFIGURATION', `restore target ${targetPath} is not empty; a restore never writes over existing files`);
    const { header } = await this.checkFile(image, progress);
    if ((await cli.listDatabases(`restore of ${this.databaseId}`)).includes(into)) {
      throw new EngineError('DATABASE_EXISTS', `restore of ${image.path} into Db2 database ${into}: that database already exists; name a new one by the last segment of the target directory`);
    }
    const created = present === undefined;
    await mkdir(targetPath, { recursive: true, mode: 0o700 });
    await mkdir(workDir, { recursive: true, mode: 0o700 });
    const logs = join(workDir, `restore-${process.pid}-${randomBytes(4).toString('hex')}`);
    let presented: string | undefined;
    try {
      if (header.online) await mkdir(logs, { mode: 0o700 });
      presented = await this.present(image.path, header, 'check');
      const dir = presented;
      await this.running(progress, () =>
        cli.restoreDatabase({ source: header.clientAlias, directory: dir, takenAt: header.timestamp, into, on: targetPath, ...(header.online ? { logTarget: logs } : {}) }),
      );
      return await this.running(progress, () => cli.countUserTables(into));
    } catch (err) {
      // Not there before this restore (checked above): what is there now is its half-done work,
      // unless the refusal is that somebody else's database of that name appeared meanwhile.
      const theirs = err instanceof EngineError && err.code === 'DATABASE_EXISTS';
      if (!theirs && (await cli.listDatabases(`restore of ${this.databaseId}`).catch(() => [] as string[])).includes(into)) await cli.dropDatabase(into).catch(() => undefined);
      if (created) await rmdir(targetPath).catch(() => undefined);
      throw err;
    } finally {
      if (presented) await rm(presented, { recursive: true, force: true });
      await rm(logs, { recursive: true, force: true });
    }
  }

  /** ADMIN_ROTATE_MASTER_KEY: Db2 generates a new master key and rewraps its DEK under it; no page changes. */
  async reprotect(databaseId: string): Promise<DatabaseKeyState> {
    await this.keyState(databaseId);
    await this.options.cli.rotateMasterKey(this.database);
    return this.keyState(databaseId);
  }

  /** No WDEK of this database is in keyops' registry: nothing follows a rewrap. */
  followRewrap(): Promise<void> {
    return Promise.resolve();
  }

  createPendingBackupKey(): Promise<string> {
    return this.unsupported('a staged backup key', 'Db2 encrypts each backup image under its own master key; rotate that with reprotect');
  }

  backupKeyMaterial(): Promise<Buffer> {
    return this.unsupported('exporting a backup key', "the images are encrypted under Db2's master key: back up the Db2 keystore instead");
  }

  activateBackupKey(): Promise<void> {
    return this.unsupported('a staged backup key', 'Db2 encrypts each backup image under its own master key; rotate that with reprotect');
  }

  regenerate(): Promise<DatabaseKeyState> {
    return this.unsupported('DEK regeneration', 'Db2 cannot re-encrypt a database under a new DEK in place: restore a backup into a new database with ENCRYPT, or rotate the master key with reprotect');
  }

  /** No keyops backup key encrypts a Db2 image: there is none to look up. */
  hasBackupKey(): boolean {
    return false;
  }

  importBackupKey(): Promise<{ hash: string; keyId: string; keyVersion: number; alreadyRegistered: boolean }> {
    return this.unsupported('importing a backup key', "the images are encrypted under Db2's master key: restore the Db2 keystore (or its backup) that holds its label instead");
  }
}

/** SHA-256 and length of the file as read, in one streamed pass. */
async function hashFile(path: string, progress?: Progress): Promise<{ sha256: string; bytes: number }> {
  try {
    const { size } = await stat(path);
    const hash = createHash('sha256');
    let bytes = 0;
    for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
      hash.update(chunk as Buffer);
      bytes += (chunk as Buffer).length;
      progress?.(bytes, Math.max(size, bytes));
    }
    return { sha256: hash.digest('hex'), bytes };
  } catch (err) {
    const code = errnoOf(err);
    if (code === 'ENOENT' || code === 'EISDIR') throw new EngineError('BACKUP_INVALID', `backup ${path} cannot be read: ${code}`);
    throw err;
  }
}
