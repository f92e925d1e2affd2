import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TkeProcessRunner } from '../activities/crypto-units/tke-cli';
import { ProcessCommandRunner } from '../activities/engines/process-command-runner';

const SECRETS = {
  KEYOPS_KMS_MASTER_SECRET: 'bWFzdGVyIHNlY3JldCBvZiB0aGUgbG9jYWwgS01TISEhIQ==',
  KEYOPS_BACKUP_KEY_PASSPHRASE: 'correct horse battery staple',
  TEMPORAL_API_KEY: 'temporal-cloud-api-key-value',
};

describe('child processes (db2, ibmcloud tke) get a minimal environment and a time limit', () => {
  it('never see the KMS master secret, the backup-key passphrase or the Temporal API key; do see PATH and Db2 settings', async () => {
    const saved = { ...process.env };
    Object.assign(process.env, SECRETS, { DB2INSTANCE: 'db2inst1', UNRELATED_TOKEN: 'x' });
    try {
      const printEnv = ['-e', 'process.stdout.write(JSON.stringify(process.env))'];
      for (const runner of [new ProcessCommandRunner(), new TkeProcessRunner()]) {
        const result = await runner.run(process.execPath, printEnv, { env: { KEYOPS_SNEAKED: 'no', IBMCLOUD_HOME: '/opt/ibm' } });
        assert.equal(result.exitCode, 0, result.stderr);
        const env = JSON.parse(result.stdout) as Record<string, string>;
        for (const [name, value] of Object.entries(SECRETS)) {
          assert.equal(env[name], undefined, `${name} reached the child`);
          assert.ok(!result.stdout.includes(value));
        }
        assert.equal(env.KEYOPS_SNEAKED, undefined, 'not even when a caller passes it');
        assert.equal(env.UNRELATED_TOKEN, undefined, 'only what the tools need');
        assert.equal(env.PATH, process.env.PATH);
        assert.equal(env.DB2INSTANCE, 'db2inst1');
        assert.equal(env.IBMCLOUD_HOME, '/opt/ibm');
      }
    } finally {
      for (const name of Object.keys(process.env)) if (!(name in saved)) delete process.env[name];
    }
  });

  it('ends a tool that outlives its time limit', async () => {
    for (const runner of [new ProcessCommandRunner(), new TkeProcessRunner()]) {
      await assert.rejects(runner.run(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { timeoutMs: 300 }), /did not finish within 300 ms and was stopped \(SIGTERM\)/);
    }
  });
});
