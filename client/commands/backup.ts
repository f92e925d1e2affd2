import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import type { ApplicationFailure } from '@temporalio/common';
import type { Command } from 'commander';
import { importBackupKey, importBackups, nightlyBackup, restoreBackup, restoreDrill, verifyBackup } from '../../workflows';
import { drillProgressQuery, drillWorkflowId } from '../../workflows/drill-messages';
import type { CatalogEntry } from '../../activities/catalog/backup-catalog';
import { drillDetails } from '../schedules/restore-drill-schedule';
import { type BackupPhase, backupProgressQuery, backupWorkflowId } from '../../workflows/backup-messages';
import { followRun } from '../follow-run';
import { TASK_QUEUE } from '../../workflows/task-queue';
import { CliError, ExitCode } from '../cli-error';
import type { GlobalOptions } from '../global-options';
import { emit } from '../output';
import { lookUpOnWorker, rootApplicationFailure, withClient } from '../run-on-worker';
import { listBackupsUpdate } from '../../workflows/lookup-messages';
import { applyBackupSchedule, backupDetails, backupScheduleId } from '../schedules/nightly-backup-schedule';
import { examples } from '../help-examples';
import { showTime } from '../operator-time';

interface BackupOptions {
  taskQueue: string;
}

const DATABASE_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/;

function parseDatabaseId(raw: string): string {
  if (!DATABASE_ID.test(raw)) throw new CliError(`database id "${raw}" is malformed: 1 to 63 characters a-z, 0-9, "_" or "-"`, ExitCode.usage);
  return raw;
}

function parseNight(raw: string): string {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(raw) || Number.isNaN(Date.parse(`${raw}T00:00:00Z`))) {
    throw new CliError(`--night "${raw}" is not a date such as 2026-12-01`, ExitCode.usage);
  }
  return raw;
}

function parseAt(raw: string): { hour: number; minute: number } {
  const m = /^([01]?\d|2[0-3]):([0-5]\d)$/.exec(raw);
  if (!m) throw new CliError(`--at "${raw}" is not a time of day such as 02:00`, ExitCode.usage);
  return { hour: Number(m[1]), minute: Number(m[2]) };
}

function parseTimeZone(raw: string): string {
  try {
    return new Intl.DateTimeFormat('en', { timeZone: raw }).resolvedOptions().timeZone;
  } catch {
    throw new CliError(`--time-zone "${raw}" is not an IANA time zone such as Europe/Berlin or UTC`, ExitCode.usage);
  }
}

/** Turns a backup or restore failure that travelled through a workflow into an operator-facing error. */
function explainBackupFailure(failure: ApplicationFailure | undefined, fallback: unknown): never {
  const message = failure?.message ?? (fallback instanceof Error ? fallback.message : String(fallback));
  switch (failure?.type) {
    case 'DATABASE_NOT_FOUND':
    case 'BACKUP_NOT_FOUND':
    case 'INVALID_INPUT':
      throw new CliError(message, ExitCode.usage);
    case 'PERMISSION_DENIED':
      throw new CliError(message, ExitCode.failed, 'the workers open key exports with KEYOPS_BACKUP_KEY_PASSPHRASE (or _FILE): set the passphrase the export was written with');
    case 'BACKUP_KEY_MISSING':
    case 'KEY_VERSION_MISSING':
      throw new CliError(message, ExitCode.failed, 'keys that a retained backup needs must outlive it; restore the key backup, then retry');
    default:
      throw new CliError(message, ExitCode.failed);
  }
}

// Stages a backup has behind it, for the --wait bar: the waits count as the first stage.
const BACKUP_STAGES_DONE: Record<BackupPhase, number> = {
  'checking-keys': 0,
  'awaiting-key-change': 0,
  'awaiting-master-key': 0,
  'awaiting-rewrap': 0,
  'backing-up': 1,
  verifying: 2,
  recording: 3,
  retention: 3,
  done: 4,
  failed: 0,
};

