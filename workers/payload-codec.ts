import { type KeyObject, createCipheriv, createDecipheriv, createHmac, createSecretKey, randomBytes } from 'node:crypto';
import { METADATA_ENCODING_KEY, type Payload, type PayloadCodec } from '@temporalio/common';
import { temporal } from '@temporalio/proto';

/** The metadata Temporal's samples and codec servers use, so other tools recognise our payloads. */
export const ENCRYPTED_ENCODING = 'binary/encrypted';
export const METADATA_KEY_ID = 'encryption-key-id';

const KEY_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;

export class PayloadCodecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PayloadCodecError';
  }
}

/**
 * The id written beside every payload a key encrypted. Derived from the key itself, so a renamed
 * or moved key file keeps its id, and two different keys can never share one; one-way (HMAC),
 * so the id, which is stored in the clear, says nothing about the key.
 */
export function payloadKeyId(key: Buffer): string {
  return `pk-${createHmac('sha256', key).update('keyops payload key id v1').digest('hex').slice(0, 16)}`;
}

/**
 * AES-256-GCM over each whole serialized payload (its metadata included: the encoding reveals
 * the data's type). Encrypts with the first key; decrypts with whichever key the payload names,
 * so the codec key can rotate while older histories stay readable.
 */
export class AesGcmPayloadCodec implements PayloadCodec {
  // KeyObjects, not Buffers: a codec that ends up in a log line or an error shows no key bytes.
  private readonly keys = new Map<string, KeyObject>();
  readonly currentKeyId: string;

  /** `keys[0]` encrypts; every key decrypts. Each key is exactly 32 bytes. */
  constructor(keys: readonly Buffer[]) {
    const [current] = keys;
    if (!current) throw new PayloadCodecError('a payload codec needs at least one key');
    for (const key of keys) {
      if (key.length !== KEY_BYTES) throw new PayloadCodecError(`a payload key is exactly ${KEY_BYTES} bytes, got ${key.length}`);
      this.keys.set(payloadKeyId(key), createSecretKey(key));
    }
    this.currentKeyId = payloadKeyId(current);
  }

  /** Every key id this codec decrypts, the current one first. */
  get keyIds(): string[] {
    return [...this.keys.keys()];
  }

  encode(payloads: Payload[]): Promise<Payload[]> {
    return new Promise((resolve) => resolve(payloads.map((payload) => this.encryptOne(payload))));
  }

  decode(payloads: Payload[]): Promise<Payload[]> {
    // In an executor, so a refused payload rejects the promise instead of throwing at the caller.
    return new Promise((resolve) => resolve(payloads.map((payload) => this.decodeOne(payload))));
  }

  private encryptOne(payload: Payload): Payload {
    const keyId = this.currentKeyId;
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.keys.get(keyId)!, iv);
    cipher.setAAD(aad(keyId));
    const plaintext = temporal.api.common.v1.Payload.encode(payload).finish();
    const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return {
      metadata: { [METADATA_ENCODING_KEY]: Buffer.from(ENCRYPTED_ENCODING), [METADATA_KEY_ID]: Buffer.from(keyId) },
      data: Buffer.concat([iv, ciphertext, cipher.getAuthTag()]),
    };
  }

  private decodeOne(payload: Payload): Payload {
    const encoding = payload.metadata?.[METADATA_ENCODING_KEY];
    // Histories written before encryption was switched on, and payloads the server makes
    // itself, stay readable.
    if (!encoding || Buffer.from(encoding).toString() !== ENCRYPTED_ENCODING) return payload;
    const rawId = payload.metadata?.[METADATA_KEY_ID];
    if (!rawId) throw new PayloadCodecError(`an encrypted payload has no ${METADATA_KEY_ID} metadata: it was not written by this codec`);
    const keyId = Buffer.from(rawId).toString();
    const key = this.keys.get(keyId);
    if (!key) {
      throw new PayloadCodecError(
        `a payload is encrypted with key ${JSON.stringify(keyId)}, which is not among the keys of KEYOPS_PAYLOAD_KEY_FILE (${this.keyIds.join(', ')}): list the older key file after the current one`,
      );
    }
    const data = Buffer.from(payload.data ?? []);
    if (data.length < IV_BYTES + TAG_BYTES) throw new PayloadCodecError(`a payload encrypted with key ${keyId} is truncated (${data.length} bytes)`);
    const decipher = createDecipheriv('aes-256-gcm', key, data.subarray(0, IV_BYTES));
    decipher.setAAD(aad(keyId));
    decipher.setAuthTag(data.subarray(data.length - TAG_BYTES));
    let plaintext: Buffer;
    try {
      plaintext = Buffer.concat([decipher.update(data.subarray(IV_BYTES, data.length - TAG_BYTES)), decipher.final()]);
    } catch {
      throw new PayloadCodecError(`a payload encrypted with key ${keyId} fails authentication: it was altered after it was written`);
    }
    return temporal.api.common.v1.Payload.decode(plaintext);
  }
}

// Binds the ciphertext to the key id and the format: moving data under another id, or a later
// format reading this one, fails authentication instead of decrypting to garbage.
function aad(keyId: string): Buffer {
  return Buffer.from(`keyops payload v1 ${keyId}`);
}
