import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { useDevStack } from './helpers/dev-stack';
import { type ExpectedOutcome, freeOpenBaoPort, readmeBlock, runWalkthrough } from './helpers/readme-walkthrough';

const EXPECTED: ExpectedOutcome[] = [
  { command: /^KEYOPS_KMS=openbao \.\/temporal-dev\.sh up -d$/, shows: /keyops is up\.[\s\S]*OpenBao \(KMS bao\) +http:\/\/127\.0\.0\.1:\d+/ },
  { command: /^npx keyops key show demo$/, shows: /^key bao:demo: active, version 1$/m },
  { command: /^\.\/temporal-dev\.sh bao write -f transit\/keys\/demo\/rotate$/, shows: /latest_version +2/ },
  { command: /^npx keyops key watch$/, shows: /started 1 rewrap\(s\): rewrap\/bao:demo\/v2/ },
  { command: /^npx keyops rewrap status demo$/, shows: /key bao:demo: version 2, WDEKs rewrapped to 2 \(up to date\)/, within: 60_000 },
  { command: /^npx keyops backup run demo --wait$/, shows: /backup\/demo\/\S+: \d+ bytes at .*, root key bao:demo version 2/ },
  { command: /^\.\/temporal-dev\.sh down$/, shows: /stopped OpenBao/ },
];

/**
 * The README's OpenBao walkthrough, run as written on its own stack: the demo key lives in a
 * real OpenBao, a rotation made with the bao CLI is found by the watcher and rewrapped, and the
 * backup is taken under the new version.
 */
describe('README walkthrough with OpenBao, run as written', () => {
  const stack = useDevStack('walkthrough-openbao');

  it('starts the stack with OpenBao, finds a rotation made in OpenBao, rewraps and backs up under it', async () => {
    const commands = readmeBlock('walkthrough-openbao');
    assert.ok(commands.length >= 6, `the README has an OpenBao walkthrough (${commands.length} commands)`);
    const baoPort = await freeOpenBaoPort();
    const env = { ...stack.env, TEMPORAL_ADDRESS: `127.0.0.1:${stack.ports.grpc}`, KEYOPS_OPENBAO_PORT: String(baoPort) };
    await runWalkthrough(commands, EXPECTED, env, async (command) => {
      if (!command.startsWith('npx keyops key watch')) return;
      // The stack's hourly watcher must not beat the reader to it.
      const client = new Client({ connection: await Connection.connect({ address: env.TEMPORAL_ADDRESS }) });
      await client.schedule.getHandle('watch-root-keys').pause('README walkthrough test: the watch runs by hand');
      await client.connection.close();
    });
  });
});
