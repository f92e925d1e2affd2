/**
 * Simulated HSM crypto units (the embedded default; no HSM on this machine), faithful where it
 * matters: key storage entries are really AES-256-GCM encrypted under the master-key register
 * values, so the forbidden recovery of reference 002 (a new MK generated after re-encryption
 * began) really leaves entries no register can open. State lives in one SQLite file per unit set
 * (0600), so a killed worker finds the registers as it left them, and several processes share it.
 *
 * Faults (for tests) fire once, per step, per unit, before or after the step's effect on that
 * unit, or after N entries of re-encryption; `kill` ends the process with SIGKILL right there.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { chmodSync, closeSync, existsSync, fsyncSync, linkSync, mkdirSync, openSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import Database from 'better-sqlite3-multiple-ciphers';
import { type CryptoUnit, CryptoUnitError, type CryptoUnitSet, type KeyStorageCheck, type Progress, type RegisterState } from './crypto-unit-set';
import { processAlive } from '../process-alive';
import { enableWal } from '../sqlite-wal';

export type FaultStep = 'load' | 'reencrypt' | 'promote' | 'remove' | 'add';

export interface Fault {
  step: FaultStep;
  /** The unit whose effect it precedes or follows; any unit when omitted. */
  unitId?: string;
  timing: 'before' | 'after';
  /** For `reencrypt`: fire once this many entries are re-encrypted. */
  afterEntries?: number;
  /** `transient` fails retryably (a unit unreachable), `fatal` not, `kill` is SIGKILL. */
  action: 'transient' | 'fatal' | 'kill';
}

interface UnitRow {
  unit_id: string;
  selected: number;
  imprint_mode: number;
  signature_threshold: number;
  administrators: string;
  current_state: RegisterState;
  current_mk: Buffer | null;
  next_state: RegisterState;
  next_mk: Buffer | null;
}

interface EntryRow {
  entry_id: string;
  vp: string;
  iv: Buffer;
  tag: Buffer;
  ciphertext: Buffer;
  digest: string;
}

/** A verification pattern: identifies a register value without revealing it. */
export const verificationPattern = (value: Buffer): string => createHash('sha256').update('keyops-sim-mkvp').update(value).digest('hex').slice(0, 32);

const seal = (mk: Buffer, plain: Buffer) => {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', mk, iv);
  const ciphertext = Buffer.concat([cipher.update(plain), cipher.final()]);
  return { iv, tag: cipher.getAuthTag(), ciphertext };
};

function open(mk: Buffer, entry: Pick<EntryRow, 'iv' | 'tag' | 'ciphertext'>): Buffer {
  const decipher = createDecipheriv('aes-256-gcm', mk, entry.iv);
  decipher.setAuthTag(entry.tag);
  return Buffer.concat([decipher.update(entry.ciphertext), decipher.final()]);
}

export class SimulatedCryptoUnits implements CryptoUnitSet {
  private constructor(
    readonly id: string,
    private readonly db: Database.Database,
  ) {}

  /** Opens an existing unit set; a missing file is a configuration error naming it. */
  static open(path: string): SimulatedCryptoUnits {
    if (!existsSync(path)) throw new CryptoUnitError('COMMAND_FAILED', `no crypto-unit set at ${path} (a worker creates the one named by KEYOPS_KMS_UNIT_SET at start)`);
    return new SimulatedCryptoUnits(basename(path).replace(/\.sqlite$/, ''), SimulatedCryptoUnits.connect(path));
  }

