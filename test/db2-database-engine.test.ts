import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { CommandResult, CommandRunner } from '../activities/engines/command-runner';
import { Db2Cli } from '../activities/engines/db2-cli';
import { Db2DatabaseEngine } from '../activities/engines/db2-database-engine';
import { EngineRouter } from '../activities/engines/engine-router';
import { engineError } from './helpers/engine-errors';
import type { KeyMetadata } from '../activities/kms/key-management-service';

const FIXTURES = join(__dirname, 'fixtures', 'db2');
const fixture = (name: string): string => readFileSync(join(FIXTURES, name), 'utf8');
const ok = (stdout: string, exitCode = 0): CommandResult => ({ exitCode, stdout, stderr: '' });
const failed = (stdout: string, exitCode = 4): CommandResult => ({ exitCode, stdout, stderr: '' });
const hex = (s: string | null) => (s === null ? '-' : `x${Buffer.from(s, 'utf8').toString('hex').toUpperCase()}`);

interface Table {
  schema: string;
  name: string;
  rows: number;
}

/** What the fake writes as an "image": a line the fake's own db2ckbkp and RESTORE read back, then filler. */
const IMAGE_MAGIC = 'KEYOPS-FAKE-DB2-IMAGE ';

/**
 * A fake of the Db2 command line processor and db2ckbkp (Db2 cannot run on this machine). It
 * answers with IBM's documented texts (messages, the media header of db2ckbkp -h, the CALL
 * output block, the database directory) and keeps the state those commands change: the images
 * BACKUP writes under Db2's own file name, the databases RESTORE creates and DROP removes, and
 * the tables and rows of each, so a count after a restore is the count of what was restored.
 * Every command is recorded; one it does not know fails the test.
 */
class FakeDb2 implements CommandRunner {
  readonly calls: string[] = [];
  readonly databases = new Map<string, { tables: Table[]; label: string | null; algorithm: string | null }>();
  private connected: string | undefined;
  private clock = 20261201021541;
  /** Answers that replace the fake's own for commands starting with a prefix, once each. */
  readonly overrides: [prefix: string, answer: CommandResult | (() => CommandResult)][] = [];
  /** A BACKUP that takes this long, to see heartbeats while it runs. */
  backupDelayMs = 0;
  /** Extra files BACKUP leaves beside its image (a multi-session image). */
  backupSessions = 1;

  constructor(tables: Table[] = [], label = 'DB2_SYSGEN_db2inst1_PRODDB_2026-03-01-02.00.00_A1B2C3D4') {
    this.databases.set('PRODDB', { tables, label, algorithm: 'AES' });
  }

