import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { type Page, chromium } from 'playwright-core';
import { ROOT, keyops, runToEnd } from './helpers/child-process';
import { DEV_SCRIPT, useDevStack } from './helpers/dev-stack';


/** Waits until the page, or one of its frames, shows text matching `pattern`. */
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
const ARTIFACTS = join(ROOT, '.cache', 'test-artifacts');

/**
 * The Temporal Web UI of the local stack, in Debian's chromium driven by playwright-core: an
 * operator finds a finished master-key rotation by a search-attribute query and reads what it
 * did from its summary and current details.
 */
describe('Temporal Web UI', () => {
  const stack = useDevStack('web-ui');

  it('finds a finished rotation by search attributes and shows its summary and current details', async () => {
    const up = await runToEnd(DEV_SCRIPT, ['up', '-d'], { env: stack.env, timeoutMs: 180_000 });
    assert.equal(up.code, 0, up.stderr);
    const rotated = await keyops(['mk', 'rotate', 'default', '--request', 'ui-test', '--wait', '--json'], { TEMPORAL_ADDRESS: `127.0.0.1:${stack.ports.grpc}` });
    assert.equal(rotated.code, 0, rotated.stderr);
    const workflowId = 'mk-rotation/default/ui-test';

    const executablePath = execFileSync(join(ROOT, 'test', 'browser', 'chromium-path.sh'), { encoding: 'utf8' }).trim();
    const browser = await chromium.launch({ executablePath, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
    try {
      const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
      mkdirSync(ARTIFACTS, { recursive: true });
      // Also on failure: the screenshot shows what the UI showed instead.
      const shot = () => page.screenshot({ path: join(ARTIFACTS, 'web-ui-mk-rotation.png'), fullPage: true });
      try {
        const query = 'WorkflowType = "rotateMasterKey" AND Phase = "done" AND Outcome = "succeeded"';
        await page.goto(`http://127.0.0.1:${stack.ports.ui}/namespaces/default/workflows?query=${encodeURIComponent(query)}`);
        await page.getByRole('link', { name: workflowId }).first().click({ timeout: 60_000 });
        await page.getByText('User Metadata').first().click({ timeout: 60_000 });
        // Summary and details are rendered from markdown, in frames: read every frame's text.
        await shows(page, /Master-key rotation of crypto-unit set default/);
        await shows(page, /Stages: pre-check, load a new master key, re-encrypt key storage, promote on every unit/);
        await shows(page, /done crypto-unit set default \(checkpoint done\): every unit.s current master key is [0-9a-f]{32}; 16 of 16 key-storage entries open under it/);
      } finally {
        await shot();
      }
    } finally {
      await browser.close();
    }
  });
});
