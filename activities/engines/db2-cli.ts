import { z } from 'zod';
import type { CommandResult, CommandRunner } from './command-runner';
import { classifyDb2Output } from './db2-messages';
import { EngineError } from './engine-error';

const DB_NAME = /^[A-Za-z][A-Za-z0-9_@#$]{0,7}$/;
const SAFE_PATH = /^\/[A-Za-z0-9_./-]*$/;
/** The full yyyymmddhhmmss of one image: a shorter prefix could match several. */
const IMAGE_TIMESTAMP = /^\d{14}$/;
/**
 * Labels as Db2 generates them (DB2_SYSGEN_db2inst1_BLUDB_2018-01-18-18.06.37_99807F2D) or an
 * operator names them. No quote or blank: a label can neither close the SQL string nor add a
 * clause to a command.
 */
const MASTER_KEY_LABEL = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,254}$/;

function checkDatabase(name: string, what = 'Db2 database name'): void {
  if (!DB_NAME.test(name)) throw new EngineError('INVALID_CONFIGURATION', `${what} ${JSON.stringify(name)} must be 1 to 8 letters, digits or _@#$, starting with a letter`);
}

function checkPath(path: string, what: string): void {
  if (!SAFE_PATH.test(path) || path.split('/').includes('..')) {
    throw new EngineError('INVALID_CONFIGURATION', `${what} ${JSON.stringify(path)} must be an absolute path of letters, digits and _./-, without .. segments`);
  }
}

function checkLabel(label: string): void {
  if (!MASTER_KEY_LABEL.test(label)) throw new EngineError('INVALID_CONFIGURATION', `master key label ${JSON.stringify(label)} must be 1 to 255 letters, digits or _.:-, starting with a letter or digit`);
}

/**
 * The CLP keeps one back-end process (db2bp) per parent process, and with it one connection:
 * every `db2` this worker starts shares it, and BACKUP replaces an existing connection with its
 * own. So CLP commands of this process run one at a time, whichever Db2Cli starts them.
 */
let clpQueue: Promise<unknown> = Promise.resolve();
function serialized<T>(work: () => Promise<T>): Promise<T> {
  const run = clpQueue.then(work, work);
  clpQueue = run.catch(() => undefined);
  return run;
}

/** SYSPROC.ADMIN_GET_ENCRYPTION_INFO columns keyops reads (Db2 10.5 FP5 and later). */
const ENCRYPTION_COLUMNS = [
  'OBJECT_NAME',
  'OBJECT_TYPE',
  'ALGORITHM',
  'ALGORITHM_MODE',
  'KEY_LENGTH',
  'MASTER_KEY_LABEL',
  'KEYSTORE_NAME',
  'KEYSTORE_TYPE',
  'KEYSTORE_HOST',
  'KEYSTORE_IP',
  'KEYSTORE_IP_TYPE',
  'PREVIOUS_MASTER_KEY_LABEL',
  'ROTATION_TIME',
] as const;

/**
 * One line per row, each column as `x` + HEX(value), or `-` for NULL, separated by blanks. Why
 * not the CLP's table: its columns are padded to the declared widths (255 for a label), headings
 * and widths change with the version, and a label or keystore path may contain blanks or any
 * delimiter. Hex has none of these problems, keeps NULL apart from '', and survives any code page.
 */
const ENCRYPTION_INFO_QUERY = `SELECT ${ENCRYPTION_COLUMNS.map((c) => {
  const text = c === 'KEY_LENGTH' ? 'RTRIM(CHAR(KEY_LENGTH))' : c === 'ROTATION_TIME' ? 'CHAR(ROTATION_TIME)' : c;
  return `COALESCE('x' || HEX(${text}), '-')`;
}).join(" || ' ' || ")} FROM TABLE(SYSPROC.ADMIN_GET_ENCRYPTION_INFO()) AS T`;

