import Database from 'better-sqlite3-multiple-ciphers';

/** Opens a SQLCipher (v4) database keyed with the raw 32-byte DEK: no passphrase KDF. */
export function openKeyed(path: string, dek: Buffer, options: Database.Options = {}): Database.Database {
  const db = new Database(path, options);
  try {
    db.pragma(`cipher='sqlcipher'`);
    db.pragma('legacy=4');
    db.pragma(`key="x'${dek.toString('hex')}'"`);
    db.pragma('busy_timeout = 10000');
    // Reading the schema proves the key (a wrong one fails here with SQLITE_NOTADB) and rolls back
    // a crashed writer's hot journal.
    db.prepare('SELECT count(*) FROM sqlite_master').get();
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}