  async run(command: string, args: readonly string[]): Promise<CommandResult> {
    const line = [command, ...args].join(' ');
    this.calls.push(line);
    const override = this.overrides.findIndex(([prefix]) => line.startsWith(prefix));
    if (override >= 0) {
      const [, answer] = this.overrides.splice(override, 1)[0] as [string, CommandResult | (() => CommandResult)];
      return typeof answer === 'function' ? answer() : answer;
    }
    if (command === 'db2ckbkp') return this.ckbkp(args);
    const statement = args.join(' ');
    let m: RegExpExecArray | null;
    if ((m = /^CONNECT TO (\S+)$/.exec(statement))) {
      const name = (m[1] as string).toUpperCase();
      if (!this.databases.has(name)) return failed(`SQL1013N  The database alias name or database name "${name}" could not be found.  SQLSTATE=42705\n`);
      this.connected = name;
      return ok(`\n   Database Connection Information\n\n Database server        = DB2/LINUXX8664 11.5.9.0\n SQL authorization ID   = DB2INST1\n Local database alias   = ${name}\n\n`);
    }
    if (statement === 'CONNECT RESET') {
      this.connected = undefined;
      return ok('DB20000I  The SQL command completed successfully.\n');
    }
    if (statement.startsWith('-x ') && statement.includes('ADMIN_GET_ENCRYPTION_INFO')) {
      const db = this.current();
      const fields = [this.connected ?? '', 'DATABASE', db.algorithm, db.algorithm ? 'CBC' : null, db.algorithm ? '256' : null, db.label, '/home/db2inst1/keystore/keys.p12', 'PKCS12', null, null, null, null, null];
      return ok(`${fields.map(hex).join(' ')}  \n`);
    }
    if (statement.startsWith("-x SELECT 'x' || HEX(TABSCHEMA)")) {
      const tables = this.current().tables;
      if (tables.length === 0) return ok('SQL0100W  No row was found for FETCH, UPDATE or DELETE; or the result of a query is an empty table.  SQLSTATE=02000\n', 1);
      return ok(tables.map((t) => `${hex(t.schema)} ${hex(t.name)}`).join('\n') + '\n');
    }
    if (statement.startsWith("-x SELECT 'n'")) {
      const tables = this.current().tables;
      let sum = 0;
      for (const [, schema, name] of statement.matchAll(/FROM "((?:[^"]|"")*)"\."((?:[^"]|"")*)"/g)) {
        const table = tables.find((t) => t.schema === schema?.replace(/""/g, '"') && t.name === name?.replace(/""/g, '"'));
        if (!table) return failed(`SQL0204N  "${schema}.${name}" is an undefined name.  SQLSTATE=42704\n`);
        sum += table.rows;
      }
      return ok(`n${sum}\n`);
    }
    if ((m = /^BACKUP DATABASE (\S+) ONLINE TO (\S+) ENCRYPT$/.exec(statement))) {
      const [name, dir] = [m[1] as string, m[2] as string];
      const db = this.databases.get(name.toUpperCase());
      if (!db) return failed(`SQL1013N  The database alias name or database name "${name}" could not be found.  SQLSTATE=42705\n`);
      if (this.backupDelayMs) await new Promise((resolve) => setTimeout(resolve, this.backupDelayMs));
      const timestamp = String(this.clock++);
      for (let session = 1; session <= this.backupSessions; session++) {
        const header = `${IMAGE_MAGIC}${JSON.stringify({ database: name.toUpperCase(), timestamp, online: true, tables: db.tables })}\n`;
        writeFileSync(join(dir, `${name.toUpperCase()}.0.db2inst1.DBPART000.${timestamp}.00${session}`), Buffer.concat([Buffer.from(header), Buffer.alloc(300_000, session)]));
      }
      return ok(`\nBackup successful. The timestamp for this backup image is : ${timestamp}\n\n`);
    }
    if (statement === 'LIST DATABASE DIRECTORY') {
      if (this.databases.size === 0) return ok('SQL1057W  The system database directory is empty.\n', 2);
      const entries = [...this.databases.keys()].map(
        (name, i) => `Database ${i + 1} entry:\n\n Database alias                       = ${name}\n Database name                        = ${name}\n Local database directory             = /home/db2inst1\n Directory entry type                 = Indirect\n`,
      );
      return ok(`\n System Database Directory\n\n Number of entries in the directory = ${entries.length}\n\n${entries.join('\n')}\n`);
    }
    if ((m = /^RESTORE DATABASE (\S+) FROM (\S+) TAKEN AT (\d{14})(?: ON (\S+))? INTO (\S+)(?: LOGTARGET (\S+))?(?: WITHOUT ROLLING FORWARD)? ENCRYPT(?: MASTER KEY LABEL (\S+))?$/.exec(statement))) {
      const [source, dir, takenAt, on, into, , label] = m.slice(1) as [string, string, string, string | undefined, string, string | undefined, string | undefined];
      // As Db2 does: the image is found by its file name in the directory, nothing else.
      const file = join(dir, `${source}.0.db2inst1.DBPART000.${takenAt}.001`);
      if (!existsSync(file)) {
        return failed(`SQL2542N  No match for a database image file was found based on the source database alias "${source}" and timestamp "${takenAt}" provided.\n`);
      }
      const image = this.readImage(file);
      if (!image) return failed(`SQL2062N  An error occurred while accessing media "${file}".  Reason code: "11".\n`);
      this.databases.set(into, { tables: image.tables, label: label ?? `DB2_SYSGEN_db2inst1_${into}_generated`, algorithm: 'AES' });
      if (on) mkdirSync(join(on, 'db2inst1', 'NODE0000', into), { recursive: true });
      return ok('DB20000I  The RESTORE DATABASE command completed successfully.\n');
    }
    if ((m = /^ROLLFORWARD DATABASE (\S+) TO END OF BACKUP AND STOP OVERFLOW LOG PATH \((\S+)\)$/.exec(statement))) {
      return ok(fixture('rollforward.out').replace('PRODNEW', m[1] as string));
    }
    if ((m = /^DROP DATABASE (\S+)$/.exec(statement))) {
      if (!this.databases.delete(m[1] as string)) return failed(`SQL1013N  The database alias name or database name "${m[1]}" could not be found.  SQLSTATE=42705\n`);
      return ok('DB20000I  The DROP DATABASE command completed successfully.\n');
    }
    if (statement === 'CALL SYSPROC.ADMIN_ROTATE_MASTER_KEY(NULL)') {
      const label = `DB2_SYSGEN_db2inst1_${this.connected}_2026-12-01-02.15.41`;
      this.current().label = label;
      return ok(`\n  Value of output parameters\n  --------------------------\n  Parameter Name  : LABEL\n  Parameter Value : ${label}\n\n  Return Status = 0\n`);
    }
    throw new Error(`the fake CLP has no answer for: ${line}`);
  }

