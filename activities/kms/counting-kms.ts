import type { BatchResult, KeyManagementService, KeyMetadata, RewrapResult, RotateResult, RotationPolicy, UnwrapResult, WrapResult } from './key-management-service';

/** What is counted: one per request the KMS serves (a batch of N WDEKs counts N, as a KMS bills it). */
export type KmsOperation = 'create' | 'describe' | 'rotate' | 'wrap' | 'unwrap' | 'rewrap' | 'policy' | 'state';

/**
 * The KMS port, counting the calls that reach the KMS: the figure a KMS bills and rate-limits
 * (`keyops_kms_calls` on the worker's /metrics). A call counts when made, whether it succeeds.
 */
export class CountingKms implements KeyManagementService {
  constructor(
    private readonly kms: KeyManagementService & { close?(): void },
    private readonly count: (operation: KmsOperation, n: number) => void,
  ) {}

  private async counted<T>(operation: KmsOperation, n: number, call: () => Promise<T>): Promise<T> {
    this.count(operation, n);
    return call();
  }

  createKey(input: { name: string; kms?: string }): Promise<KeyMetadata> {
    return this.counted('create', 1, () => this.kms.createKey(input));
  }
  getKeyMetadata(keyId: string): Promise<KeyMetadata> {
    return this.counted('describe', 1, () => this.kms.getKeyMetadata(keyId));
  }
  rotateKey(keyId: string, requestId: string): Promise<RotateResult> {
    return this.counted('rotate', 1, () => this.kms.rotateKey(keyId, requestId));
  }
  wrap(keyId: string, dek?: Buffer): Promise<WrapResult> {
    return this.counted('wrap', 1, () => this.kms.wrap(keyId, dek));
  }
  unwrap(keyId: string, wdek: Buffer): Promise<UnwrapResult> {
    return this.counted('unwrap', 1, () => this.kms.unwrap(keyId, wdek));
  }
  rewrap(keyId: string, wdek: Buffer): Promise<RewrapResult> {
    return this.counted('rewrap', 1, () => this.kms.rewrap(keyId, wdek));
  }
  unwrapBatch(keyId: string, wdeks: readonly Buffer[]): Promise<BatchResult<UnwrapResult>> {
    return this.counted('unwrap', wdeks.length, () => this.kms.unwrapBatch(keyId, wdeks));
  }
  rewrapBatch(keyId: string, wdeks: readonly Buffer[]): Promise<BatchResult<RewrapResult>> {
    return this.counted('rewrap', wdeks.length, () => this.kms.rewrapBatch(keyId, wdeks));
  }
  setRotationPolicy(keyId: string, policy: RotationPolicy | undefined): Promise<KeyMetadata> {
    return this.counted('policy', 1, () => this.kms.setRotationPolicy(keyId, policy));
  }
  batchConcurrency(keyId: string): number | undefined {
    return this.kms.batchConcurrency?.(keyId);
  }
  disableKey(keyId: string): Promise<void> {
    return this.counted('state', 1, () => this.kms.disableKey(keyId));
  }
  enableKey(keyId: string): Promise<void> {
    return this.counted('state', 1, () => this.kms.enableKey(keyId));
  }
  close(): void {
    this.kms.close?.();
  }
}
