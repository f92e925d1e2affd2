/**
 * The local KMS's wrapped-DEK layout (format 1), 68 bytes:
 *
 *   offset  size  field
 *   0       3     magic "KOW"
 *   3       1     format version (1)
 *   4       4     root-key version, unsigned 32-bit big-endian
 *   8       12    AES-GCM IV
 *   20      16    AES-GCM authentication tag
 *   36      32    ciphertext of the 32-byte DEK
 *
 * AES-256-GCM under the root-key version's material, with the first 8 bytes (magic, format,
 * version) followed by the key id as additional authenticated data: a WDEK opens only under
 * the key and version that made it, and any flipped or missing byte fails authentication.
 * Every failure is a `KmsError('CIPHERTEXT_INVALID')`, never garbage.
 */
import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';
import { KmsError } from './kms-error';

export const WDEK_FORMAT = 1;
export const WDEK_MAGIC = Buffer.from([0x4b, 0x4f, 0x57, WDEK_FORMAT]); // "KOW" + format
export const DEK_LENGTH = 32;
export const ROOT_KEY_LENGTH = 32;
const HEADER_LENGTH = 8;
const IV_LENGTH = 12;
const TAG_LENGTH = 16;
const IV_OFFSET = HEADER_LENGTH;
const TAG_OFFSET = IV_OFFSET + IV_LENGTH;
const CT_OFFSET = TAG_OFFSET + TAG_LENGTH;
export const WDEK_LENGTH = CT_OFFSET + DEK_LENGTH;
const MAX_VERSION = 0xffff_ffff;

export interface WdekParts {
  keyVersion: number;
  iv: Buffer;
  tag: Buffer;
  ciphertext: Buffer;
}

function invalid(reason: string, keyId?: string): KmsError {
  return new KmsError('CIPHERTEXT_INVALID', `the WDEK is not valid${keyId ? ` for key ${keyId}` : ''}: ${reason}`, keyId);
}

function checkVersion(keyVersion: number): void {
  if (!Number.isInteger(keyVersion) || keyVersion < 1 || keyVersion > MAX_VERSION) {
    throw new KmsError('INVALID_INPUT', `root-key version must be an integer from 1 to ${MAX_VERSION}, got ${keyVersion}`);
  }
}

/** Lays out the parts; the IV, tag and ciphertext must have their fixed lengths. */
export function encodeWdek(parts: WdekParts): Buffer {
  checkVersion(parts.keyVersion);
  if (parts.iv.length !== IV_LENGTH || parts.tag.length !== TAG_LENGTH || parts.ciphertext.length !== DEK_LENGTH) {
    throw new KmsError('INVALID_INPUT', 'a WDEK needs a 12-byte IV, a 16-byte tag and a 32-byte ciphertext');
  }
  const out = Buffer.allocUnsafe(WDEK_LENGTH);
  WDEK_MAGIC.copy(out, 0);
  out.writeUInt32BE(parts.keyVersion, 4);
  parts.iv.copy(out, IV_OFFSET);
  parts.tag.copy(out, TAG_OFFSET);
  parts.ciphertext.copy(out, CT_OFFSET);
  return out;
}

function asBuffer(wdek: Uint8Array): Buffer {
  return Buffer.isBuffer(wdek) ? wdek : Buffer.from(wdek.buffer, wdek.byteOffset, wdek.byteLength);
}

/** Checks the layout (not the authenticity) and returns the root-key version it names. */
function checkLayout(wdek: Uint8Array, keyId: string | undefined): number {
  if (!(wdek instanceof Uint8Array)) throw invalid('it is not a byte buffer', keyId);
  if (wdek.length !== WDEK_LENGTH) {
    throw invalid(`it is ${wdek.length} bytes long, a format-${WDEK_FORMAT} WDEK is ${WDEK_LENGTH}`, keyId);
  }
  if (wdek[0] !== WDEK_MAGIC[0] || wdek[1] !== WDEK_MAGIC[1] || wdek[2] !== WDEK_MAGIC[2]) {
    throw invalid('it does not start with the local KMS magic bytes', keyId);
  }
  if (wdek[3] !== WDEK_FORMAT) throw invalid(`unknown WDEK format ${wdek[3]}`, keyId);
  const keyVersion = ((wdek[4]! << 24) >>> 0) + (wdek[5]! << 16) + (wdek[6]! << 8) + wdek[7]!;
  if (keyVersion < 1) throw invalid('it names root-key version 0', keyId);
  return keyVersion;
}

