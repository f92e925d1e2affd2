import { chmodSync, existsSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3-multiple-ciphers';
import { enableWal } from '../sqlite-wal';

export interface RotationClaim {
  unitSetId: string;
  /** The workflow id of the rotation that holds the set. */
  owner: string;
  /** Set once re-encryption towards this new MK began: from then on no new MK may be generated. */
  reencryptingVp: string | undefined;
}

/**
 * keyops's own record of which rotation holds each unit set (the HSM has no such notion): one
 * rotation per set at a time, and a durable "re-encryption began" mark that a late or duplicate
 * new-MK load checks before it could overwrite the value key storage is moving to.
 */
/** The port the master-key activities use: who holds the rotation of each unit set. */
export interface RotationLedgerStore {
  get(unitSetId: string): RotationClaim | undefined;
  /** Claims the set for `owner`, or returns the claim someone else holds. */
  claim(unitSetId: string, owner: string): RotationClaim;
  markReencrypting(unitSetId: string, owner: string, newVp: string): void;
  release(unitSetId: string, owner: string): void;
}

export class RotationLedger implements RotationLedgerStore {
  private constructor(private readonly db: Database.Database) {}

  static open(path: string): RotationLedger {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const created = !existsSync(path);
    const db = new Database(path);
    if (created) chmodSync(path, 0o600);
    enableWal(db);
    // Durable commits: files renamed and fsynced after a commit must never outlive it.
    db.pragma('synchronous = FULL');
    db.pragma('busy_timeout = 10000');
    db.exec('CREATE TABLE IF NOT EXISTS claims (unit_set_id TEXT PRIMARY KEY, owner TEXT NOT NULL, reencrypting_vp TEXT, claimed_at TEXT NOT NULL)');
    return new RotationLedger(db);
  }

  get(unitSetId: string): RotationClaim | undefined {
    const row = this.db
      .prepare<[string], { owner: string; reencrypting_vp: string | null }>('SELECT owner, reencrypting_vp FROM claims WHERE unit_set_id = ?')
      .get(unitSetId);
    return row ? { unitSetId, owner: row.owner, reencryptingVp: row.reencrypting_vp ?? undefined } : undefined;
  }

  /** Claims the set for `owner`; returns the claim that holds it (another owner's when taken). */
  claim(unitSetId: string, owner: string): RotationClaim {
    return this.db
      .transaction(() => {
        const held = this.get(unitSetId);
        if (held) return held;
        this.db.prepare('INSERT INTO claims VALUES (?, ?, NULL, ?)').run(unitSetId, owner, new Date().toISOString());
        return { unitSetId, owner, reencryptingVp: undefined };
      })
      .immediate();
  }

  markReencrypting(unitSetId: string, owner: string, newVp: string): void {
    this.db.prepare('UPDATE claims SET reencrypting_vp = ? WHERE unit_set_id = ? AND owner = ?').run(newVp, unitSetId, owner);
  }

  release(unitSetId: string, owner: string): void {
    this.db.prepare('DELETE FROM claims WHERE unit_set_id = ? AND owner = ?').run(unitSetId, owner);
  }

  close(): void {
    this.db.close();
  }
}