const encryptionRowSchema = z.object({
  objectName: z.string().min(1),
  objectType: z.string().min(1),
  algorithm: z.string().nullable(),
  algorithmMode: z.string().nullable(),
  keyLength: z.number().int().positive().nullable(),
  masterKeyLabel: z.string().nullable(),
  keystoreName: z.string().nullable(),
  keystoreType: z.string().nullable(),
  keystoreHost: z.string().nullable(),
  keystoreIp: z.string().nullable(),
  keystoreIpType: z.string().nullable(),
  previousMasterKeyLabel: z.string().nullable(),
  /** Db2's CHAR(timestamp): yyyy-mm-dd-hh.mm.ss.ffffff */
  rotationTime: z
    .string()
    .regex(/^\d{4}-\d{2}-\d{2}-\d{2}\.\d{2}\.\d{2}(\.\d{1,12})?$/)
    .nullable(),
});

export type Db2EncryptionInfo = z.infer<typeof encryptionRowSchema>;

/** Decodes the lines of ENCRYPTION_INFO_QUERY; anything else is refused, never guessed at. */
export function parseEncryptionInfo(stdout: string): Db2EncryptionInfo[] {
  return stdout
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean)
    .map((line) => {
      const fields = line.split(/\s+/);
      if (fields.length !== ENCRYPTION_COLUMNS.length || !fields.every((f) => f === '-' || /^x(?:[0-9A-Fa-f]{2})*$/.test(f))) {
        throw new EngineError('ENGINE_COMMAND_FAILED', `Db2 ADMIN_GET_ENCRYPTION_INFO returned a line keyops cannot read (${fields.length} fields, expected ${ENCRYPTION_COLUMNS.length} hex fields): ${line.slice(0, 200)}`);
      }
      const text = fields.map((f) => (f === '-' ? null : Buffer.from(f.slice(1), 'hex').toString('utf8')));
      const keyLength = text[4] ?? null;
      const row = encryptionRowSchema.safeParse({
        objectName: text[0],
        objectType: text[1],
        algorithm: text[2],
        algorithmMode: text[3],
        keyLength: keyLength === null ? null : /^\d+$/.test(keyLength) ? Number(keyLength) : keyLength,
        masterKeyLabel: text[5],
        keystoreName: text[6],
        keystoreType: text[7],
        keystoreHost: text[8],
        keystoreIp: text[9],
        keystoreIpType: text[10],
        previousMasterKeyLabel: text[11],
        rotationTime: text[12],
      });
      if (!row.success) throw new EngineError('ENGINE_COMMAND_FAILED', `Db2 ADMIN_GET_ENCRYPTION_INFO returned a row keyops cannot read: ${z.prettifyError(row.error)}`);
      return row.data;
    });
}

/**
 * Schema and name of each table as `x` + HEX, for the reasons of ENCRYPTION_INFO_QUERY. The SYS
 * prefix is reserved by Db2 for its own schemas (SQL0553N), so no application table is left out.
 */
const USER_TABLES_QUERY = "SELECT 'x' || HEX(TABSCHEMA) || ' x' || HEX(TABNAME) FROM SYSCAT.TABLES WHERE TYPE = 'T' AND TABSCHEMA NOT LIKE 'SYS%' ORDER BY TABSCHEMA, TABNAME";

/** Tables counted per statement: keeps one CLP argument far below Linux's 128 KiB limit. */
const COUNT_BATCH = 100;

function parseTableList(stdout: string): { schema: string; name: string }[] {
  return stdout
    .split('\n')
    .map((line) => line.trim())
    // -x still prints SQL0100W (no rows) for an empty result.
    .filter((line) => line && !line.startsWith('SQL0100W'))
    .map((line) => {
      const m = /^x((?:[0-9A-F]{2})+) x((?:[0-9A-F]{2})+)$/.exec(line);
      if (!m) throw new EngineError('ENGINE_COMMAND_FAILED', `Db2 SYSCAT.TABLES returned a line keyops cannot read: ${line.slice(0, 200)}`);
      return { schema: Buffer.from(m[1] as string, 'hex').toString('utf8'), name: Buffer.from(m[2] as string, 'hex').toString('utf8') };
    });
}

/** A delimited identifier; a control character could end the CLP's command, so it is refused. */
function quoteIdentifier(name: string): string {
  // eslint-disable-next-line no-control-regex
  if (!name || /[\u0000-\u001f]/.test(name)) throw new EngineError('ENGINE_COMMAND_FAILED', `Db2 table name ${JSON.stringify(name)} has a control character keyops will not put into a statement`);
  return `"${name.replace(/"/g, '""')}"`;
}