/** Splits a WDEK into views of its parts (no copies); checks the layout, not the authenticity. */
export function decodeWdek(wdek: Uint8Array, keyId?: string): WdekParts {
  const keyVersion = checkLayout(wdek, keyId);
  const buf = asBuffer(wdek);
  return {
    keyVersion,
    iv: buf.subarray(IV_OFFSET, TAG_OFFSET),
    tag: buf.subarray(TAG_OFFSET, CT_OFFSET),
    ciphertext: buf.subarray(CT_OFFSET, WDEK_LENGTH),
  };
}

/** The root-key version recorded in a WDEK (not authenticated until the WDEK is opened). */
export function wdekKeyVersion(wdek: Uint8Array, keyId?: string): number {
  return checkLayout(wdek, keyId);
}

/** AAD: header (magic, format, version) then the key id. */
function aad(head: Uint8Array, keyId: string): Buffer {
  const out = Buffer.allocUnsafe(HEADER_LENGTH + Buffer.byteLength(keyId, 'utf8'));
  out.set(head.subarray(0, HEADER_LENGTH), 0);
  out.write(keyId, HEADER_LENGTH, 'utf8');
  return out;
}

/** Random IVs drawn from a pool refilled in bulk: one getrandom call per 4096 wraps, not per wrap. */
const IV_POOL_SIZE = 4096;
let ivPool = Buffer.alloc(0);
let ivPoolOffset = 0;

function nextIv(target: Buffer): void {
  if (ivPoolOffset + IV_LENGTH > ivPool.length) {
    ivPool = randomFillSync(Buffer.allocUnsafe(IV_LENGTH * IV_POOL_SIZE));
    ivPoolOffset = 0;
  }
  ivPool.copy(target, 0, ivPoolOffset, ivPoolOffset + IV_LENGTH);
  ivPoolOffset += IV_LENGTH;
}

/** Wraps a 32-byte DEK under one root-key version's 32-byte material. */
export function sealWdek(rootKey: Buffer, keyId: string, keyVersion: number, dek: Uint8Array): Buffer {
  checkVersion(keyVersion);
  if (dek.length !== DEK_LENGTH) throw new KmsError('INVALID_INPUT', `a DEK must be ${DEK_LENGTH} bytes, got ${dek.length}`, keyId);
  const out = Buffer.allocUnsafe(WDEK_LENGTH);
  WDEK_MAGIC.copy(out, 0);
  out.writeUInt32BE(keyVersion, 4);
  const iv = out.subarray(IV_OFFSET, TAG_OFFSET);
  nextIv(iv);
  const cipher = createCipheriv('aes-256-gcm', rootKey, iv, { authTagLength: TAG_LENGTH });
  cipher.setAAD(aad(out, keyId));
  const ct = cipher.update(dek);
  const fin = cipher.final();
  if (ct.length + fin.length !== DEK_LENGTH) throw new Error('AES-GCM produced an unexpected ciphertext length');
  ct.copy(out, CT_OFFSET);
  fin.copy(out, CT_OFFSET + ct.length);
  cipher.getAuthTag().copy(out, TAG_OFFSET);
  return out;
}

/**
 * Unwraps a WDEK with the material of the version it names (`decodeWdek(wdek).keyVersion`).
 * Fails with CIPHERTEXT_INVALID when the bytes were altered or belong to another key or version.
 */
export function openWdek(rootKey: Buffer, keyId: string, wdek: Uint8Array): Buffer {
  const keyVersion = checkLayout(wdek, keyId);
  const buf = asBuffer(wdek);
  const decipher = createDecipheriv('aes-256-gcm', rootKey, buf.subarray(IV_OFFSET, TAG_OFFSET), { authTagLength: TAG_LENGTH });
  decipher.setAAD(aad(buf, keyId));
  decipher.setAuthTag(buf.subarray(TAG_OFFSET, CT_OFFSET));
  const head = decipher.update(buf.subarray(CT_OFFSET, WDEK_LENGTH));
  let tail: Buffer;
  try {
    tail = decipher.final();
  } catch {
    throw invalid(`authentication failed (altered, or not wrapped by version ${keyVersion} of this key)`, keyId);
  }
  return tail.length === 0 ? head : Buffer.concat([head, tail]);
}