  private current() {
    const db = this.connected ? this.databases.get(this.connected) : undefined;
    if (!db) throw new Error('the fake CLP got a statement without a connection');
    return db;
  }

  private readImage(path: string): { database: string; timestamp: string; online: boolean; tables: Table[] } | undefined {
    const text = readFileSync(path).subarray(0, 4096).toString('latin1');
    if (!text.startsWith(IMAGE_MAGIC)) return undefined;
    return JSON.parse(text.slice(IMAGE_MAGIC.length, text.indexOf('\n'))) as { database: string; timestamp: string; online: boolean; tables: Table[] };
  }

  private ckbkp(args: readonly string[]): CommandResult {
    const path = args.at(-1) as string;
    const image = existsSync(path) ? this.readImage(path) : undefined;
    if (args[0] === '-h') {
      if (!image) return ok('\n=====================\nMEDIA HEADER REACHED:\n=====================\n');
      // The media header as db2ckbkp -h prints it (see test/fixtures/db2/db2ckbkp-h.out).
      return ok(fixture('db2ckbkp-h.out').replace(/SAMPLE/g, image.database).replace('20100730130237', image.timestamp));
    }
    if (!image) return failed('\n[1] Buffers processed:  ####\nERROR!  Page checksum failure in object 4 of pool 2\n\nImage Verification Complete - ERRORS DETECTED:    1\n', 1);
    return ok('\n[1] Buffers processed:  ##########\n\nImage Verification Complete - successful.\n');
  }
}

const TABLES: Table[] = [
  { schema: 'APP', name: 'ORDERS', rows: 1200 },
  { schema: 'APP', name: 'odd "name"', rows: 34 },
  { schema: 'SALES', name: 'EMPTY', rows: 0 },
];

function kms(currentVersion = 3): { getKeyMetadata(keyId: string): Promise<KeyMetadata> } {
  return {
    getKeyMetadata: (keyId: string) =>
      Promise.resolve({ keyId, name: 'db2-master', state: 'active', currentVersion, versions: [], createdAt: '2026-01-01T00:00:00.000Z', lastRotateDate: undefined, rotationPolicy: undefined } as unknown as KeyMetadata),
  };
}

function setup(fake = new FakeDb2(TABLES), options: { heartbeatMs?: number } = {}) {
  const root = mkdtempSync(join(tmpdir(), 'keyops-db2-engine-'));
  const engine = new Db2DatabaseEngine('shop', { database: 'PRODDB', cli: new Db2Cli(fake), rootKeyId: 'root-1', kms: kms(), workDir: join(root, 'work'), ...options });
  return { fake, engine, root, backups: join(root, 'backups') };
}


const sha256Of = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');
/** A pid that is certainly not running: a child that has exited. */
const deadPid = () => spawnSync('true').pid;

