import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { ROOT, type Finished, freePort, runToEnd } from './helpers/child-process';
import { useDevStack } from './helpers/dev-stack';

async function portFree(port: number): Promise<boolean> {
  const server = createServer();
  const bound = await new Promise<boolean>((resolve) => {
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => resolve(true));
  });
  if (bound) await new Promise((resolve) => server.close(resolve));
  return bound;
}

/** The command lines of the README's `<!-- walkthrough-openbao -->` block. */
function walkthrough(): string[] {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const block = /<!-- walkthrough-openbao -->\n```sh\n([\s\S]*?)```/.exec(readme)?.[1] ?? '';
  return block
    .split('\n')
    .map((line) => line.replace(/\s+#\s.*$/, '').trim())
    .filter(Boolean);
}

const EXPECTED: { command: RegExp; shows: RegExp; within?: number }[] = [
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
    const commands = walkthrough();
    assert.ok(commands.length >= 6, `the README has an OpenBao walkthrough (${commands.length} commands)`);
    // OpenBao also listens on PORT+1 (its cluster port).
    let baoPort = await freePort();
    while (!(await portFree(baoPort + 1))) baoPort = await freePort();
    const env = { ...stack.env, TEMPORAL_ADDRESS: `127.0.0.1:${stack.ports.grpc}`, KEYOPS_OPENBAO_PORT: String(baoPort) };
    for (const command of commands) {
      if (command.startsWith('npx keyops key watch')) {
        // The stack's hourly watcher must not beat the reader to it.
        const client = new Client({ connection: await Connection.connect({ address: env.TEMPORAL_ADDRESS }) });
        await client.schedule.getHandle('watch-root-keys').pause('README walkthrough test: the watch runs by hand');
        await client.connection.close();
      }
      const expected = EXPECTED.find((e) => e.command.test(command));
      assert.ok(expected, `every walkthrough command has an expected outcome here: ${command}`);
      const deadline = Date.now() + (expected.within ?? 0);
      let result: Finished;
      for (;;) {
        result = await runToEnd('bash', ['-c', command], { env, timeoutMs: 300_000 });
        const out = result.stdout + result.stderr;
        if (result.code === 0 && expected.shows.test(out)) break;
        if (Date.now() > deadline) assert.fail(`"${command}" exited ${result.code} and did not show ${String(expected.shows)}:\n${out}`);
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  });
});
