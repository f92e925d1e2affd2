/**
 * A database's key file, `<databaseId>.keys.json` beside `<databaseId>.db`: the database's WDEKs
 * (its DEK, a DEK a regeneration is moving to, its backup keys) wrapped under the KMS root key,
 * and the backup keys' states. Db2 keeps its wrapped data key inside the database; SQLCipher
 * encrypts every page of the file, so the embedded engine keeps it next to the file instead.
 *
 * It makes the database self-sufficient: with the file, its key file and the KMS, the database
 * opens even when the worker's WDEK registry and engine metadata are lost; both are rebuilt
 * from it. It holds only ciphertext (WDEKs) and ids, and is still written 0600, atomically
 * (temporary file, fsync, rename, directory fsync).
 */
import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { z } from 'zod';
import { EngineError } from './engine-error';

const FORMAT = 'keyops-database-keys/1';

const wdekSchema = z.object({
  /** The registry id, e.g. `db/<databaseId>/dek`. */
  id: z.string().min(1),
  keyId: z.string().min(1),
  keyVersion: z.number().int().positive(),
  wdek: z.string().min(1),
  owner: z.string(),
});

export const databaseKeyFileSchema = z.object({
  format: z.literal(FORMAT),
  databaseId: z.string().min(1),
  /** The root key that wraps every WDEK below. */
  keyId: z.string().min(1),
  createdAt: z.string().min(1),
  /** Set while the DEK is being regenerated (the WDEKs then include `dek-next`). */
  keyChange: z.string().nullable(),
  wdeks: z.array(wdekSchema),
  /**
   * WDEKs this file once held for an id and gave up for a different one without proof that both
   * wrap the same key (a registry restored from an older copy, say): kept, never dropped, so
   * that the key which opens the data is never lost to a wrong guess.
   */
  superseded: z.array(wdekSchema).default([]),
  backupKeys: z.array(z.object({ hash: z.string().regex(/^[0-9a-f]{64}$/), state: z.enum(['pending', 'active', 'retired']), createdAt: z.string() })),
});
export type DatabaseKeyFile = z.infer<typeof databaseKeyFileSchema>;
export type KeyFileWdek = z.infer<typeof wdekSchema>;

export const keyFileFormat = FORMAT;

/** The key file, or undefined when there is none; a damaged one is an error naming it. */
export function readKeyFile(path: string): DatabaseKeyFile | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let parsed;
  try {
    parsed = databaseKeyFileSchema.safeParse(JSON.parse(text));
  } catch {
    throw new EngineError('INVALID_CONFIGURATION', `database key file ${path} is not JSON`);
  }
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new EngineError('INVALID_CONFIGURATION', `database key file ${path} is malformed (${issue?.path.join('.') ?? '?'}: ${issue?.message ?? '?'})`);
  }
  return parsed.data;
}

/**
 * Replaces the key file atomically and durably. Synchronous on purpose: callers write it inside
 * the engine's metadata transaction, which is what serializes writers across processes.
 */
export function writeKeyFile(path: string, content: z.input<typeof databaseKeyFileSchema>): void {
  const temp = `${path}.partial-${randomBytes(4).toString('hex')}`;
  const fd = openSync(temp, 'wx', 0o600);
  try {
    writeFileSync(fd, `${JSON.stringify(content, null, 2)}\n`);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    rmSync(temp, { force: true });
    throw err;
  }
  closeSync(fd);
  try {
    renameSync(temp, path);
  } catch (err) {
    rmSync(temp, { force: true });
    throw err;
  }
  const dir = openSync(dirname(path), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}
