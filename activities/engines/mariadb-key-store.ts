import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { EngineError } from './engine-error';

/**
 * MariaDB's encryption keys as its `hashicorp_key_management` plugin reads them: a Vault/OpenBao
 * KV v2 mount where secret `<mount>/<id>` holds key id `<id>` (a number), its `data` field the key
 * in hex, and each KV version is a key version. MariaDB re-encrypts its pages by itself when a new
 * version appears; keyops only writes that version and watches the pages follow.
 *
 * The material is made here, from the CSPRNG, sent once in the write's body, and never returned,
 * logged or kept. Reads touch only the metadata endpoint: keyops never reads a key.
 */
export const mariadbKeyStoreOptionsSchema = z
  .object({
    /** http(s)://host:port of the Vault/OpenBao server. */
    address: z.url({ protocol: /^https?$/, error: 'an http:// or https:// address' }),
    /** The KV v2 mount the plugin reads (its vault-url ends in /v1/<mount>). */
    mount: z.string().regex(/^[A-Za-z0-9_.-]+(?:\/[A-Za-z0-9_.-]+)*$/, 'a mount path such as mariadb').default('mariadb'),
    /** A file holding the token; re-read on every call, so a renewed token is picked up. */
    tokenFile: z.string().min(1),
    /** Sent as X-Vault-Namespace. */
    namespace: z.string().min(1).max(512).optional(),
    requestTimeoutMs: z.number().int().min(100).max(600_000).default(10_000),
  })
  .strict();
export type MariaDbKeyStoreOptions = z.input<typeof mariadbKeyStoreOptionsSchema>;

export interface KvKeyVersion {
  version: number;
  createdAt: string;
  /** Destroyed versions are gone for good; deleted ones can be undeleted. */
  destroyed: boolean;
  deleted: boolean;
}

const metadataSchema = z.object({
  data: z.object({
    current_version: z.number().int().nonnegative(),
    versions: z.record(z.string().regex(/^\d+$/), z.object({ created_time: z.string(), deletion_time: z.string(), destroyed: z.boolean() })),
  }),
});
const writeSchema = z.object({ data: z.object({ version: z.number().int().positive() }) });

/** MariaDB key ids are unsigned 32-bit numbers; 1 is the default key. */
function checkKeyId(id: number): number {
  if (!Number.isInteger(id) || id < 1 || id > 0xffffffff) throw new EngineError('INVALID_CONFIGURATION', `MariaDB key id ${String(id)} must be a whole number from 1 to 4294967295`);
  return id;
}

export class MariaDbKeyStore {
  private readonly options: z.output<typeof mariadbKeyStoreOptionsSchema>;

  constructor(options: MariaDbKeyStoreOptions) {
    this.options = mariadbKeyStoreOptionsSchema.parse(options);
  }

  get where(): string {
    return `${this.options.address.replace(/\/+$/, '')}/v1/${this.options.mount}`;
  }

  /** The key's versions, oldest first; none when the key was never written. */
  async versions(keyId: number): Promise<{ current: number; versions: KvKeyVersion[] }> {
    const res = await this.call('GET', `metadata/${checkKeyId(keyId)}`, undefined, keyId);
    // A key never written answers 404 with no errors; a mount that does not exist, with one.
    if (res.status === 404 && /no handler for route/i.test(JSON.stringify(res.body))) {
      throw new EngineError('INVALID_CONFIGURATION', `there is no KV version 2 mount at ${this.where} (bao secrets enable -path=${this.options.mount} -version=2 kv)`);
    }
    if (res.status === 404) return { current: 0, versions: [] };
    const parsed = metadataSchema.safeParse(res.body);
    if (!parsed.success) throw new EngineError('ENGINE_COMMAND_FAILED', `${this.where}/metadata/${keyId} did not answer as a KV v2 mount does (is ${this.options.mount} a KV version 2 mount?)`);
    const versions = Object.entries(parsed.data.data.versions)
      .map(([v, meta]) => ({ version: Number(v), createdAt: meta.created_time, destroyed: meta.destroyed, deleted: meta.deletion_time !== '' }))
      .sort((a, b) => a.version - b.version);
    return { current: parsed.data.data.current_version, versions };
  }

  /**
   * Writes fresh key material as version `expected + 1`. Check-and-set on the current version:
   * a retry after a lost answer, or a rotation somebody else made meanwhile, is refused by the
   * server instead of adding a second version; the caller then reads where the key is.
   */
  async rotate(keyId: number, expected: number): Promise<{ version: number; rotated: boolean }> {
    checkKeyId(keyId);
    const material = randomBytes(32);
    try {
      const res = await this.call('POST', `data/${keyId}`, { options: { cas: expected }, data: { data: material.toString('hex') } }, keyId);
      if (res.status === 400 && /check-and-set/i.test(JSON.stringify(res.body))) return { version: (await this.versions(keyId)).current, rotated: false };
      const parsed = writeSchema.safeParse(res.body);
      if (!parsed.success) throw new EngineError('ENGINE_COMMAND_FAILED', `${this.where}/data/${keyId} answered a key write without its version (HTTP ${res.status})`);
      return { version: parsed.data.data.version, rotated: true };
    } finally {
      material.fill(0);
    }
  }

  /** Destroys versions for good (their material is erased; MariaDB can no longer read pages under them). */
  async destroyVersions(keyId: number, versions: number[]): Promise<void> {
    await this.call('POST', `destroy/${checkKeyId(keyId)}`, { versions }, keyId);
  }

  private async call(method: 'GET' | 'POST', path: string, body: unknown, keyId: number): Promise<{ status: number; body: unknown }> {
    let token: string;
    try {
      token = readFileSync(this.options.tokenFile, 'utf8').trim();
    } catch (err) {
      throw new EngineError('PERMISSION_DENIED', `cannot read the Vault token file ${this.options.tokenFile}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
    let res: Response;
    try {
      res = await fetch(`${this.where}/${path}`, {
        method,
        headers: { 'X-Vault-Token': token, ...(this.options.namespace ? { 'X-Vault-Namespace': this.options.namespace } : {}), ...(body ? { 'Content-Type': 'application/json' } : {}) },
        ...(body ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(this.options.requestTimeoutMs),
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).name;
      throw new EngineError('KEY_UNAVAILABLE', `MariaDB's key store at ${this.where} did not answer for key ${keyId} (${cause})`);
    }
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      // not JSON: kept as text for the message
    }
    if (res.status === 401 || res.status === 403) throw new EngineError('PERMISSION_DENIED', `MariaDB's key store at ${this.where} refused the token for key ${keyId} (HTTP ${res.status})`);
    if (res.status === 503 || res.status === 429 || res.status >= 500) {
      // 503: sealed or in standby; 429: a rate-limit quota. Both pass.
      throw new EngineError('KEY_UNAVAILABLE', `MariaDB's key store at ${this.where} is unavailable for key ${keyId} (HTTP ${res.status})`);
    }
    if (res.status >= 300 && res.status !== 404 && res.status !== 400) throw new EngineError('ENGINE_COMMAND_FAILED', `MariaDB's key store at ${this.where} answered HTTP ${res.status} for key ${keyId}`);
    return { status: res.status, body: parsed };
  }
}
