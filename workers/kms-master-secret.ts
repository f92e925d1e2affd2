import { randomBytes } from 'node:crypto';
import { existsSync, linkSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { WorkerConfig } from './config';

export class MasterSecretError extends Error {}

const STRICT_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function decode(text: string, from: string): Buffer {
  const trimmed = text.trim();
  // Node's decoder skips what is not base64: a typo would silently become a different secret.
  if (!STRICT_BASE64.test(trimmed)) {
    throw new MasterSecretError(`${from} is not base64 (only A-Z, a-z, 0-9, "+", "/", padded with "="); generate one with: openssl rand -base64 32`);
  }
  const secret = Buffer.from(trimmed, 'base64');
  if (secret.length < 32) {
    throw new MasterSecretError(`${from} must hold at least 32 bytes, base64-encoded (got ${secret.length}); generate one with: openssl rand -base64 32`);
  }
  return secret;
}

/**
 * The secret that encrypts the local KMS's root keys at rest: from KEYOPS_KMS_MASTER_SECRET or
 * KEYOPS_KMS_MASTER_SECRET_FILE; for the embedded demo, generated once into the data directory
 * (0600, written atomically). Losing it loses every root key, so the worker says where it is.
 */
export function loadKmsMasterSecret(config: WorkerConfig): { secret: Buffer; generatedAt?: string } {
  const source = config.kmsMasterSecret;
  if (source && 'base64' in source) return { secret: decode(source.base64, 'KEYOPS_KMS_MASTER_SECRET') };
  if (source) {
    let text: string;
    try {
      text = readFileSync(source.file, 'utf8');
    } catch (err) {
      throw new MasterSecretError(`cannot read KEYOPS_KMS_MASTER_SECRET_FILE ${source.file}: ${(err as Error).message}`);
    }
    return { secret: decode(text, `KEYOPS_KMS_MASTER_SECRET_FILE ${source.file}`) };
  }
  const file = join(config.dataDir, 'kms', 'master.secret');
  try {
    return { secret: decode(readFileSync(file, 'utf8'), file) };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  // A store without its secret: a new secret would not open a single key, and would hide the loss.
  const store = join(config.dataDir, 'kms', 'keys.sqlite');
  if (existsSync(store)) {
    throw new MasterSecretError(
      `the local KMS store ${store} exists but its master secret ${file} is missing: restore the secret from your backup (or set KEYOPS_KMS_MASTER_SECRET or KEYOPS_KMS_MASTER_SECRET_FILE); keyops will not generate a new one beside the old store`,
    );
  }
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  // Write aside, then link into place: link fails if another worker won the race, and then
  // both use the winner's secret. (rename would silently replace it.)
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${randomBytes(32).toString('base64')}\n`, { mode: 0o600 });
  let generated = true;
  try {
    linkSync(tmp, file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    generated = false;
  } finally {
    unlinkSync(tmp);
  }
  return { secret: decode(readFileSync(file, 'utf8'), file), ...(generated ? { generatedAt: file } : {}) };
}
