import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { KeyopsConfigError, loadKeyopsConfig } from '../workers/keyops-config';

const dir = mkdtempSync(join(tmpdir(), 'keyops-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const write = (name: string, text: string) => {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
};

/** The problems a file is refused with (the test fails if it loads). */
const problemsOf = (file: string): string[] => {
  try {
    loadKeyopsConfig(file);
  } catch (err) {
    assert.ok(err instanceof KeyopsConfigError, String(err));
    return err.problems;
  }
  return assert.fail(`${file} loaded`);
};

describe('keyops.yaml (KEYOPS_CONFIG)', () => {
  it('no file: the embedded local KMS only', () => {
    const config = loadKeyopsConfig(undefined);
    assert.equal(config.defaultKms, 'local');
    assert.deepEqual([...config.kms], [['local', { type: 'local' }]]);
  });

  it('reads every instance type, with defaults, and resolves credential files against the file', () => {
    const file = write(
      'good.yaml',
      `kms:
  default: bao
  instances:
    local: { type: local }
    bao:
      type: vault-transit
      address: http://127.0.0.1:8200
      tokenFile: secrets/bao.token
    aws:
      type: aws-kms
      region: us-east-1
      endpoint: http://127.0.0.1:5000
    kp:
      type: key-protect
      endpoint: https://us-south.kms.cloud.ibm.com
      instanceId: 0f6b9b2e-4c1d-4a8e-9d3a-5b7c2e1f8a90
      apiKeyEnv: IBMCLOUD_API_KEY
`,
    );
    const config = loadKeyopsConfig(file);
    assert.equal(config.defaultKms, 'bao');
    assert.deepEqual([...config.kms.keys()], ['local', 'bao', 'aws', 'kp']);
    const bao = config.kms.get('bao');
    assert.equal(bao?.type, 'vault-transit');
    // The adapter's own defaults apply (mount); the token file is found beside the config file.
    const { address, tokenFile, mount } = bao?.type === 'vault-transit' ? bao.options : { address: '', tokenFile: '', mount: '' };
    assert.deepEqual({ address, tokenFile, mount }, { address: 'http://127.0.0.1:8200', tokenFile: join(dir, 'secrets', 'bao.token'), mount: 'transit' });
    const kp = config.kms.get('kp');
    assert.equal(kp?.type === 'key-protect' ? kp.options.iamEndpoint : undefined, 'https://iam.cloud.ibm.com');
    const aws = config.kms.get('aws');
    assert.equal(aws?.type === 'aws-kms' ? aws.options.endpoint : undefined, 'http://127.0.0.1:5000');
  });

  it('reports each mistake as file:line:col: field: problem', () => {
    const file = write(
      'bad.yaml',
      `kms:
  default: nowhere
  instances:
    bao:
      type: vault-transit
      address: not-a-url
      tokenFile: t
    aws:
      type: aws-kms
      region: Virginia
    kp:
      type: key-protect
      endpoint: https://kp.example
      instanceId: 0f6b9b2e-4c1d-4a8e-9d3a-5b7c2e1f8a90
    odd:
      type: hsm
`,
    );
    assert.deepEqual(problemsOf(file), [
      `${file}:6:16: kms.instances.bao.address: must be an http(s) URL such as https://vault.example:8200`,
      `${file}:10:15: kms.instances.aws.region: must be an AWS region such as eu-west-1`,
      `${file}:12:7: kms.instances.kp.apiKeyFile: give exactly one of apiKeyFile or apiKeyEnv`,
      `${file}:16:13: kms.instances.odd.type: type must be one of local, vault-transit, aws-kms, key-protect`,
    ]);
  });

  it('refuses the reserved instance name "engine" and a database whose rootKey no configured KMS holds', () => {
    const server = `    type: mariadb
    socket: /run/mysqld/mysqld.sock
    serverConfig: /etc/mysql/my.cnf
    keyStore: { address: "http://127.0.0.1:8200", tokenFile: t }`;
    const file = write(
      'databases.yaml',
      `kms:
  default: local
  instances:
    local: { type: local }
    engine: { type: local }
databases:
  shop:
${server}
    rootKey: bao:backups
  crm:
${server}
    rootKey: engine:shop
  ok:
${server}
    rootKey: 0f6b9b2e-4c1d-4a8e-9d3a-5b7c2e1f8a90
`,
    );
    assert.deepEqual(problemsOf(file), [
      `${file}:5:13: kms.instances.engine: the instance name "engine" is reserved for the database servers' own keys (engine:<database>): give this KMS another name`,
      `${file}:12:14: databases.shop.rootKey: rootKey "bao:backups" names KMS instance "bao", which kms.instances does not configure`,
      `${file}:18:14: databases.crm.rootKey: rootKey "engine:shop" is a database engine's own key, which wraps nothing: name a KMS key`,
    ]);
  });

  it('reads a Db2 database, and refuses a name Db2 cannot take and an unknown database type', () => {
    const good = write(
      'db2.yaml',
      `kms:
  instances:
    local: { type: local }
databases:
  prod:
    type: db2
    database: PRODDB
    rootKey: 0f6b9b2e-4c1d-4a8e-9d3a-5b7c2e1f8a90
    tools: { db2: /opt/ibm/db2/bin/db2 }
`,
    );
    assert.deepEqual(loadKeyopsConfig(good).databases.get('prod'), {
      type: 'db2',
      database: 'PRODDB',
      rootKey: '0f6b9b2e-4c1d-4a8e-9d3a-5b7c2e1f8a90',
      tools: { db2: '/opt/ibm/db2/bin/db2' },
    });
    const bad = write(
      'db2-bad.yaml',
      `kms:
  instances:
    local: { type: local }
databases:
  prod:
    type: db2
    database: PRODUCTION
    rootKey: 0f6b9b2e-4c1d-4a8e-9d3a-5b7c2e1f8a90
  pg:
    type: postgres
`,
    );
    assert.deepEqual(problemsOf(bad), [
      `${bad}:7:15: databases.prod.database: a Db2 database name is 1 to 8 letters, digits or _@#$, starting with a letter`,
      `${bad}:10:11: databases.pg.type: type must be one of mariadb, db2`,
    ]);
  });

  it('refuses a credential written inline, naming where it goes instead, and never echoes it', () => {
    const file = write(
      'inline.yaml',
      `kms:
  instances:
    bao:
      type: vault-transit
      address: http://127.0.0.1:8200
      token: s.SuperSecretRootToken
`,
    );
    const problems = problemsOf(file);
    assert.deepEqual(problems, [`${file}:6:14: kms.instances.bao.token: credentials are never written in the config file; use tokenFile or tokenEnv`]);
    assert.doesNotMatch(problems.join('\n'), /SuperSecret/);
    const inUrl = write('url.yaml', 'kms:\n  instances:\n    bao: { type: vault-transit, address: "http://user:pw@vault:8200", tokenEnv: VAULT_TOKEN }\n');
    assert.match(problemsOf(inUrl)[0]!, /:3:42: kms\.instances\.bao\.address: must carry no credentials/);
  });

  it('refuses YAML syntax errors, unknown fields, a missing default and an unreadable file with a position', () => {
    assert.match(problemsOf(write('syntax.yaml', 'kms:\n  instances: [\n'))[0]!, /syntax\.yaml:\d+:\d+: /);
    assert.deepEqual(problemsOf(write('unknown.yaml', 'kms:\n  instances:\n    local: { type: local, colour: blue }\n')), [
      `${join(dir, 'unknown.yaml')}:3:12: kms.instances.local: Unrecognized key: "colour"`,
    ]);
    assert.deepEqual(problemsOf(write('second-local.yaml', 'kms:\n  instances:\n    local: { type: local }\n    spare: { type: local }\n')), [
      `${join(dir, 'second-local.yaml')}:4:20: kms.instances.spare.type: type local is the embedded KMS of the data directory: only the instance named "local" can have it`,
    ]);
    assert.deepEqual(problemsOf(write('remote-local.yaml', 'kms:\n  instances:\n    local: { type: aws-kms, region: us-east-1 }\n')), [
      `${join(dir, 'remote-local.yaml')}:3:20: kms.instances.local.type: the instance named "local" is the embedded KMS (bare key ids route to it): give this KMS another name`,
    ]);
    const twoRemote = 'kms:\n  instances:\n    a: { type: aws-kms, region: us-east-1 }\n    b: { type: aws-kms, region: eu-west-1 }\n';
    assert.match(problemsOf(write('nodefault.yaml', twoRemote))[0]!, /nodefault\.yaml:2:3: kms: the default KMS "local" is not among the instances \(a, b\)/);
    assert.match(problemsOf(join(dir, 'missing.yaml'))[0]!, /missing\.yaml: cannot read KEYOPS_CONFIG: ENOENT/);
  });
});