describe('Db2 database engine: capabilities and key state (fake Db2 CLP)', () => {
  it('supports reprotect only; everything else refuses naming the database and what to do instead', async () => {
    const { engine, fake } = setup();
    assert.deepEqual(engine.supports(), { reprotect: true, regenerate: false, stagedBackupKeys: false });
    const refusals: [() => Promise<unknown>, RegExp][] = [
      [() => engine.createPendingBackupKey(), /a staged backup key.*rotate that with reprotect/],
      [() => engine.activateBackupKey(), /a staged backup key/],
      [() => engine.backupKeyMaterial(), /exporting a backup key.*back up the Db2 keystore/],
      [() => engine.importBackupKey(), /importing a backup key.*restore the Db2 keystore/],
      [() => engine.regenerate(), /DEK regeneration.*restore a backup into a new database with ENCRYPT/],
    ];
    for (const [call, message] of refusals) {
      // A rejected promise, never a synchronous throw: callers may chain .catch on it.
      const err = await engineError(call());
      assert.deepEqual([err.code, err.retryable], ['INVALID_CONFIGURATION', false]);
      assert.match(err.message, /^database shop is Db2 database PRODDB: /);
      assert.match(err.message, message);
    }
    assert.equal(engine.hasBackupKey(), false);
    await engine.followRewrap();
    assert.deepEqual(fake.calls, [], 'no refusal ran a command');
  });

  it('key state: the root key, no WDEKs, never a key change in progress, no backup key', async () => {
    const { engine, fake } = setup();
    assert.deepEqual(await engine.keyState('shop'), { databaseId: 'shop', keyId: 'root-1', wdekVersions: [], keyChangeInProgress: false, backupKeyHash: '' });
    assert.equal(fake.calls[0], 'db2 CONNECT TO PRODDB');
    assert.equal((await engineError(engine.keyState('other'))).code, 'DATABASE_NOT_FOUND');
  });

  it('a database without native encryption is refused, saying what is missing', async () => {
    const fake = new FakeDb2(TABLES);
    const db = fake.databases.get('PRODDB');
    assert.ok(db);
    db.algorithm = null;
    db.label = null;
    const err = await engineError(setup(fake).engine.keyState('shop'));
    assert.equal(err.code, 'INVALID_CONFIGURATION');
    assert.match(err.message, /database shop \(Db2 database PRODDB\) is not natively encrypted: ADMIN_GET_ENCRYPTION_INFO reports no algorithm and no master key label/);
  });

  it('the keystore being unreachable stays a retryable key error', async () => {
    const fake = new FakeDb2(TABLES);
    fake.overrides.push(['db2 -x SELECT COALESCE', failed('SQL1728N  The command or operation failed because the keystore could not be accessed. Reason code "2".\n')]);
    const err = await engineError(setup(fake).engine.keyState('shop'));
    assert.deepEqual([err.code, err.retryable, err.engineCode], ['KEY_UNAVAILABLE', true, 'SQL1728N']);
  });

  it('reprotect is ADMIN_ROTATE_MASTER_KEY, then the key state', async () => {
    const { engine, fake } = setup();
    const state = await engine.reprotect('shop');
    assert.deepEqual(state, { databaseId: 'shop', keyId: 'root-1', wdekVersions: [], keyChangeInProgress: false, backupKeyHash: '' });
    assert.ok(fake.calls.includes('db2 CALL SYSPROC.ADMIN_ROTATE_MASTER_KEY(NULL)'));
    assert.equal(fake.databases.get('PRODDB')?.label, 'DB2_SYSGEN_db2inst1_PRODDB_2026-12-01-02.15.41');
  });
});

