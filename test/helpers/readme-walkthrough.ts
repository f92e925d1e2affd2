import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { ROOT, freePort, runToEnd } from './child-process';

/** The command lines of the README's `<!-- NAME -->` sh block, comments cut. */
export function readmeBlock(name: string): string[] {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const block = new RegExp(`<!-- ${name} -->\\n\`\`\`sh\\n([\\s\\S]*?)\`\`\``).exec(readme)?.[1] ?? '';
  return block
    .split('\n')
    .map((line) => line.replace(/\s+#\s.*$/, '').trim())
    .filter(Boolean);
}

async function portFree(port: number): Promise<boolean> {
  const server = createServer();
  const bound = await new Promise<boolean>((resolve) => {
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => resolve(true));
  });
  if (bound) await new Promise((resolve) => server.close(resolve));
  return bound;
}

/** A port for OpenBao, whose neighbour is free too: it also listens on PORT+1 (its cluster port). */
export async function freeOpenBaoPort(): Promise<number> {
  let port = await freePort();
  while (!(await portFree(port + 1))) port = await freePort();
  return port;
}

export interface ExpectedOutcome {
  command: RegExp;
  /** What the command must print (stdout and stderr together) and exit 0 with. */
  shows: RegExp;
  /** Tried again every second until then (ms): for what the stack finishes in the background. */
  within?: number;
}

/**
 * Runs README commands as a reader would (bash, one after another) and checks each against the
 * outcome listed for it; a command with no listed outcome fails the test (the README grew).
 */
export async function runWalkthrough(commands: string[], expected: ExpectedOutcome[], env: NodeJS.ProcessEnv, before?: (command: string) => Promise<void>): Promise<void> {
  for (const command of commands) {
    await before?.(command);
    const outcome = expected.find((e) => e.command.test(command));
    assert.ok(outcome, `every walkthrough command has an expected outcome here: ${command}`);
    const deadline = Date.now() + (outcome.within ?? 0);
    for (;;) {
      const result = await runToEnd('bash', ['-c', command], { env, timeoutMs: 300_000 });
      const out = result.stdout + result.stderr;
      if (result.code === 0 && outcome.shows.test(out)) break;
      if (Date.now() > deadline) assert.fail(`"${command}" exited ${result.code} and did not show ${String(outcome.shows)}:\n${out}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}