  /**
   * Creates a unit set whose units share one valid current MK, with `entries` key-storage entries
   * under it. Opens it instead when it exists. Two workers starting together on a new data
   * directory both get here: the set is built in a private file and published with a link that
   * never replaces one, so exactly one set appears, whole, and the loser opens it.
   */
  static create(path: string, options: { units?: number; entries?: number; signatureThreshold?: number } = {}): SimulatedCryptoUnits {
    if (existsSync(path)) return SimulatedCryptoUnits.open(path);
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    removeAbandonedDrafts(path);
    const draft = `${path}.creating-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      // Rollback journal while private: the published file is then one file, without a -wal beside it.
      const db = new Database(draft);
      chmodSync(draft, 0o600);
      try {
        db.pragma('synchronous = FULL');
        SimulatedCryptoUnits.createTables(db);
        const mk = randomBytes(32);
        const vp = verificationPattern(mk);
        db.transaction(() => {
          const unit = db.prepare(
            `INSERT INTO units VALUES (?, 1, 0, ?, '["admin-1","admin-2"]', 'valid', ?, 'empty', NULL)`,
          );
          for (let i = 1; i <= (options.units ?? 3); i++) unit.run(String(i), options.signatureThreshold ?? 2, mk);
          const entry = db.prepare('INSERT INTO key_storage VALUES (?, ?, ?, ?, ?, ?)');
          for (let i = 0; i < (options.entries ?? 16); i++) {
            const secret = randomBytes(32);
            const sealed = seal(mk, secret);
            entry.run(`crk-${String(i).padStart(4, '0')}`, vp, sealed.iv, sealed.tag, sealed.ciphertext, createHash('sha256').update(secret).digest('hex'));
          }
        })();
        mk.fill(0);
      } finally {
        db.close();
      }
      try {
        linkSync(draft, path);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        // Another process published its set first: that one is the set. A file system without
        // hard links gets a rename, which only a start at the very same moment could race.
        if (code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP') {
          if (!existsSync(path)) renameSync(draft, path);
        } else if (code !== 'EEXIST') {
          throw err;
        }
      }
      syncDirectoryOf(path);
    } finally {
      rmSync(draft, { force: true });
      rmSync(`${draft}-journal`, { force: true });
    }
    return SimulatedCryptoUnits.open(path);
  }

  private static connect(path: string): Database.Database {
    const db = new Database(path);
    db.pragma('busy_timeout = 10000');
    enableWal(db);
    // Durable commits: files renamed and fsynced after a commit must never outlive it.
    db.pragma('synchronous = FULL');
    SimulatedCryptoUnits.createTables(db);
    return db;
  }

  private static createTables(db: Database.Database): void {
    db.exec(`
      CREATE TABLE IF NOT EXISTS units (
        unit_id TEXT PRIMARY KEY, selected INTEGER NOT NULL, imprint_mode INTEGER NOT NULL,
        signature_threshold INTEGER NOT NULL, administrators TEXT NOT NULL,
        current_state TEXT NOT NULL, current_mk BLOB, next_state TEXT NOT NULL, next_mk BLOB
      );
      CREATE TABLE IF NOT EXISTS key_storage (
        entry_id TEXT PRIMARY KEY, vp TEXT NOT NULL, iv BLOB NOT NULL, tag BLOB NOT NULL,
        ciphertext BLOB NOT NULL, digest TEXT NOT NULL
      );
      CREATE TABLE IF NOT EXISTS faults (
        id INTEGER PRIMARY KEY, step TEXT NOT NULL, unit_id TEXT, timing TEXT NOT NULL,
        after_entries INTEGER, action TEXT NOT NULL, fired INTEGER NOT NULL DEFAULT 0
      );
      CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    `);
  }

  close(): void {
    this.db.close();
  }

  listUnits(): Promise<CryptoUnit[]> {
    return Promise.resolve(this.rows().map(toUnit));
  }

  checkAuthentication(): Promise<void> {
    const row = this.db.prepare<[], { value: string }>(`SELECT value FROM settings WHERE name = 'auth-expired'`).get();
    if (row?.value === '1') return Promise.reject(new CryptoUnitError('AUTH_EXPIRED', 'the administrator login expired: log in again (ibmcloud login) and start the rotation again'));
    return Promise.resolve();
  }

  loadNewMasterKey(): Promise<{ verificationPattern: string }> {
    const value = randomBytes(32);
    try {
      for (const unit of this.selected()) {
        this.fault('load', unit.unit_id, 'before');
        this.db.prepare(`UPDATE units SET next_state = 'valid', next_mk = ? WHERE unit_id = ?`).run(value, unit.unit_id);
        this.fault('load', unit.unit_id, 'after');
      }
      return Promise.resolve({ verificationPattern: verificationPattern(value) });
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    } finally {
      value.fill(0);
    }
  }

  async reencryptKeyStorage(progress?: Progress): Promise<{ entries: number }> {
    const units = this.selected();
    const current = common(units.map((u) => [u.current_state, u.current_mk]));
    const next = common(units.map((u) => [u.next_state, u.next_mk]));
    if (!current || !next) {
      throw new CryptoUnitError('PRECONDITION_FAILED', 're-encryption needs the same valid current and new master key on every selected unit', units.map((u) => u.unit_id));
    }
    try {
      const from = verificationPattern(current);
      const to = verificationPattern(next);
      const entries = this.db.prepare<[], EntryRow>('SELECT * FROM key_storage ORDER BY entry_id').all();
      const update = this.db.prepare('UPDATE key_storage SET vp = ?, iv = ?, tag = ?, ciphertext = ? WHERE entry_id = ? AND vp = ?');
      let done = 0;
      for (const entry of entries) {
        // Entries already under the new MK are skipped (a resumed re-encryption). An entry under
        // neither value is skipped too, as an HSM would: it is simply lost.
        if (entry.vp === from) {
          const plain = open(current, entry);
          const sealed = seal(next, plain);
          plain.fill(0);
          update.run(to, sealed.iv, sealed.tag, sealed.ciphertext, entry.entry_id, from);
        }
        done += 1;
        this.fault('reencrypt', undefined, 'after', done);
        progress?.(done, entries.length);
        if (done % 64 === 0) await new Promise((resolve) => setImmediate(resolve));
      }
      return { entries: entries.length };
    } finally {
      current.fill(0);
      next.fill(0);
    }
  }

  promoteNewMasterKey(): Promise<void> {
    const units = this.selected();
    const empty = units.filter((u) => u.next_state !== 'valid');
    if (empty.length > 0) {
      return Promise.reject(
        new CryptoUnitError(
          'PRECONDITION_FAILED',
          `set-immediate needs a valid new master key on every selected unit; unit(s) ${empty.map((u) => u.unit_id).join(', ')} have none (already promoted? take them out of the selection)`,
          empty.map((u) => u.unit_id),
        ),
      );
    }
    try {
      for (const unit of units) {
        this.fault('promote', unit.unit_id, 'before');
        this.db.prepare(`UPDATE units SET current_state = next_state, current_mk = next_mk, next_state = 'empty', next_mk = NULL WHERE unit_id = ?`).run(unit.unit_id);
        this.fault('promote', unit.unit_id, 'after');
      }
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
  }

  removeFromSelection(unitIds: string[]): Promise<void> {
    return this.setSelected('remove', unitIds, 0);
  }

  addToSelection(unitIds: string[]): Promise<void> {
    return this.setSelected('add', unitIds, 1);
  }

  checkKeyStorage(): Promise<KeyStorageCheck> {
    const values = this.selected().flatMap((u) => (u.current_state === 'valid' && u.current_mk ? [u.current_mk] : []));
    const byVp = new Map(values.map((v) => [verificationPattern(v), v]));
    const entries = this.db.prepare<[], EntryRow>('SELECT * FROM key_storage').all();
    let readable = 0;
    for (const entry of entries) {
      const mk = byVp.get(entry.vp);
      if (!mk) continue;
      try {
        const plain = open(mk, entry);
        if (createHash('sha256').update(plain).digest('hex') === entry.digest) readable += 1;
        plain.fill(0);
      } catch {
        // Not openable under the value its VP names: as unusable as an entry under no value.
      }
    }
    const vps = [...byVp.keys()];
    return Promise.resolve({ entries: entries.length, readable, verificationPattern: vps.length === 1 ? vps[0] : undefined });
  }

  // Simulation controls, for tests and the demo.

  injectFault(fault: Fault): void {
    this.db
      .prepare('INSERT INTO faults (step, unit_id, timing, after_entries, action) VALUES (?, ?, ?, ?, ?)')
      .run(fault.step, fault.unitId ?? null, fault.timing, fault.afterEntries ?? null, fault.action);
  }

  setAuthExpired(expired: boolean): void {
    this.db.prepare(`INSERT OR REPLACE INTO settings VALUES ('auth-expired', ?)`).run(expired ? '1' : '0');
  }

  setUnit(unitId: string, change: { imprintMode?: boolean; signatureThreshold?: number; administrators?: string[] }): void {
    const row = this.row(unitId);
    this.db
      .prepare('UPDATE units SET imprint_mode = ?, signature_threshold = ?, administrators = ? WHERE unit_id = ?')
      .run(
        change.imprintMode === undefined ? row.imprint_mode : Number(change.imprintMode),
        change.signatureThreshold ?? row.signature_threshold,
        change.administrators ? JSON.stringify(change.administrators) : row.administrators,
        unitId,
      );
  }

  private setSelected(step: FaultStep, unitIds: string[], selected: number): Promise<void> {
    try {
      for (const unitId of unitIds) {
        this.row(unitId);
        this.fault(step, unitId, 'before');
        this.db.prepare('UPDATE units SET selected = ? WHERE unit_id = ?').run(selected, unitId);
        this.fault(step, unitId, 'after');
      }
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private rows(): UnitRow[] {
    return this.db.prepare<[], UnitRow>('SELECT * FROM units ORDER BY CAST(unit_id AS INTEGER), unit_id').all();
  }

  private selected(): UnitRow[] {
    return this.rows().filter((u) => u.selected === 1);
  }

  private row(unitId: string): UnitRow {
    const row = this.db.prepare<[string], UnitRow>('SELECT * FROM units WHERE unit_id = ?').get(unitId);
    if (!row) throw new CryptoUnitError('COMMAND_FAILED', `crypto-unit set ${this.id} has no unit ${unitId}`);
    return row;
  }

  /** Fires the first unfired fault matching this point, once (the mark is committed first). */
  private fault(step: FaultStep, unitId: string | undefined, timing: 'before' | 'after', entries?: number): void {
    const match = this.db
      .prepare<[string, string, string | null, number | null], { id: number; action: Fault['action'] }>(
        `SELECT id, action FROM faults WHERE fired = 0 AND step = ? AND timing = ? AND (unit_id IS NULL OR unit_id = ?)
           AND (after_entries IS NULL OR after_entries = ?) ORDER BY id LIMIT 1`,
      )
      .get(step, timing, unitId ?? null, entries ?? null);
    if (!match) return;
    this.db.prepare('UPDATE faults SET fired = 1 WHERE id = ?').run(match.id);
    if (match.action === 'kill') process.kill(process.pid, 'SIGKILL');
    const where = `${step} ${timing} its effect${unitId ? ` on unit ${unitId}` : ''}${entries ? ` (${entries} entries)` : ''}`;
    throw match.action === 'transient'
      ? new CryptoUnitError('UNIT_UNREACHABLE', `simulated fault: a crypto unit stopped answering, ${where}`, unitId ? [unitId] : [])
      : new CryptoUnitError('COMMAND_FAILED', `simulated fault: the command failed, ${where}`, unitId ? [unitId] : []);
  }
}

function toUnit(row: UnitRow): CryptoUnit {
  const register = (state: RegisterState, value: Buffer | null) => (state === 'valid' && value ? { state, verificationPattern: verificationPattern(value) } : { state });
  return {
    unitId: row.unit_id,
    selected: row.selected === 1,
    imprintMode: row.imprint_mode === 1,
    signatureThreshold: row.signature_threshold,
    administrators: JSON.parse(row.administrators) as string[],
    current: register(row.current_state, row.current_mk),
    next: register(row.next_state, row.next_mk),
  };
}

/** The one value every register holds (a copy), or undefined when they differ or are not valid. */
function common(registers: [RegisterState, Buffer | null][]): Buffer | undefined {
  if (registers.length === 0 || registers.some(([state, value]) => state !== 'valid' || !value)) return undefined;
  const first = registers[0]![1]!;
  return registers.every(([, value]) => value!.equals(first)) ? Buffer.from(first) : undefined;
}

/** Drafts of a set (`<set>.creating-<pid>-…`) left by a process that died while creating it. */
function removeAbandonedDrafts(path: string): void {
  const prefix = `${basename(path)}.creating-`;
  for (const name of readdirSync(dirname(path))) {
    if (!name.startsWith(prefix)) continue;
    const pid = Number(name.slice(prefix.length).split('-')[0]);
    if (Number.isInteger(pid) && pid > 0 && processAlive(pid)) continue;
    rmSync(join(dirname(path), name), { force: true });
  }
}

/** The published name survives a power cut only once its directory is on disk. */
function syncDirectoryOf(path: string): void {
  const fd = openSync(dirname(path), 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
