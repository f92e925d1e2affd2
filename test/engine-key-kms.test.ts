import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { EngineKey } from '../activities/engines/engine-key';
import { EngineError } from '../activities/engines/engine-error';
import { EngineKeyKms } from '../activities/kms/engine-key-kms';
import { KmsError } from '../activities/kms/kms-error';

/** An engine key whose store answers from memory, or fails as told (the port's own test double). */
function key(fail?: EngineError): EngineKey {
  const versions = [
    { version: 1, createdAt: '2026-12-01T00:00:00Z', destroyed: false },
    { version: 2, createdAt: '2026-12-02T00:00:00Z', destroyed: false },
  ];
  const answer = <T>(value: T) => (fail ? Promise.reject(fail) : Promise.resolve(value));
  return {
    description: 'MariaDB key 1 in http://bao/v1/mariadb (database shop)',
    databaseId: 'shop',
    versions: () => answer({ current: versions.length, versions }),
    rotate: (expected) => answer({ version: expected + 1, rotated: true }),
    reencryption: () => answer({ latestVersion: 2, settled: true, oldestVersionNeeded: 1, spaces: 3, spacesBehind: 0, pages: undefined, lostKey: false }),
    destroyVersions: () => answer(undefined),
  };
}

const kmsError = async (p: Promise<unknown>) => {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err instanceof KmsError, String(err));
  return err;
};

describe("a database engine's own keys as the KMS instance 'engine'", () => {
  it('describes a key from its store: versions, the last rotation, its description as the name', async () => {
    const meta = await new EngineKeyKms(new Map([['shop', key()]])).getKeyMetadata('shop');
    assert.deepEqual([meta.currentVersion, meta.lastRotateDate, meta.name, meta.versions.map((v) => v.version)], [2, '2026-12-02T00:00:00Z', 'MariaDB key 1 in http://bao/v1/mariadb (database shop)', [1, 2]]);
  });

  it('keeps what passes retryable and names the rest: unavailable, busy, moving pages, a refused token, an unknown database', async () => {
    const cases: [EngineError, string, boolean][] = [
      [new EngineError('KEY_UNAVAILABLE', 'sealed'), 'KMS_UNAVAILABLE', true],
      [new EngineError('DATABASE_BUSY', 'socket'), 'KMS_UNAVAILABLE', true],
      [new EngineError('KEY_IN_TRANSITION', 'moving'), 'KMS_UNAVAILABLE', true],
      [new EngineError('PERMISSION_DENIED', 'token'), 'KMS_AUTH_FAILED', false],
      [new EngineError('INVALID_CONFIGURATION', 'no mount'), 'INVALID_INPUT', false],
    ];
    for (const [cause, code, retryable] of cases) {
      const err = await kmsError(new EngineKeyKms(new Map([['shop', key(cause)]])).getKeyMetadata('shop'));
      assert.deepEqual([err.code, err.retryable, err.message], [code, retryable, cause.message], cause.code);
    }
    assert.equal((await kmsError(new EngineKeyKms(new Map([['shop', key()]])).getKeyMetadata('crm'))).code, 'KEY_NOT_FOUND');
  });

  it('refuses to wrap, unwrap, rewrap, create or take a policy, as rejected promises naming the key', async () => {
    const kms = new EngineKeyKms(new Map([['shop', key()]]));
    for (const call of [() => kms.wrap('shop'), () => kms.unwrap('shop'), () => kms.rewrapBatch('shop'), () => kms.setRotationPolicy('shop'), () => kms.createKey()]) {
      const err = await kmsError(call());
      assert.equal(err.code, 'INVALID_INPUT');
      assert.match(err.message, /database engine|engine:shop/);
    }
  });
});