describe('Db2 database engine: backup (fake Db2 CLP)', () => {
  it("backs up into a staging directory beside the path and gives Db2's image the final name", async () => {
    const { engine, fake, backups } = setup();
    const path = join(backups, 'shop', 'shop-2026-12-01-abc.kob');
    const seen: [number, number][] = [];
    const image = await engine.backup('shop', path, (done, total) => seen.push([done, total]), { backupId: 'backup/shop/2026-12-01', night: '2026-12-01' });
    const bytes = readFileSync(path).length;
    assert.deepEqual(image, {
      databaseId: 'shop',
      path,
      bytes,
      sha256: sha256Of(path),
      keyId: 'root-1',
      keyVersion: 3,
      backupKeyHash: '',
      createdAt: new Date(2026, 11, 1, 2, 15, 41).toISOString(),
    });
    assert.deepEqual(readdirSync(join(backups, 'shop')), ['shop-2026-12-01-abc.kob'], 'the staging directory is gone');
    const backup = fake.calls.find((c) => c.startsWith('db2 BACKUP'));
    assert.match(backup ?? '', new RegExp(`^db2 BACKUP DATABASE PRODDB ONLINE TO ${join(backups, 'shop')}/\\.db2-backup-${process.pid}-[0-9a-f]{8} ENCRYPT$`));
    assert.ok(fake.calls.indexOf('db2 CONNECT TO PRODDB') < fake.calls.indexOf(backup as string), 'the encryption is checked before backing up');
    assert.deepEqual(seen.at(-1), [bytes, bytes], 'hashing reports its progress');
  });

  it('a complete image already at the path (an earlier attempt of the same run) is that backup: no second BACKUP', async () => {
    const { engine, fake, backups } = setup();
    const path = join(backups, 'shop.kob');
    const first = await engine.backup('shop', path);
    const calls = fake.calls.length;
    assert.deepEqual(await engine.backup('shop', path), first);
    assert.ok(!fake.calls.slice(calls).some((c) => c.startsWith('db2 BACKUP')));
    const foreign = join(backups, 'foreign.kob');
    writeFileSync(foreign, 'not an image');
    const err = await engineError(engine.backup('shop', foreign));
    assert.equal(err.code, 'BACKUP_INVALID');
    assert.equal(readFileSync(foreign, 'utf8'), 'not an image', 'never overwritten');
  });

  it('a failed backup leaves neither the path nor the staging directory', async () => {
    const fake = new FakeDb2(TABLES);
    fake.overrides.push(['db2 BACKUP', failed('SQL2059W  A device full warning was encountered on device "/backup/db2".\n', 2)]);
    const { engine, backups } = setup(fake);
    const err = await engineError(engine.backup('shop', join(backups, 'shop.kob')));
    assert.deepEqual([err.code, err.engineCode], ['ENGINE_COMMAND_FAILED', 'SQL2059W']);
    assert.deepEqual(readdirSync(backups), []);
  });

  it('an image of several files is refused, not half-kept', async () => {
    const fake = new FakeDb2(TABLES);
    fake.backupSessions = 2;
    const { engine, backups } = setup(fake);
    const err = await engineError(engine.backup('shop', join(backups, 'shop.kob')));
    assert.equal(err.code, 'ENGINE_COMMAND_FAILED');
    assert.match(err.message, /left 2 file\(s\).*single-session image/);
    assert.deepEqual(readdirSync(backups), []);
  });

  it("removes a killed attempt's staging directory, never a live one's", async () => {
    const { engine, backups } = setup();
    const dead = join(backups, `.db2-backup-${deadPid()}-00aa11bb`);
    const live = join(backups, `.db2-backup-${process.ppid}-00aa11bb`);
    mkdirSync(dead, { recursive: true });
    mkdirSync(live, { recursive: true });
    await engine.backup('shop', join(backups, 'shop.kob'));
    assert.deepEqual(readdirSync(backups).sort(), [`.db2-backup-${process.ppid}-00aa11bb`, 'shop.kob']);
  });

  it('keeps calling progress while Db2 runs a backup that reports nothing', async () => {
    const fake = new FakeDb2(TABLES);
    fake.backupDelayMs = 60;
    const { engine, backups } = setup(fake, { heartbeatMs: 5 });
    const ticks: [number, number][] = [];
    await engine.backup('shop', join(backups, 'shop.kob'), (done, total) => ticks.push([done, total]));
    assert.ok(ticks.filter(([done, total]) => done === 0 && total === 1).length >= 3, `heartbeats during BACKUP: ${JSON.stringify(ticks.slice(0, 5))}`);
  });
});