/** The `backup list` column of a backup's last restore drill. */
function drillColumn(e: CatalogEntry): string {
  if (!e.lastDrill) return 'never drilled';
  return `drilled ${showTime(e.lastDrill.drilledAt)} ${e.lastDrill.result === 'passed' ? 'passed' : `FAILED (${e.lastDrill.error ?? 'no reason recorded'})`}`;
}

export function registerBackupCommands(program: Command): void {
  const backup = program.command('backup').description('take, list, restore and schedule encrypted database backups');

  backup
    .command('run <databaseId>')
    .description('take the night\'s backup now (workflow backup/<databaseId>/<night>); waits out a key rotation in progress')
    .option('-q, --task-queue <name>', 'task queue of the keyops workers', TASK_QUEUE)
    .option('--night <date>', 'the night it counts for (YYYY-MM-DD); default today (UTC)')
    .option('--wait', 'wait for the backup to be verified and catalogued; the exit code reflects the outcome')
    .addHelpText('after', examples('keyops backup run demo', 'keyops backup run demo --wait'))
    .action(async (raw: string, _opts: BackupOptions, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & BackupOptions & { night?: string; wait?: boolean }>();
      const databaseId = parseDatabaseId(raw);
      const night = options.night === undefined ? new Date().toISOString().slice(0, 10) : parseNight(options.night);
      const workflowId = backupWorkflowId(databaseId, night);
      await withClient(options, async (client) => {
        let handle;
        try {
          handle = await client.workflow.start(nightlyBackup, {
            taskQueue: options.taskQueue,
            workflowId,
            args: [{ databaseId, night }],
            staticSummary: `Backup of database ${databaseId} for ${night}`,
            staticDetails: backupDetails(databaseId, '`keyops backup run`'),
          });
        } catch (err) {
          if (err instanceof WorkflowExecutionAlreadyStartedError) throw new CliError(`the backup of ${databaseId} for ${night} is already running: ${workflowId}`, ExitCode.failed);
          throw err;
        }
        if (!options.wait) {
          emit(options, { workflowId, databaseId, night }, () => [`started ${workflowId}`]);
          return;
        }
        const result = await followRun(options, handle, backupProgressQuery, (p) => ({ phase: p.phase, done: BACKUP_STAGES_DONE[p.phase], total: 4 }), () => handle.result()).catch((err: unknown) =>
          explainBackupFailure(rootApplicationFailure(err), err),
        );
        emit(options, { workflowId, ...result }, () => [
          `${workflowId}: ${result.bytes ?? 0} bytes at ${result.path ?? '?'}, root key ${result.keyId ?? '?'} version ${result.keyVersion ?? '?'}${result.awaitedVersion ? ` (waited for the rewrap to version ${result.awaitedVersion})` : ''}`,
        ]);
      });
    });

  backup
    .command('list')
    .description('list catalogued backups, newest first')
    .option('-q, --task-queue <name>', 'task queue of the keyops workers (they hold the catalog)', TASK_QUEUE)
    .option('--database <id>', 'only this database')
    .option('--limit <n>', 'at most this many', (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n <= 0) throw new CliError(`--limit "${v}" is not a positive whole number`, ExitCode.usage);
      return n;
    })
    .addHelpText('after', examples('keyops backup list', 'keyops backup list --database demo --limit 10 --json'))
    .action(async (_opts: BackupOptions, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & BackupOptions & { database?: string; limit?: number }>();
      const filter = { ...(options.database ? { databaseId: parseDatabaseId(options.database) } : {}), ...(options.limit ? { limit: options.limit } : {}) };
      const entries = await withClient(options, (client) =>
        lookUpOnWorker(
          client,
          listBackupsUpdate,
          { taskQueue: options.taskQueue, args: [filter], summary: 'keyops: read the backup catalog' },
          (failure) => explainBackupFailure(failure, failure),
        ),
      );
      emit(options, entries, () =>
        entries.length === 0
          ? ['no backups catalogued']
          : entries.map(
              (e) =>
                `${e.backupId}  ${e.status}  ${showTime(e.createdAt)}  ${e.bytes} B  key ${e.keyId} v${e.keyVersion}  backup key ${e.backupKeyHash.slice(0, 12)}  ${e.verification ? `verified ${e.verification.rows} rows` : 'unverified'}  ${drillColumn(e)}`,
            ),
      );
    });

  backup
    .command('restore <backup>')
    .description('restore a backup to a new file, after checking that its keys still exist: a catalogued backup by id, or any backup file by its path')
    .requiredOption('--to <path>', 'the restored database file, an absolute path on the worker (must not exist)')
    .option('-q, --task-queue <name>', 'task queue of the keyops workers', TASK_QUEUE)
    .addHelpText(
      'after',
      `
A backup file carries the wrapped keys it needs: it restores with the KMS alone, on workers
that lost their registry and catalog, or on a fresh data directory (the local KMS needs its
master secret). Paths are on the worker's machine.

Examples:
  keyops backup list --database payroll
  keyops backup restore backup/payroll/2026-12-01 --to /srv/restore/payroll.db
  keyops backup restore /srv/keyops/backups/payroll/payroll-2026-12-01-0a1b2c3d4e5f.kob --to /srv/restore/payroll.db`,
    )
    .action(async (backup: string, _opts: BackupOptions, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & BackupOptions & { to: string }>();
      if (!options.to.startsWith('/')) throw new CliError(`--to "${options.to}" must be an absolute path (the worker resolves it, not this shell)`, ExitCode.usage);
      const byFile = backup.startsWith('/');
      if (!byFile && !backup.startsWith('backup/')) {
        throw new CliError(`"${backup}" is neither a backup id (backup/DATABASE/NIGHT, see keyops backup list) nor the absolute path of a backup file`, ExitCode.usage);
      }
      const workflowId = byFile ? `restore/file/${backup.split('/').pop() ?? 'backup'}/${Date.now()}` : `restore/${backup}/${Date.now()}`;
      const result = await withClient(options, (client) =>
        client.workflow
          .execute(restoreBackup, {
            taskQueue: options.taskQueue,
            workflowId,
            args: [{ ...(byFile ? { path: backup } : { backupId: backup }), targetPath: options.to }],
            staticSummary: `Restore ${backup} to ${options.to}`,
            staticDetails: [
              `Started by \`keyops backup restore\`. Checks that the root key and the backup key ${backup} needs still exist, then decrypts, checks every chunk${byFile ? '' : ' and the SHA-256'}, and publishes ${options.to} only when complete.`,
              'It never overwrites an existing file.',
            ].join('\n\n'),
          })
          .catch((err: unknown) => explainBackupFailure(rootApplicationFailure(err), err)),
      );
      emit(options, { workflowId, ...result }, () => [
        `restored ${result.backupId} to ${result.targetPath}: ${result.rows} rows in ${result.tables} table(s) (root key ${result.keyId} version ${result.keyVersion})`,
      ]);
    });

  backup
    .command('import <dir>')
    .description('catalogue the backup files under a directory (a lost catalog is rebuilt from the files): each is test-restored first')
    .option('-q, --task-queue <name>', 'task queue of the keyops workers', TASK_QUEUE)
    .addHelpText(
      'after',
      `
Every backup file's header names its database, backup id, night and keys. Files already in
the catalog are left alone; files that do not restore are listed with the reason and exit 1.

Example:
  keyops backup import /srv/keyops/backups`,
    )
    .action(async (dir: string, _opts: BackupOptions, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & BackupOptions>();
      if (!dir.startsWith('/')) throw new CliError(`"${dir}" must be an absolute path (the worker reads it, not this shell)`, ExitCode.usage);
      const workflowId = `import-backups/${Date.now()}`;
      const result = await withClient(options, (client) =>
        client.workflow
          .execute(importBackups, {
            taskQueue: options.taskQueue,
            workflowId,
            args: [{ dir }],
            staticSummary: `Catalogue the backup files under ${dir}`,
            staticDetails: `Started by \`keyops backup import\`. Reads every backup file's header, test-restores it, and catalogues it; files already catalogued are left alone.`,
          })
          .catch((err: unknown) => explainBackupFailure(rootApplicationFailure(err), err)),
      );
      emit(options, { workflowId, ...result }, () => [
        ...result.imported.map((b) => `imported ${b.backupId}: ${b.rows} rows, root key ${b.keyId} version ${b.keyVersion} (${b.path})`),
        ...result.duplicates.map((d) => `duplicate ${d.path}: ${d.backupId} is catalogued as ${d.catalogued}`),
        ...result.refused.map((r) => `refused ${r.path}: ${r.reason}`),
        `${result.imported.length} imported, ${result.known.length} already catalogued, ${result.duplicates.length} duplicate(s) left uncatalogued, ${result.refused.length} refused`,
      ]);
      if (result.refused.length > 0) process.exitCode = ExitCode.failed;
    });

  const key = backup.command('key').description('backup keys: import an exported backup key');
  key
    .command('import <file>')
    .description('register a backup key again from its export file (written by a backup-key rotation), so that the backups it encrypted restore')
    .option('--key <keyId>', 'root key to wrap it under, when the workers do not hold its database')
    .option('-q, --task-queue <name>', 'task queue of the keyops workers', TASK_QUEUE)
    .addHelpText(
      'after',
      `
The workers open the file with their KEYOPS_BACKUP_KEY_PASSPHRASE: the passphrase never travels
through Temporal. Backups written since keyops carries the backup key in each file do not
need this; older ones do, once the workers' registry is lost.

Example:
  keyops backup key import /srv/keyops/key-backups/payroll/9f86d081884c7d65-….json`,
    )
    .action(async (file: string, _opts: BackupOptions, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & BackupOptions & { key?: string }>();
      if (!file.startsWith('/')) throw new CliError(`"${file}" must be an absolute path (the worker reads it, not this shell)`, ExitCode.usage);
      const workflowId = `import-backup-key/${Date.now()}`;
      const result = await withClient(options, (client) =>
        client.workflow
          .execute(importBackupKey, {
            taskQueue: options.taskQueue,
            workflowId,
            args: [{ path: file, ...(options.key !== undefined ? { keyId: options.key } : {}) }],
            staticSummary: `Import the backup key in ${file}`,
            staticDetails: 'Started by `keyops backup key import`. Opens the export with the workers\' passphrase and registers the backup key under the root key.',
          })
          .catch((err: unknown) => explainBackupFailure(rootApplicationFailure(err), err)),
      );
      emit(options, { workflowId, ...result }, () => [
        `${result.alreadyRegistered ? 'already registered' : 'imported'}: backup key ${result.hash.slice(0, 12)}… of database ${result.databaseId}, wrapped under root key ${result.keyId} version ${result.keyVersion}`,
      ]);
    });

  backup
    .command('verify <backupId>')
    .description('prove a catalogued backup still restores: its keys exist, its checksum matches, a test restore opens')
    .option('-q, --task-queue <name>', 'task queue of the keyops workers', TASK_QUEUE)
    .addHelpText('after', examples('keyops backup verify backup/demo/2026-11-20'))
    .action(async (backupId: string, _opts: BackupOptions, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & BackupOptions>();
      const workflowId = `verify/${backupId}/${Date.now()}`;
      const result = await withClient(options, (client) =>
        client.workflow
          .execute(verifyBackup, {
            taskQueue: options.taskQueue,
            workflowId,
            args: [{ backupId }],
            staticSummary: `Verify ${backupId}`,
            staticDetails: `Started by \`keyops backup verify\`. Checks that the keys ${backupId} needs still exist and its checksum matches, then restores it to a scratch file and opens it.`,
          })
          .catch((err: unknown) => explainBackupFailure(rootApplicationFailure(err), err)),
      );
      emit(options, { workflowId, ...result }, () => [
        `${backupId} restores: ${result.rows} rows in ${result.tables} table(s), root key ${result.keyId} version ${result.keyVersion}, file ${result.path}`,
      ]);
    });

  backup
    .command('drill')
    .description('restore drill: restore a sample of the catalogued backups to scratch files and check each (the oldest of each database, one per retired key version, the newest); a failure raises the backup alert')
    .option('-q, --task-queue <name>', 'task queue of the keyops workers', TASK_QUEUE)
    .option('--database <id>', 'only this database\'s backups')
    .option('--wait', 'wait for every sampled backup to be restored; the exit code reflects the outcome')
    .addHelpText(
      'after',
      `
Each result is recorded in the catalog: keyops backup list shows when each backup was last
drilled and how it went. The schedule file's \`drills: every: 7d\` runs it on a schedule.
${examples('keyops backup drill --wait', 'keyops backup drill --database payroll --wait --json')}`,
    )
    .action(async (_opts: BackupOptions, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & BackupOptions & { database?: string; wait?: boolean }>();
      const databaseId = options.database === undefined ? undefined : parseDatabaseId(options.database);
      const workflowId = drillWorkflowId(databaseId, new Date().toISOString());
      await withClient(options, async (client) => {
        const handle = await client.workflow.start(restoreDrill, {
          taskQueue: options.taskQueue,
          workflowId,
          args: [databaseId ? { databaseId } : {}],
          staticSummary: `Restore drill of ${databaseId ? `database ${databaseId}` : 'every database'}`,
          staticDetails: drillDetails('`keyops backup drill`', databaseId),
        });
        if (!options.wait) {
          emit(options, { workflowId, ...(databaseId ? { databaseId } : {}) }, () => [`started ${workflowId}`]);
          return;
        }
        const result = await followRun(
          options,
          handle,
          drillProgressQuery,
          (p) => ({ phase: p.phase, done: p.backups.filter((b) => b.result !== 'pending').length, total: Math.max(1, p.backups.length) }),
          () => handle.result(),
        ).catch((err: unknown) => {
          const failure = rootApplicationFailure(err);
          if (failure?.type === 'DRILL_FAILED') throw new CliError(failure.message, ExitCode.failed, 'keyops backup list shows each backup\'s last drill; keyops backup verify BACKUP_ID retries one');
          return explainBackupFailure(failure, err);
        });
        emit(options, { workflowId, ...result }, () => [
          ...result.backups.map((b) => `${b.backupId}  ${b.result}  key ${b.keyId} v${b.keyVersion}  (${b.reasons.join(', ')})${b.rows !== undefined ? `  ${b.rows} rows` : ''}`),
          result.backups.length === 0 ? 'no retained backups to drill' : `${result.passed} of ${result.backups.length} backup(s) restored`,
        ]);
      });
    });

  backup
    .command('schedule <databaseId>')
    .description('create or update the nightly backup schedule of a database')
    .option('-q, --task-queue <name>', 'task queue of the keyops workers', TASK_QUEUE)
    .option('--at <HH:MM>', 'time of day', '02:00')
    .option('--time-zone <tz>', 'IANA time zone of --at (default: KEYOPS_TIME_ZONE, else this machine\'s)')
    .addHelpText('after', examples('keyops backup schedule demo --at 02:30', 'keyops backup schedule demo --at 01:00 --time-zone Europe/Berlin'))
    .action(async (raw: string, _opts: BackupOptions, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & BackupOptions & { at: string; timeZone?: string }>();
      const databaseId = parseDatabaseId(raw);
      const at = parseAt(options.at);
      const timeZone = parseTimeZone(options.timeZone ?? process.env.KEYOPS_TIME_ZONE ?? Intl.DateTimeFormat().resolvedOptions().timeZone);
      const change = await withClient(options, (client) => applyBackupSchedule(client, { databaseId, ...at, timeZone, taskQueue: options.taskQueue }));
      const scheduleId = backupScheduleId(databaseId);
      emit(options, { scheduleId, databaseId, at: options.at, timeZone, change }, () => [
        `schedule ${scheduleId} ${change}: nightlyBackup of ${databaseId} at ${options.at} ${timeZone}`,
      ]);
    });
}
