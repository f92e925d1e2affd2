import { readFileSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { z } from 'zod';
import { AesGcmPayloadCodec } from './payload-codec';

export const PAYLOAD_KEY_VARIABLE = 'KEYOPS_PAYLOAD_KEY_FILE';

export class PayloadKeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PayloadKeyError';
  }
}

const HOW_TO_MAKE = 'make one with: (umask 077; openssl rand -base64 32 > FILE)';
const STRICT_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * A colon-separated list of key files, like PATH: the first encrypts, all of them decrypt. One
 * variable (not a "current" and an "old keys" pair) so the worker, the CLI and the codec server
 * cannot be given halves that disagree.
 */
const payloadKeyFilesSchema = z
  .string()
  .transform((list) => list.split(':'))
  .pipe(z.array(z.string().min(1, 'an empty entry in the list (two colons in a row, or a colon at an end)')).min(1));

function readKey(file: string): Buffer {
  const where = `${PAYLOAD_KEY_VARIABLE}: ${file}`;
  let mode: number;
  try {
    const stat = statSync(file);
    if (!stat.isFile()) throw new PayloadKeyError(`${where} is not a regular file`);
    mode = stat.mode & 0o777;
  } catch (err) {
    if (err instanceof PayloadKeyError) throw err;
    throw new PayloadKeyError(`${where} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  // Checked before reading: a key others could read is refused even if it is otherwise fine.
  if ((mode & 0o077) !== 0) {
    throw new PayloadKeyError(`${where} has mode 0${mode.toString(8)}: others can read it; run chmod 600 ${file}`);
  }
  let content: Buffer;
  try {
    content = readFileSync(file);
  } catch (err) {
    throw new PayloadKeyError(`${where} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  // Exactly 32 bytes is the raw key; anything else must be base64 of 32 bytes (44 characters,
  // a trailing newline allowed). The two cannot be confused: base64 of 32 bytes is longer.
  if (content.length === 32) {
    // 32 random bytes are all printable with odds of about 1e-14: this is a typed password, or
    // a hex string of 16 bytes, not a key.
    if (/^[\x20-\x7e]*$/.test(content.toString('latin1'))) {
      content.fill(0);
      throw new PayloadKeyError(`${where} holds 32 printable characters, not 32 random bytes; ${HOW_TO_MAKE}`);
    }
    return content;
  }
  const text = content.toString('latin1').trim();
  const decoded = STRICT_BASE64.test(text) ? Buffer.from(text, 'base64') : undefined;
  content.fill(0);
  if (decoded?.length !== 32) {
    // The length, never the content: the file is meant to be a secret even when it is malformed.
    throw new PayloadKeyError(`${where} must hold exactly 32 bytes, raw or base64-encoded (it holds ${content.length} bytes that are neither); ${HOW_TO_MAKE}`);
  }
  return decoded;
}

/**
 * The payload codec that KEYOPS_PAYLOAD_KEY_FILE describes, or undefined when it is unset
 * (payload encryption is off by default). The worker, the keyops CLI and the codec server all
 * call this, so all three use the same keys from the same environment.
 */
export function loadPayloadCodec(env: NodeJS.ProcessEnv = process.env): AesGcmPayloadCodec | undefined {
  const value = env[PAYLOAD_KEY_VARIABLE];
  if (value === undefined || value === '') return undefined;
  const parsed = payloadKeyFilesSchema.safeParse(value);
  if (!parsed.success) {
    throw new PayloadKeyError(`${PAYLOAD_KEY_VARIABLE}=${JSON.stringify(value)}: ${parsed.error.issues.map((i) => i.message).join('; ')}`);
  }
  const keys = parsed.data.map((file) => readKey(resolve(file)));
  try {
    return new AesGcmPayloadCodec(keys);
  } finally {
    // The codec holds its own copies (KeyObjects); these buffers need not linger.
    for (const key of keys) key.fill(0);
  }
}