export interface Db2RestoreRequest {
  /** The alias of the database the image was taken from. */
  source: string;
  /** The directory holding the image. */
  directory: string;
  takenAt: string;
  /** The database to create; an existing one is refused unless replaceExisting. */
  into: string;
  /**
   * `ON <dir>`: the new database's storage paths and database path. Not `TO`: for an
   * automatic-storage database TO moves only the database directory, while the table spaces'
   * containers would go to the storage paths recorded in the image (the source's).
   */
  on?: string;
  /**
   * For an online image: its logs are extracted here and the new database is rolled forward to
   * the end of the backup. Without it the image must be offline (WITHOUT ROLLING FORWARD).
   */
  logTarget?: string;
  /** Only an operator's explicit choice: replaces the database `into` names. */
  replaceExisting?: boolean;
  /** The master key that encrypts the new database; Db2 generates one when omitted. */
  masterKeyLabel?: string;
}

export interface Db2CliOptions {
  /** The check-backup tool, a program of its own (no CLP back-end). */
  db2ckbkp?: string;
  /** For backups and restores longer than the runner's default limit. */
  timeoutMs?: number;
}

/**
 * The Db2 command line processor as keyops drives it: builds the commands (names and paths are
 * checked, never quoted into SQL blindly) and turns their output into results or typed errors.
 * Commands run through the CommandRunner with one argument each, never through a shell.
 */
export class Db2Cli {
  constructor(
    private readonly runner: CommandRunner,
    private readonly db2 = 'db2',
    private readonly options: Db2CliOptions = {},
  ) {}

  private async run(operation: string, args: string[], tool = this.db2): Promise<CommandResult> {
    const result = this.options.timeoutMs === undefined ? await this.runner.run(tool, args) : await this.runner.run(tool, args, { timeoutMs: this.options.timeoutMs });
    const failure = classifyDb2Output(operation, result);
    if (failure) throw failure;
    return result;
  }

  /** Connects, runs `work`, and always resets the connection, all as one turn of the CLP. */
  private connected<T>(database: string, operation: string, work: () => Promise<T>): Promise<T> {
    return serialized(async () => {
      await this.run(operation, [`CONNECT TO ${database}`]);
      try {
        return await work();
      } finally {
        // A failed reset is harmless: the next CONNECT TO replaces the connection anyway.
        await this.runner.run(this.db2, ['CONNECT RESET']).catch(() => undefined);
      }
    });
  }

  /** `BACKUP DATABASE <db> ONLINE TO <dir> ENCRYPT`: returns the image timestamp Db2 printed. */
  async backupDatabase(database: string, directory: string): Promise<{ timestamp: string; command: string }> {
    checkDatabase(database);
    checkPath(directory, 'backup directory');
    const command = `BACKUP DATABASE ${database} ONLINE TO ${directory} ENCRYPT`;
    const result = await serialized(() => this.run(`backup of ${database}`, [command]));
    const timestamp = /timestamp for this backup image is\s*:\s*(\d{14})/i.exec(result.stdout)?.[1];
    if (!timestamp) throw new EngineError('ENGINE_COMMAND_FAILED', `Db2 backup of ${database} reported success without an image timestamp: ${result.stdout.trim()}`);
    return { timestamp, command };
  }

  /** The database's row of SYSPROC.ADMIN_GET_ENCRYPTION_INFO: its algorithm and master key label. */
  async encryptionInfo(database: string): Promise<Db2EncryptionInfo> {
    checkDatabase(database);
    const operation = `key state of ${database}`;
    const result = await this.connected(database, operation, () => this.run(operation, ['-x', ENCRYPTION_INFO_QUERY]));
    const rows = parseEncryptionInfo(result.stdout);
    const row = rows.find((r) => r.objectType.trim().toUpperCase() === 'DATABASE');
    if (!row) throw new EngineError('ENGINE_COMMAND_FAILED', `Db2 key state of ${database}: ADMIN_GET_ENCRYPTION_INFO returned no DATABASE row (${rows.length} rows)`);
    return row;
  }

