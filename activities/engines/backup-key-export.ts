/**
 * A backup key's export file (SAP HANA's root-key backup, reference 004): the key material
 * encrypted under a passphrase (scrypt, then AES-256-GCM), with the database id and key hash
 * in the clear and authenticated. Written with mode 0600 and never over an existing file.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes, scryptSync } from 'node:crypto';
import { link, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { z } from 'zod';
import { EngineError } from './engine-error';

const FORMAT = 'keyops-backup-key/1';
// scrypt cost: ~100 ms here; an offline guess costs the same per try.
const SCRYPT = { N: 2 ** 17, r: 8, p: 1 };

const exportSchema = z.object({
  format: z.literal(FORMAT),
  databaseId: z.string(),
  hash: z.string().regex(/^[0-9a-f]{64}$/),
  // Read before anything is authenticated: bounded, so a crafted file cannot ask scrypt for
  // gigabytes of memory or hours of work (keyops writes N = 2^17, r = 8, p = 1).
  kdf: z.object({
    name: z.literal('scrypt'),
    N: z
      .number()
      .int()
      .min(2 ** 14)
      .max(2 ** 20)
      .refine((n) => (n & (n - 1)) === 0, 'a power of two'),
    r: z.number().int().min(1).max(16),
    p: z.number().int().min(1).max(4),
    salt: z.string().max(256),
  }).refine((k) => 128 * k.N * k.r <= 256 * 1024 * 1024, 'at most 256 MiB of scrypt memory'),
  iv: z.string(),
  tag: z.string(),
  ciphertext: z.string(),
});

const kek = (passphrase: string, salt: Buffer, k: { N: number; r: number; p: number }) =>
  scryptSync(passphrase.normalize('NFC'), salt, 32, { ...k, maxmem: 256 * k.N * k.r });
const aad = (databaseId: string, hash: string) => Buffer.from(`${FORMAT}\u0000${databaseId}\u0000${hash}`, 'utf8');

/** Writes the export; refuses (INVALID_CONFIGURATION) if `path` exists. */
export async function writeBackupKeyExport(path: string, databaseId: string, material: Buffer, passphrase: string): Promise<void> {
  const hash = createHash('sha256').update(material).digest('hex');
  const salt = randomBytes(16);
  const iv = randomBytes(12);
  const key = kek(passphrase, salt, SCRYPT);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(aad(databaseId, hash));
  const ciphertext = Buffer.concat([cipher.update(material), cipher.final()]);
  key.fill(0);
  const body = {
    format: FORMAT,
    databaseId,
    hash,
    kdf: { name: 'scrypt', ...SCRYPT, salt: salt.toString('base64') },
    iv: iv.toString('base64'),
    tag: cipher.getAuthTag().toString('base64'),
    ciphertext: ciphertext.toString('base64'),
  };
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const temp = `${path}.partial-${randomBytes(4).toString('hex')}`;
  await writeFile(temp, `${JSON.stringify(body, null, 2)}\n`, { mode: 0o600, flag: 'wx' });
  try {
    // link() fails if the name exists: the atomic "create, never replace".
    await link(temp, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new EngineError('INVALID_CONFIGURATION', `key backup file ${path} exists; keyops never overwrites a key backup: choose another path`);
    }
    throw err;
  } finally {
    await rm(temp, { force: true });
  }
}

/** Reads an export back with the passphrase: the key material, checked against its hash. */
export async function readBackupKeyExport(path: string, passphrase: string): Promise<{ databaseId: string; hash: string; material: Buffer }> {
  let parsed;
  try {
    parsed = exportSchema.parse(JSON.parse(await readFile(path, 'utf8')));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new EngineError('BACKUP_KEY_MISSING', `key backup file ${path} does not exist`);
    throw new EngineError('BACKUP_INVALID', `${path} is not a keyops key backup file`);
  }
  const key = kek(passphrase, Buffer.from(parsed.kdf.salt, 'base64'), parsed.kdf);
  const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(parsed.iv, 'base64'));
  decipher.setAAD(aad(parsed.databaseId, parsed.hash));
  decipher.setAuthTag(Buffer.from(parsed.tag, 'base64'));
  let material: Buffer;
  try {
    material = Buffer.concat([decipher.update(Buffer.from(parsed.ciphertext, 'base64')), decipher.final()]);
  } catch {
    throw new EngineError('PERMISSION_DENIED', `key backup file ${path} does not open with this passphrase (or was altered)`);
  } finally {
    key.fill(0);
  }
  if (createHash('sha256').update(material).digest('hex') !== parsed.hash) {
    throw new EngineError('BACKUP_INVALID', `key backup file ${path} holds a key that does not match its recorded hash`);
  }
  return { databaseId: parsed.databaseId, hash: parsed.hash, material };
}
