import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { asKeyId, splitKeyId } from '../activities/kms/key-id';
import { KmsError } from '../activities/kms/kms-error';
import { KmsRouter } from '../activities/kms/kms-router';
import { LocalKms } from '../activities/kms/local-kms';

const dir = mkdtempSync(join(tmpdir(), 'keyops-kms-router-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Two real local KMS stores standing in for two instances: the router only sees the port. */
const open = (name: string) => LocalKms.open({ path: join(dir, name, 'keys.sqlite'), masterSecret: randomBytes(32) });

describe('KmsRouter: key ids say which KMS instance holds the key', () => {
  it('creates in the named or default instance, routes every call by the id, and names the key as the caller knows it', async () => {
    const local = open('local');
    const other = open('other');
    const router = new KmsRouter(new Map([['local', local], ['other', other]]), 'local');
    const bare = await router.createKey({ name: 'on-local' });
    assert.match(bare.keyId, /^[0-9a-f-]{36}$/, 'a local key keeps its bare UUID');
    const remote = await router.createKey({ name: 'on-other', kms: 'other' });
    const { instance, id } = splitKeyId(remote.keyId);
    assert.deepEqual({ instance, name: remote.name }, { instance: 'other', name: 'on-other' });
    assert.equal((await other.getKeyMetadata(id)).name, 'on-other', 'the key lives in the other store');
    await assert.rejects(local.getKeyMetadata(id), (e: unknown) => e instanceof KmsError && e.code === 'KEY_NOT_FOUND', 'and not in the local one');

    const wrapped = await router.wrap(remote.keyId);
    assert.ok((await router.unwrap(remote.keyId, wrapped.wdek)).dek.equals(wrapped.dek));
    await router.rotateKey(remote.keyId, 'r1');
    const [moved] = await router.rewrapBatch(remote.keyId, [wrapped.wdek]);
    assert.ok(moved && !(moved instanceof KmsError) && moved.keyVersion === 2);
    assert.equal((await router.getKeyMetadata(remote.keyId)).keyId, remote.keyId, 'metadata carries the qualified id');
    assert.equal((await router.getKeyMetadata(bare.keyId)).currentVersion, 1, 'the local key was not touched');

    await assert.rejects(router.getKeyMetadata('nowhere:abc'), (e: unknown) => {
      assert.ok(e instanceof KmsError);
      assert.equal(e.code, 'KEY_NOT_FOUND');
      assert.equal(e.message, 'key nowhere:abc names KMS instance "nowhere", which is not configured (configured: local, other)');
      return true;
    });
    await assert.rejects(router.createKey({ name: 'x-key', kms: 'nowhere' }), /no KMS instance "nowhere" is configured \(configured: local, other\)/);
    await assert.rejects(router.disableKey('other:0f6b9b2e-4c1d-4a8e-9d3a-5b7c2e1f8a90'), (e: unknown) => e instanceof KmsError && e.keyId === 'other:0f6b9b2e-4c1d-4a8e-9d3a-5b7c2e1f8a90');
    router.close();
  });

  it('reads key ids as operators type them', () => {
    assert.equal(asKeyId(' 0F6B9B2E-4C1D-4A8E-9D3A-5B7C2E1F8A90 '), '0f6b9b2e-4c1d-4a8e-9d3a-5b7c2e1f8a90');
    assert.equal(asKeyId('bao:orders'), 'bao:orders');
    assert.equal(asKeyId('aws:0F6B9B2E-4C1D-4A8E-9D3A-5B7C2E1F8A90'), 'aws:0f6b9b2e-4c1d-4a8e-9d3a-5b7c2e1f8a90');
    assert.equal(asKeyId('local:0F6B9B2E-4C1D-4A8E-9D3A-5B7C2E1F8A90'), '0f6b9b2e-4c1d-4a8e-9d3a-5b7c2e1f8a90', 'one id per key: the embedded KMS keeps bare UUIDs');
    for (const name of ['demo', 'Bao:orders', 'bao:', ':orders', 'bao:or ders', 'local:not-a-uuid']) assert.equal(asKeyId(name), undefined, name);
  });
});