  /**
   * `CALL SYSPROC.ADMIN_ROTATE_MASTER_KEY(NULL | 'label')`: re-encrypts the database's DEK under a
   * new master key (Db2 generates one for NULL) and returns the label from the output parameter.
   */
  async rotateMasterKey(database: string, label?: string): Promise<{ label: string; command: string }> {
    checkDatabase(database);
    if (label !== undefined) checkLabel(label);
    const command = `CALL SYSPROC.ADMIN_ROTATE_MASTER_KEY(${label === undefined ? 'NULL' : `'${label}'`})`;
    const operation = `master key rotation of ${database}`;
    const result = await this.connected(database, operation, () => this.run(operation, [command]));
    const out = result.stdout;
    const newLabel = /Parameter Name\s*:\s*LABEL\s*\r?\n\s*Parameter Value\s*:\s*(\S+)/.exec(out)?.[1];
    const status = /Return Status\s*=\s*(-?\d+)/.exec(out)?.[1];
    if (!newLabel || status !== '0') throw new EngineError('ENGINE_COMMAND_FAILED', `Db2 master key rotation of ${database} did not report a new label with return status 0: ${out.trim()}`);
    if (label !== undefined && newLabel !== label) throw new EngineError('ENGINE_COMMAND_FAILED', `Db2 master key rotation of ${database} asked for label ${label} but reported ${newLabel}`);
    return { label: newLabel, command };
  }

  /** The aliases of the instance's system database directory. */
  async listDatabases(operation = 'listing of the database directory'): Promise<string[]> {
    const result = await serialized(() => this.run(operation, ['LIST DATABASE DIRECTORY']));
    // SQL1057W (the directory is empty) exits 2 and lists nothing.
    return [...result.stdout.matchAll(/Database alias\s*=\s*(\S+)/g)].map((m) => (m[1] as string).toUpperCase());
  }

  /**
   * `RESTORE DATABASE <source> FROM <dir> TAKEN AT <ts> INTO <new>`, then the roll-forward an
   * online image needs. Never over an existing database unless replaceExisting says so: the
   * directory is checked first, and without REPLACE EXISTING / WITHOUT PROMPTING Db2 asks before
   * overwriting (SQL2539W, SQL2529W). Nobody answers that question: the run fails or times out,
   * which is what an unexpected overwrite must do.
   */
  async restoreDatabase(request: Db2RestoreRequest): Promise<{ database: string; commands: string[] }> {
    const { source, directory, takenAt, into, on, logTarget, replaceExisting = false, masterKeyLabel } = request;
    checkDatabase(source, 'Db2 source database name');
    checkDatabase(into, 'Db2 target database name');
    checkPath(directory, 'backup directory');
    if (logTarget !== undefined) checkPath(logTarget, 'log target directory');
    if (on !== undefined) checkPath(on, 'restore target directory');
    if (!IMAGE_TIMESTAMP.test(takenAt)) throw new EngineError('INVALID_CONFIGURATION', `image timestamp ${JSON.stringify(takenAt)} must be the 14 digits yyyymmddhhmmss Db2 printed for the backup`);
    if (masterKeyLabel !== undefined) checkLabel(masterKeyLabel);
    if (replaceExisting && masterKeyLabel !== undefined) {
      throw new EngineError('INVALID_CONFIGURATION', `Db2 restore over ${into} keeps that database's own encryption settings: a master key label applies only to a new database`);
    }
    if (!replaceExisting && into.toUpperCase() === source.toUpperCase()) {
      throw new EngineError('DATABASE_EXISTS', `Db2 restore of ${source} into ${into} would replace the database the image was taken from; restore into a new database name, or ask explicitly to replace it`);
    }
    const operation = `restore of ${source} into ${into}`;
    if (!replaceExisting && (await this.listDatabases(operation)).includes(into.toUpperCase())) {
      throw new EngineError('DATABASE_EXISTS', `Db2 restore of ${source} into ${into}: database ${into} already exists; keyops restores into a new database only, unless asked explicitly to replace it`);
    }
    const clauses = [`RESTORE DATABASE ${source} FROM ${directory} TAKEN AT ${takenAt}${on === undefined ? '' : ` ON ${on}`} INTO ${into}`];
    if (logTarget !== undefined) clauses.push(`LOGTARGET ${logTarget}`);
    if (replaceExisting) clauses.push('REPLACE EXISTING');
    if (logTarget === undefined) clauses.push('WITHOUT ROLLING FORWARD');
    if (replaceExisting) clauses.push('WITHOUT PROMPTING');
    // ENCRYPT is asked for explicitly for a new database: a plaintext copy of an encrypted
    // database would be a leak. A replaced database keeps its own encryption settings.
    else clauses.push(masterKeyLabel === undefined ? 'ENCRYPT' : `ENCRYPT MASTER KEY LABEL ${masterKeyLabel}`);
    const restore = clauses.join(' ');
    const commands = [restore];
    const restored = await serialized(() => this.run(operation, [restore]));
    if (!/completed successfully/i.test(restored.stdout)) throw new EngineError('ENGINE_COMMAND_FAILED', `Db2 ${operation} did not report success: ${restored.stdout.trim()}`);
    if (logTarget !== undefined) {
      const rollforward = `ROLLFORWARD DATABASE ${into} TO END OF BACKUP AND STOP OVERFLOW LOG PATH (${logTarget})`;
      commands.push(rollforward);
      const rolled = await serialized(() => this.run(`roll-forward of ${into}`, [rollforward]));
      const status = /Rollforward status\s*=\s*(.+)/i.exec(rolled.stdout)?.[1]?.trim();
      if (status !== undefined && status.toLowerCase() !== 'not pending') throw new EngineError('ENGINE_COMMAND_FAILED', `Db2 roll-forward of ${into} ended with rollforward status "${status}"`);
    }
    return { database: into, commands };
  }