describe('Db2 database engine: verify, describe, restore (fake Db2 CLP)', () => {
  it('verify restores into a scratch database, counts every row of the restored tables, and drops it', async () => {
    const { engine, fake, backups, root } = setup();
    const image = await engine.backup('shop', join(backups, 'shop.kob'));
    const before = fake.calls.length;
    const verified = await engine.verifyBackupFile({ path: image.path, sha256: image.sha256 });
    assert.match(engine.scratchDatabase, /^KOCHK[0-9A-F]{3}$/);
    assert.deepEqual(verified.check, { tables: 3, rows: 1234 });
    assert.equal(verified.sha256, image.sha256);
    assert.deepEqual(verified.description, {
      databaseId: 'shop',
      backupId: undefined,
      night: undefined,
      createdAt: image.createdAt,
      keyId: 'root-1',
      keyVersion: 0,
      backupKeyHash: '',
      backupKeyVersion: undefined,
      backupKeyId: undefined,
      plainBytes: undefined,
    });
    const calls = fake.calls.slice(before);
    const restore = calls.find((c) => c.startsWith('db2 RESTORE')) ?? '';
    const work = join(root, 'work');
    assert.match(
      restore,
      new RegExp(
        `^db2 RESTORE DATABASE PRODDB FROM ${backups}/\\.db2-check-${process.pid}-[0-9a-f]{8} TAKEN AT 20261201021541 ON ${work}/check-${process.pid}-[0-9a-f]{8}/data INTO ${engine.scratchDatabase} LOGTARGET ${work}/check-${process.pid}-[0-9a-f]{8}/logs ENCRYPT MASTER KEY LABEL DB2_SYSGEN_db2inst1_PRODDB_2026-03-01-02\\.00\\.00_A1B2C3D4$`,
      ),
      'the scratch copy reuses the database’s master key rather than adding one to the keystore',
    );
    assert.ok(calls.some((c) => c.startsWith(`db2 ROLLFORWARD DATABASE ${engine.scratchDatabase} TO END OF BACKUP AND STOP`)));
    assert.ok(calls.indexOf(`db2ckbkp ${image.path}`) < calls.indexOf(restore), 'db2ckbkp reads every page before the restore');
    assert.equal(calls.at(-1), `db2 DROP DATABASE ${engine.scratchDatabase}`);
    assert.deepEqual([...fake.databases.keys()], ['PRODDB']);
    assert.deepEqual(readdirSync(backups), ['shop.kob'], 'the directory presenting the image under Db2’s name is gone');
    assert.deepEqual(readdirSync(work), [], 'scratch data and marker are gone');
    assert.deepEqual(await engine.verifyBackup({ path: image.path }), { tables: 3, rows: 1234 });
  });

  it('an empty database is honestly 0 tables and 0 rows', async () => {
    const { engine, backups } = setup(new FakeDb2([]));
    const image = await engine.backup('shop', join(backups, 'shop.kob'));
    assert.deepEqual(await engine.verifyBackup(image), { tables: 0, rows: 0 });
  });

  it('a checksum that differs is BACKUP_INVALID before any Db2 command', async () => {
    const { engine, fake, backups } = setup();
    const image = await engine.backup('shop', join(backups, 'shop.kob'));
    const before = fake.calls.length;
    const err = await engineError(engine.verifyBackup({ path: image.path, sha256: '0'.repeat(64) }));
    assert.deepEqual([err.code, err.retryable], ['BACKUP_INVALID', false]);
    assert.match(err.message, /SHA-256 differs/);
    assert.equal(fake.calls.length, before);
    assert.equal((await engineError(engine.verifyBackup({ path: join(backups, 'missing.kob') }))).code, 'BACKUP_INVALID');
  });

  it('db2ckbkp finding errors is BACKUP_INVALID and nothing is restored', async () => {
    const { engine, fake, backups } = setup();
    const image = await engine.backup('shop', join(backups, 'shop.kob'));
    fake.overrides.push([`db2ckbkp ${image.path}`, failed('\n[1] Buffers processed:  ####\nERROR!  Page checksum failure in object 4 of pool 2\n\nImage Verification Complete - ERRORS DETECTED:    1\n', 1)]);
    const err = await engineError(engine.verifyBackup(image));
    assert.equal(err.code, 'BACKUP_INVALID');
    assert.ok(!fake.calls.some((c) => c.startsWith('db2 RESTORE')));
  });

  it("another database's image is refused by its media header", async () => {
    const fake = new FakeDb2(TABLES);
    fake.databases.set('OTHERDB', { tables: [], label: 'X', algorithm: 'AES' });
    const { engine, backups } = setup(fake);
    const other = new Db2DatabaseEngine('other', { database: 'OTHERDB', cli: new Db2Cli(fake), rootKeyId: 'root-1', kms: kms(), workDir: join(backups, '..', 'work2') });
    const image = await other.backup('other', join(backups, 'other.kob'));
    for (const attempt of [() => engine.verifyBackup(image), () => engine.describeBackup(image.path), () => engine.restore(image, join(backups, '..', 'restore', 'NEWDB'))]) {
      const err = await engineError(attempt());
      assert.equal(err.code, 'BACKUP_INVALID');
      assert.match(err.message, /is an image of Db2 database OTHERDB, not of PRODDB \(database shop\)/);
    }
  });

  it('a scratch database keyops did not create is never dropped; one a killed check left is', async () => {
    const fake = new FakeDb2(TABLES);
    const { engine, backups, root } = setup(fake);
    const image = await engine.backup('shop', join(backups, 'shop.kob'));
    fake.databases.set(engine.scratchDatabase, { tables: [], label: 'X', algorithm: 'AES' });
    const err = await engineError(engine.verifyBackup(image));
    assert.deepEqual([err.code, err.retryable], ['DATABASE_EXISTS', false]);
    assert.match(err.message, /was not created by keyops/);
    assert.ok(fake.databases.has(engine.scratchDatabase));
    assert.ok(!fake.calls.some((c) => c.startsWith('db2 DROP')));

    writeFileSync(join(root, 'work', `${engine.scratchDatabase}.scratch`), `${deadPid()}\n`);
    assert.deepEqual(await engine.verifyBackup(image), { tables: 3, rows: 1234 });
    assert.equal(fake.calls.filter((c) => c === `db2 DROP DATABASE ${engine.scratchDatabase}`).length, 2, 'the leftover, then this check’s own');

    writeFileSync(join(root, 'work', `${engine.scratchDatabase}.scratch`), `${process.ppid}\n`);
    const busy = await engineError(engine.verifyBackup(image));
    assert.deepEqual([busy.code, busy.retryable], ['DATABASE_BUSY', true]);
  });

  it('a restore that fails still drops what it created and removes its scratch', async () => {
    const { engine, fake, backups, root } = setup();
    const image = await engine.backup('shop', join(backups, 'shop.kob'));
    fake.overrides.push(['db2 ROLLFORWARD', () => ok(fixture('rollforward.out').replace('= not pending', '= DB  working'))]);
    const err = await engineError(engine.verifyBackup(image));
    assert.match(err.message, /roll-forward of KOCHK[0-9A-F]{3} ended with rollforward status/);
    assert.deepEqual([...fake.databases.keys()], ['PRODDB']);
    assert.deepEqual(readdirSync(join(root, 'work')), []);
    assert.deepEqual(readdirSync(backups), ['shop.kob']);
  });

  it('describeBackup reads the media header alone', async () => {
    const { engine, fake, backups } = setup();
    const image = await engine.backup('shop', join(backups, 'shop.kob'));
    const before = fake.calls.length;
    const description = await engine.describeBackup(image.path);
    assert.deepEqual([description.databaseId, description.createdAt, description.keyId, description.keyVersion, description.backupId], ['shop', image.createdAt, 'root-1', 0, undefined]);
    assert.deepEqual(fake.calls.slice(before), [`db2ckbkp -h ${image.path}`]);
  });

  it("the engine router sends a Db2 image to the Db2 engine that recognises it, and a keyops file by its header's database", async () => {
    const { engine, backups } = setup();
    const image = await engine.backup('shop', join(backups, 'shop.kob'));
    // The embedded engine must never be asked about a Db2 image: any call to it fails the test.
    const embedded = new Proxy({}, { get: (_t, name) => () => assert.fail(`the embedded engine was asked ${String(name)}`) }) as never;
    const router = new EngineRouter(embedded, new Map([['shop', engine]]));
    assert.equal((await router.describeBackup(image.path)).databaseId, 'shop');
    assert.deepEqual((await router.verifyBackup({ path: image.path, sha256: image.sha256 })), { tables: 3, rows: 1234 });
    // Not a Db2 image of this database, nor a keyops file: refused as not a keyops backup file.
    const other = join(backups, 'notes.txt');
    writeFileSync(other, 'not a backup');
    assert.equal((await engineError(router.describeBackup(other))).code, 'BACKUP_INVALID');
    // An embedded database cannot be made under a server's id: every call for it would go to the server.
    assert.equal((await engineError(router.createDatabase('shop', 'root-1'))).code, 'DATABASE_EXISTS');
    const listing = { listDatabases: () => [{ databaseId: 'shop', keyId: 'k', createdAt: '' }, { databaseId: 'demo', keyId: 'k', createdAt: '' }] } as never;
    assert.deepEqual(new EngineRouter(listing, new Map([['shop', engine]])).shadowed, ['shop']);
  });

  it('restore creates a new database named by the target directory, with its data there, and counts it', async () => {
    const { engine, fake, backups, root } = setup();
    const image = await engine.backup('shop', join(backups, 'shop.kob'));
    const target = join(root, 'restore', 'PRODNEW');
    assert.deepEqual(await engine.restore(image, target), { tables: 3, rows: 1234 });
    const restore = fake.calls.find((c) => c.startsWith('db2 RESTORE')) ?? '';
    assert.match(restore, new RegExp(`TAKEN AT 20261201021541 ON ${target} INTO PRODNEW LOGTARGET ${root}/work/restore-${process.pid}-[0-9a-f]{8} ENCRYPT$`));
    assert.ok(fake.databases.has('PRODNEW'));
    assert.ok(existsSync(join(target, 'db2inst1', 'NODE0000', 'PRODNEW')));
    assert.deepEqual(readdirSync(join(root, 'work')), []);
    assert.deepEqual(readdirSync(backups), ['shop.kob']);
  });

  it('restore refuses a name Db2 cannot take, a target with files in it, and an existing database', async () => {
    const { engine, fake, backups, root } = setup();
    const image = await engine.backup('shop', join(backups, 'shop.kob'));
    const before = fake.calls.length;
    const badName = await engineError(engine.restore(image, join(root, 'restore', 'prod-new-copy')));
    assert.equal(badName.code, 'INVALID_CONFIGURATION');
    assert.match(badName.message, /last segment of the target directory names the new database/);
    const full = join(root, 'restore', 'FULL');
    mkdirSync(full, { recursive: true });
    writeFileSync(join(full, 'keep'), 'x');
    assert.match((await engineError(engine.restore(image, full))).message, /is not empty/);
    assert.equal(fake.calls.length, before, 'refused before any command');
    const existing = await engineError(engine.restore(image, join(root, 'restore', 'PRODDB')));
    assert.equal(existing.code, 'DATABASE_EXISTS');
    assert.ok(!fake.calls.some((c) => c.startsWith('db2 RESTORE') || c.startsWith('db2 DROP')));
    assert.ok(fake.databases.has('PRODDB'));
  });

  it('a restore that fails drops the database it created', async () => {
    const { engine, fake, backups, root } = setup();
    const image = await engine.backup('shop', join(backups, 'shop.kob'));
    fake.overrides.push(["db2 -x SELECT 'n'", failed('SQL0668N  Operation not allowed for reason code "1" on table "APP.ORDERS".  SQLSTATE=57016\n')]);
    const target = join(root, 'restore', 'PRODNEW');
    const err = await engineError(engine.restore(image, target));
    assert.equal(err.engineCode, 'SQL0668N');
    assert.ok(!fake.databases.has('PRODNEW'));
    assert.ok(fake.calls.includes('db2 DROP DATABASE PRODNEW'));
  });
});
