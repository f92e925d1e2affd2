import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { type Page, chromium } from 'playwright-core';
import { ROOT, type Finished, runToEnd } from './helpers/child-process';
import { useDevStack } from './helpers/dev-stack';

const ARTIFACTS = join(ROOT, '.cache', 'test-artifacts');

/** The README's walkthrough: the command lines of every sh block after a `<!-- walkthrough -->` marker, and the UI queries. */
function walkthrough(): { commands: string[]; queries: { run: string; query: string }[] } {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const commands = [...readme.matchAll(/<!-- walkthrough -->\n```sh\n([\s\S]*?)```/g)].flatMap((m) =>
    m[1]!
      .split('\n')
      // A trailing comment explains the line; it is not part of the command.
      .map((line) => line.replace(/\s+#\s.*$/, '').trim())
      .filter(Boolean),
  );
  const table = /<!-- walkthrough-ui -->\n([\s\S]*?)\n\n/.exec(readme)?.[1] ?? '';
  const queries = [...table.matchAll(/^\| ([^|]+) \| `([^`]+)` \|$/gm)].map((m) => ({ run: m[1]!.trim(), query: m[2]! }));
  return { commands, queries };
}

/**
 * What each walkthrough command must show, by its words. Steps that report on a run in flight
 * are tried again for a while, as a reader typing the next command would be seconds later.
 */
const EXPECTED: { command: RegExp; shows: RegExp; within?: number }[] = [
  { command: /^\.\/temporal-dev\.sh up -d$/, shows: /keyops is up\.[\s\S]*Temporal Web UI +http:\/\/127\.0\.0\.1:\d+/ },
  { command: /^npx keyops key show demo$/, shows: /^key [0-9a-f-]{36}: active, version 1$/m },
  { command: /^npx keyops schedule list$/, shows: /nightly-backup\/demo {2}active {2}nightlyBackup[\s\S]*rotate-key\/[0-9a-f-]{36} {2}active {2}rotateRootKeyOnSchedule[\s\S]*watch-root-keys {2}active {2}watchRootKeys/ },
  { command: /^npx keyops key rotate demo --kms-only$/, shows: /is at version 2 in the KMS; its WDEKs stay on their version until a rewrap/ },
  { command: /^npx keyops backup run demo$/, shows: /^started backup\/demo\/\d{4}-\d\d-\d\d/m },
  { command: /^npx keyops runs --query/, shows: /nightlyBackup +backup\/demo\/\S+ +phase awaiting-rewrap/, within: 30_000 },
  { command: /^npx keyops rewrap status demo$/, shows: /version 2, WDEKs rewrapped to 1 \(behind[\s\S]*waiting for version 2: backup\/demo\//, within: 30_000 },
  { command: /^npx keyops key watch$/, shows: /started 1 rewrap\(s\): rewrap\/[0-9a-f-]{36}\/v2/ },
  { command: /^npx keyops backup list --database demo$/, shows: /^backup\/demo\/\S+ {2}good .* v2 .*verified 1000 rows {2}never drilled$/m, within: 60_000 },
  { command: /^npx keyops mk rotate default --wait$/, shows: /^mk-rotation\/default\/\S+: done \(checkpoint done\)$/m },
];

/** Waits until the page, or one of its frames (markdown is rendered in frames), shows `pattern`. */
async function shows(page: Page, pattern: RegExp, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const frame of page.frames()) {
      const text = await frame.locator('body').innerText({ timeout: 1000 }).catch(() => '');
      if (pattern.test(text.replace(/\s+/g, ' '))) return;
    }
    if (Date.now() > deadline) throw new Error(`the Web UI never showed ${String(pattern)}`);
    await page.waitForTimeout(500);
  }
}

/** What the run each UI query finds must show: its summary, and a line of its details and current details. */
const IN_THE_UI: Record<string, RegExp[]> = {
  'the rewrap the watcher started': [/Rewrap every WDEK of key [0-9a-f-]{36} to version 2 \(rotation detected by watchRootKeys\)/, /done key [0-9a-f-]{36} to version 2: \d{4} WDEKs rewrapped and verified/],
  'the backup that waited for it': [
    /Backup of database demo for \d{4}-\d\d-\d\d/,
    /Started by keyops backup run\. Backs up database demo encrypted under its backup key/,
    // The wait itself, among the run's events: the child that waited for the rewrap.
    /Wait for key [0-9a-f-]{36} to be rewrapped to version 2/,
    /done database demo, night \d{4}-\d\d-\d\d: \d+ bytes, key [0-9a-f-]{36} version 2, 1000 rows restored in the test/,
  ],
  'the master-key rotation': [
    /Master-key rotation of crypto-unit set default/,
    /Stages: pre-check, load a new master key, re-encrypt key storage, promote on every unit/,
    /done crypto-unit set default \(checkpoint done\): every unit.s current master key is [0-9a-f]{32}; \d+ of \d+ key-storage entries open under it/,
  ],
};

/**
 * Every workflow type in the list after the walkthrough: its operations, the key's entity, and
 * the look-up desk. No look-up type (describeRootKey, resolveRootKeys, listBackups,
 * listRootKeyVersions): the CLI no longer starts them.
 */
const WALKTHROUGH_RUN_TYPES = ['initDemo', 'rotateInKms', 'nightlyBackup', 'awaitRewrap', 'keyEntity', 'watchRootKeys', 'rotateRootKey', 'rotateMasterKey', 'lookupDesk'];

describe('README walkthrough, run as written', () => {
  const stack = useDevStack('walkthrough');

  it('starts the stack, rotates the demo key, shows the backup waiting for the rewrap, rotates the master key, and finds each run in the Web UI', async () => {
    const { commands, queries } = walkthrough();
    assert.ok(commands.length >= 8, `the README has a walkthrough (${commands.length} commands)`);
    const env = { ...stack.env, TEMPORAL_ADDRESS: `127.0.0.1:${stack.ports.grpc}` };
    let client: Client | undefined;
    for (const command of commands) {
      if (command.includes('--kms-only')) {
        // The stack's hourly watcher would do step 2's `key watch` itself if the hour struck in
        // between; a reader would not notice, the assertions would.
        client = new Client({ connection: await Connection.connect({ address: env.TEMPORAL_ADDRESS }) });
        await client.schedule.getHandle('watch-root-keys').pause('README walkthrough test: step 2 runs the watch by hand');
      }
      const expected = EXPECTED.find((e) => e.command.test(command));
      assert.ok(expected, `every walkthrough command has an expected outcome here: ${command}`);
      const deadline = Date.now() + (expected.within ?? 0);
      let result: Finished;
      for (;;) {
        result = await runToEnd('bash', ['-c', command], { env, timeoutMs: 240_000 });
        const out = result.stdout + result.stderr;
        if (result.code === 0 && expected.shows.test(out)) break;
        if (Date.now() > deadline) assert.fail(`"${command}" exited ${result.code} and did not show ${String(expected.shows)}:\n${out}`);
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
    assert.ok(client, 'the walkthrough rotates in the KMS only');

    // The default workflow list shows the operations the walkthrough started, and no run per
    // look-up (`key show`, `rewrap status`, `backup list`, key names): those are updates of the
    // one look-up desk.
    const listed: string[] = [];
    for await (const w of client.workflow.list()) listed.push(`${w.type} ${w.workflowId}`);
    const types = [...new Set(listed.map((l) => l.split(' ')[0]!))].sort();
    assert.deepEqual(types, [...WALKTHROUGH_RUN_TYPES].sort(), `the workflow list:\n${listed.sort().join('\n')}`);
    assert.equal(listed.filter((l) => l.startsWith('lookupDesk ')).length, 1, 'one look-up desk');

    assert.deepEqual(queries.map((q) => q.run), Object.keys(IN_THE_UI), 'the README lists a query for each run');
    const executablePath = execFileSync(join(ROOT, 'test', 'browser', 'chromium-path.sh'), { encoding: 'utf8' }).trim();
    const browser = await chromium.launch({ executablePath, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
    try {
      const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
      mkdirSync(ARTIFACTS, { recursive: true });
      for (const [i, { run, query }] of queries.entries()) {
        // Also on failure: the screenshot shows what the UI showed instead.
        const shot = () => page.screenshot({ path: join(ARTIFACTS, `walkthrough-${i + 1}.png`), fullPage: true });
        try {
          let workflowId: string | undefined;
          for await (const w of client.workflow.list({ query })) {
            workflowId ??= w.workflowId;
          }
          assert.ok(workflowId, `the query for ${run} finds a run: ${query}`);
          await page.goto(`http://127.0.0.1:${stack.ports.ui}/namespaces/default/workflows?query=${encodeURIComponent(query)}`);
          await page.getByRole('link', { name: workflowId }).first().click({ timeout: 60_000 });
          await page.getByText('User Metadata').first().click({ timeout: 60_000 });
          for (const pattern of IN_THE_UI[run]!) await shows(page, pattern);
        } finally {
          await shot();
        }
      }
    } finally {
      await browser.close();
      await client.connection.close();
    }
  });
});