  /**
   * `DROP DATABASE <db>`: for the scratch databases keyops restores to check an image. The caller
   * decides what may be dropped; this only refuses a name that would change the command.
   */
  async dropDatabase(database: string): Promise<{ command: string }> {
    checkDatabase(database);
    const command = `DROP DATABASE ${database}`;
    const result = await serialized(() => this.run(`drop of ${database}`, [command]));
    if (!/completed successfully/i.test(result.stdout)) throw new EngineError('ENGINE_COMMAND_FAILED', `Db2 drop of ${database} did not report success: ${result.stdout.trim()}`);
    return { command };
  }

  /**
   * The ordinary tables (SYSCAT.TABLES TYPE 'T') outside Db2's own SYS* schemas, and the sum of
   * their COUNT_BIG(*): every row is read, so a table Db2 cannot read fails the count rather than
   * being estimated from catalog statistics (CARD is only as fresh as the last RUNSTATS).
   */
  async countUserTables(database: string): Promise<{ tables: number; rows: number }> {
    checkDatabase(database);
    const operation = `row count of ${database}`;
    return this.connected(database, operation, async () => {
      const listed = await this.run(operation, ['-x', USER_TABLES_QUERY]);
      const tables = parseTableList(listed.stdout);
      let rows = 0;
      for (let i = 0; i < tables.length; i += COUNT_BATCH) {
        const counts = tables.slice(i, i + COUNT_BATCH).map((t) => `SELECT COUNT_BIG(*) AS N FROM ${quoteIdentifier(t.schema)}.${quoteIdentifier(t.name)}`);
        const result = await this.run(operation, ['-x', `SELECT 'n' || RTRIM(CHAR(SUM(N))) FROM (${counts.join(' UNION ALL ')}) AS C`]);
        const sum = /^\s*n(\d+)\s*$/m.exec(result.stdout)?.[1];
        if (sum === undefined) throw new EngineError('ENGINE_COMMAND_FAILED', `Db2 ${operation} returned no row count keyops can read: ${result.stdout.trim().slice(0, 200)}`);
        rows += Number(sum);
      }
      return { tables: tables.length, rows };
    });
  }

  /**
   * `db2ckbkp <image>`: reads the whole image and checks its pages. Only "Image Verification
   * Complete - successful." is success; a keystore error (SQL1728N for an encrypted image) keeps
   * its own, retryable, meaning.
   */
  async verifyBackupImage(image: string): Promise<{ image: string; command: string }> {
    checkPath(image, 'backup image');
    const result = await this.runner.run(this.options.db2ckbkp ?? 'db2ckbkp', [image]);
    this.checkVerdict(image, result, true);
    return { image, command: `db2ckbkp ${image}` };
  }

