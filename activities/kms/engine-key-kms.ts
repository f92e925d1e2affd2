import type { EngineKey } from '../engines/engine-key';
import { EngineError } from '../engines/engine-error';
import type { BatchResult, KeyManagementService, KeyMetadata, RewrapResult, RotateResult, UnwrapResult, WrapResult } from './key-management-service';
import { KmsError } from './kms-error';
import { ENGINE_KEY_INSTANCE, engineKeyId } from '../../workflows/root-key-messages';

export { ENGINE_KEY_INSTANCE, engineKeyId } from '../../workflows/root-key-messages';

/**
 * The keys database engines read themselves (engine-key.ts), as keys of a KMS instance named
 * `engine`: they have versions and rotate, so the root-key workflows, the watcher and the CLI
 * handle them unchanged, but they wrap nothing (the engine encrypts its pages with them itself).
 */
export class EngineKeyKms implements KeyManagementService {
  /** Keyed by database id: the id of the key within this instance. */
  constructor(private readonly keys: ReadonlyMap<string, EngineKey>) {}

  private key(id: string): EngineKey {
    const key = this.keys.get(id);
    if (!key) throw new KmsError('KEY_NOT_FOUND', `no database "${id}" with its own engine key is configured (databases: ${[...this.keys.keys()].join(', ') || 'none'})`, id);
    return key;
  }

  /** The engine's failures in the KMS port's terms, so callers retry exactly what passes. */
  private async call<T>(id: string, fn: (key: EngineKey) => Promise<T>): Promise<T> {
    const key = this.key(id);
    try {
      return await fn(key);
    } catch (err) {
      if (!(err instanceof EngineError)) throw err;
      // What passes (a store briefly unreachable, pages still moving) stays retryable.
      const code = err.retryable ? 'KMS_UNAVAILABLE' : err.code === 'PERMISSION_DENIED' ? 'KMS_AUTH_FAILED' : err.code === 'DATABASE_NOT_FOUND' ? 'KEY_NOT_FOUND' : 'INVALID_INPUT';
      throw new KmsError(code, err.message, id);
    }
  }

  /** A rejected promise, not a throw: callers chaining .catch() on the call still see it. */
  private refuse(what: string, id: string): Promise<never> {
    return Promise.reject(new KmsError('INVALID_INPUT', `key ${engineKeyId(id)} is a database engine's own key: it cannot ${what} (the engine encrypts its pages with it itself)`, id));
  }

  createKey(): Promise<KeyMetadata> {
    return Promise.reject(new KmsError('INVALID_INPUT', `keys of the "${ENGINE_KEY_INSTANCE}" instance are the database engines' own keys: they come from keyops.yaml's databases, not from "key create"`));
  }

  getKeyMetadata(id: string): Promise<KeyMetadata> {
    return this.call(id, async (key) => {
      const { current, versions } = await key.versions();
      if (current === 0) throw new KmsError('KEY_NOT_FOUND', `${key.description} has no version yet`, id);
      const latest = versions.find((v) => v.version === current);
      const first = versions[0];
      return {
        keyId: id,
        name: key.description,
        state: 'active',
        currentVersion: current,
        versions: versions.map((v) => ({ version: v.version, createdAt: v.createdAt })),
        createdAt: first?.createdAt ?? latest?.createdAt ?? new Date(0).toISOString(),
        lastRotateDate: current > 1 ? latest?.createdAt : undefined,
        rotationPolicy: undefined,
      };
    });
  }

  /**
   * Check-and-set on the version read just before: a retry, or a rotation somebody made
   * meanwhile, adds no second version. The caller (rotateToVersion) already checked the key is
   * one below its target.
   */
  rotateKey(id: string): Promise<RotateResult> {
    return this.call(id, async (key) => {
      const { current } = await key.versions();
      return key.rotate(current);
    });
  }

  wrap(id: string): Promise<WrapResult> {
    return this.refuse('wrap a key', id);
  }

  unwrap(id: string): Promise<UnwrapResult> {
    return this.refuse('unwrap a key', id);
  }

  rewrap(id: string): Promise<RewrapResult> {
    return this.refuse('rewrap a key', id);
  }

  unwrapBatch(id: string): Promise<BatchResult<UnwrapResult>> {
    return this.refuse('unwrap keys', id);
  }

  rewrapBatch(id: string): Promise<BatchResult<RewrapResult>> {
    return this.refuse('rewrap keys', id);
  }

  setRotationPolicy(id: string): Promise<KeyMetadata> {
    return this.refuse('have a rotation policy (schedule its rotation with keyops schedules instead)', id);
  }

  disableKey(id: string): Promise<void> {
    return this.refuse('be disabled through keyops', id);
  }

  enableKey(id: string): Promise<void> {
    return this.refuse('be enabled through keyops', id);
  }
}
