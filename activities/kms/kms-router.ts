import type { BatchResult, KeyManagementService, KeyMetadata, RewrapResult, RotateResult, RotationPolicy, UnwrapResult, WrapResult } from './key-management-service';
import { splitKeyId } from './key-id';
import { KmsError } from './kms-error';
import { ThrottledBatch } from './throttled-batch';

/** The instance bare key ids (UUIDs without `<instance>:`) belong to: keys created before instances existed. */
export const LOCAL_INSTANCE = 'local';

/**
 * The KMS port over several KMS instances (keyops.yaml): a key id says which instance holds the
 * key (`bao:orders`; a bare UUID is the local KMS's), and every call goes to that instance with
 * the instance's own id. Workflows, the registry and the catalog only ever see qualified ids.
 */
export class KmsRouter implements KeyManagementService {
  constructor(
    private readonly instances: ReadonlyMap<string, KeyManagementService>,
    /** Where `createKey` puts a key when no instance is named. */
    readonly defaultInstance: string,
  ) {
    if (!instances.has(defaultInstance)) throw new Error(`the default KMS instance ${defaultInstance} is not configured`);
  }

  /** The configured instance names, for `keyops doctor` and error messages. */
  get names(): string[] {
    return [...this.instances.keys()];
  }

  private route(keyId: string): { kms: KeyManagementService; id: string; instance: string } {
    const { instance = LOCAL_INSTANCE, id } = splitKeyId(keyId);
    const kms = this.instances.get(instance);
    if (!kms) throw new KmsError('KEY_NOT_FOUND', `key ${keyId} names KMS instance "${instance}", which is not configured (configured: ${this.names.join(', ')})`, keyId);
    return { kms, id, instance };
  }

  private qualify(instance: string, id: string): string {
    return instance === LOCAL_INSTANCE ? id : `${instance}:${id}`;
  }

  /** Errors name the key as the caller knows it. */
  private async call<T>(keyId: string, fn: (kms: KeyManagementService, id: string, instance: string) => Promise<T>): Promise<T> {
    const { kms, id, instance } = this.route(keyId);
    try {
      return await fn(kms, id, instance);
    } catch (err) {
      if (err instanceof KmsError && err.keyId !== undefined && err.keyId !== keyId) {
        const named = new KmsError(err.code, err.message, keyId, err.retryAfter);
        // What a throttled batch had answered goes with it: its retry sends only the rest.
        throw err instanceof ThrottledBatch ? new ThrottledBatch(named, (err as ThrottledBatch<unknown>).answered) : named;
      }
      throw err;
    }
  }

  private withId(instance: string, meta: KeyMetadata): KeyMetadata {
    return { ...meta, keyId: this.qualify(instance, meta.keyId) };
  }

  async createKey(input: { name: string; kms?: string }): Promise<KeyMetadata> {
    const instance = input.kms ?? this.defaultInstance;
    const kms = this.instances.get(instance);
    if (!kms) throw new KmsError('INVALID_INPUT', `no KMS instance "${instance}" is configured (configured: ${this.names.join(', ')})`);
    return this.withId(instance, await kms.createKey({ name: input.name }));
  }

  getKeyMetadata(keyId: string): Promise<KeyMetadata> {
    return this.call(keyId, async (kms, id, instance) => this.withId(instance, await kms.getKeyMetadata(id)));
  }

  rotateKey(keyId: string, requestId: string): Promise<RotateResult> {
    return this.call(keyId, (kms, id) => kms.rotateKey(id, requestId));
  }

  wrap(keyId: string, dek?: Buffer): Promise<WrapResult> {
    return this.call(keyId, (kms, id) => kms.wrap(id, dek));
  }

  unwrap(keyId: string, wdek: Buffer): Promise<UnwrapResult> {
    return this.call(keyId, (kms, id) => kms.unwrap(id, wdek));
  }

  rewrap(keyId: string, wdek: Buffer): Promise<RewrapResult> {
    return this.call(keyId, (kms, id) => kms.rewrap(id, wdek));
  }

  unwrapBatch(keyId: string, wdeks: readonly Buffer[]): Promise<BatchResult<UnwrapResult>> {
    return this.call(keyId, (kms, id) => kms.unwrapBatch(id, wdeks));
  }

  rewrapBatch(keyId: string, wdeks: readonly Buffer[]): Promise<BatchResult<RewrapResult>> {
    return this.call(keyId, (kms, id) => kms.rewrapBatch(id, wdeks));
  }

  setRotationPolicy(keyId: string, policy: RotationPolicy | undefined): Promise<KeyMetadata> {
    return this.call(keyId, async (kms, id, instance) => this.withId(instance, await kms.setRotationPolicy(id, policy)));
  }

  /** A hint only: an unknown instance says nothing here and fails on the call itself, typed. */
  batchConcurrency(keyId: string): number | undefined {
    const { instance = LOCAL_INSTANCE, id } = splitKeyId(keyId);
    return this.instances.get(instance)?.batchConcurrency?.(id);
  }

  disableKey(keyId: string): Promise<void> {
    return this.call(keyId, (kms, id) => kms.disableKey(id));
  }

  enableKey(keyId: string): Promise<void> {
    return this.call(keyId, (kms, id) => kms.enableKey(id));
  }

  close(): void {
    for (const kms of this.instances.values()) (kms as { close?: () => void }).close?.();
  }
}