  /** `db2ckbkp -h <image>`: the media header, which names the database, timestamp and mode. */
  async describeBackupImage(image: string): Promise<Db2ImageHeader> {
    checkPath(image, 'backup image');
    const result = await this.runner.run(this.options.db2ckbkp ?? 'db2ckbkp', ['-h', image]);
    this.checkVerdict(image, result, false);
    const fields = new Map([...result.stdout.matchAll(/^\s*([A-Za-z][A-Za-z .'()]*?)\s+--\s?(.*)$/gm)].map((m) => [(m[1] as string).trim(), (m[2] as string).trim()]));
    const header = imageHeaderSchema.safeParse({
      database: fields.get('Server Database Name'),
      alias: fields.get('Server Database Alias'),
      clientAlias: fields.get('Client Database Alias'),
      timestamp: fields.get('Timestamp'),
      instance: fields.get('Instance'),
      partition: numberField(fields.get('Database Partition Number')),
      sequence: numberField(fields.get('Sequence Number')),
      backupType: numberField(fields.get('Backup Type')),
      online: fields.get('Backup Mode') === '1',
      includesLogs: fields.get('Includes Logs') === '1',
    });
    if (!header.success) throw new EngineError('BACKUP_INVALID', `db2ckbkp -h ${image} printed no readable media header: ${z.prettifyError(header.error)}`);
    return header.data;
  }

  private checkVerdict(image: string, result: CommandResult, required: boolean): void {
    const output = `${result.stdout}\n${result.stderr}`;
    if (/\bSQL\d{4,5}[NC]\b/.test(output)) {
      const failure = classifyDb2Output(`check of backup image ${image}`, { ...result, exitCode: Math.max(result.exitCode, 4) });
      if (failure) throw failure;
    }
    const verdict = /Image Verification Complete - (.*)/.exec(output)?.[1]?.trim();
    const ok = verdict === 'successful.' && !/ERRORS DETECTED/i.test(output);
    if (ok && result.exitCode === 0) return;
    if (!required && verdict === undefined && result.exitCode === 0) return;
    const line = verdict !== undefined ? `Image Verification Complete - ${verdict}` : (output.trim().split('\n').find((l) => /error|not|fail/i.test(l)) ?? `exit code ${result.exitCode}`);
    throw new EngineError('BACKUP_INVALID', `Db2 backup image ${image} failed db2ckbkp: ${line.trim()}`, 'db2ckbkp');
  }
}

function numberField(value: string | undefined): number | string | undefined {
  return value !== undefined && /^\d+$/.test(value) ? Number(value) : value;
}

const imageHeaderSchema = z.object({
  database: z.string().regex(DB_NAME),
  alias: z.string().regex(DB_NAME),
  /** The alias BACKUP was given: the first part of the image's file name. */
  clientAlias: z.string().regex(DB_NAME),
  timestamp: z.string().regex(IMAGE_TIMESTAMP),
  /** Part of the file name too, so only what an instance name may be (1 to 8 letters, digits, _). */
  instance: z.string().regex(/^[A-Za-z0-9_]{1,8}$/),
  partition: z.number().int().min(0).max(999),
  /** Which file of a multi-file image this is (the .001 of the file name). */
  sequence: z.number().int().min(1).max(999),
  /** 0 is a full database backup; table-space backups (3) cannot restore a database alone. */
  backupType: z.number().int().min(0),
  online: z.boolean(),
  includesLogs: z.boolean(),
});

export type Db2ImageHeader = z.infer<typeof imageHeaderSchema>;

/**
 * The file name Db2 gives the image (alias.type.instance.DBPARTnnn.timestamp.seq): RESTORE finds
 * an image in its directory by this name alone, whatever the file is called elsewhere.
 */
export function db2ImageFileName(header: Db2ImageHeader): string {
  const pad = (n: number) => String(n).padStart(3, '0');
  return `${header.clientAlias.toUpperCase()}.${header.backupType}.${header.instance}.DBPART${pad(header.partition)}.${header.timestamp}.${pad(header.sequence)}`;
}
