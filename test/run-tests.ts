/**
 * `npm test`: starts ONE real Temporal dev server (the cached CLI binary, through
 * TestWorkflowEnvironment.createLocal), bundles the workflows ONCE, then runs every
 * test/*.test.ts file in its own process against both. Files that need hours of workflow time
 * start their own time-skipping Java test server (test/time-skipping/). Usage: npm test [-- FILE...]
 */
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { run } from 'node:test';
import { spec } from 'node:test/reporters';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { DefaultLogger, Runtime, bundleWorkflowCode } from '@temporalio/worker';
import { keyopsSearchAttributes } from '../workflows/search-attributes';
import { testEnvVars } from './helpers/test-env-vars';

const ROOT = resolve(__dirname, '..');
const CACHE = join(ROOT, '.cache', 'test');

function testFiles(args: string[]): string[] {
  if (args.length) return args.map((f) => resolve(f));
  return readdirSync(join(ROOT, 'test'))
    .filter((f) => f.endsWith('.test.ts'))
    .sort()
    .map((f) => join(ROOT, 'test', f));
}

async function startServer(cliPath: string): Promise<TestWorkflowEnvironment> {
  // createLocal gives the server 5 s to open its port; a loaded 2-core machine can miss that.
  for (let attempt = 1; ; attempt++) {
    try {
      return await TestWorkflowEnvironment.createLocal({
        server: {
          executable: { type: 'existing-path', path: cliPath },
          searchAttributes: [...keyopsSearchAttributes],
          log: { format: 'json', level: 'error' },
        },
      });
    } catch (err) {
      if (attempt >= 3) throw err;
      process.stderr.write(`test server did not start (attempt ${attempt}): ${String(err)}; retrying\n`);
    }
  }
}

async function main(): Promise<number> {
  const started = Date.now();
  const files = testFiles(process.argv.slice(2));
  const toolPath = (script: string, ...args: string[]) =>
    execFileSync(join(ROOT, script), args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
  // Both build once into .cache/bin and are reused afterwards.
  const cliPath = toolPath('temporal-dev.sh', 'cli-path');
  const timeSkippingServer = toolPath('test/time-skipping/server-path.sh');

  Runtime.install({ logger: new DefaultLogger('WARN') });
  const env = await startServer(cliPath);
  try {
    const bundle = await bundleWorkflowCode({
      workflowsPath: require.resolve('../workflows'),
      logger: new DefaultLogger('WARN'),
    });
    mkdirSync(CACHE, { recursive: true });
    const bundlePath = join(CACHE, 'workflow-bundle.js');
    writeFileSync(bundlePath, bundle.code);

    // Test files run in child processes, which inherit this environment (and `--import tsx`).
    // The developer's own Temporal settings (a Cloud profile, an API key) must not leak in.
    for (const name of Object.keys(process.env)) if (name.startsWith('TEMPORAL_')) delete process.env[name];
    Object.assign(process.env, {
      TEMPORAL_CONFIG_FILE: join(CACHE, 'no-profile.toml'),
      [testEnvVars.address]: env.address,
      [testEnvVars.workflowBundle]: bundlePath,
      [testEnvVars.temporalCli]: cliPath,
      [testEnvVars.timeSkippingServer]: timeSkippingServer,
    });
    let passed = 0;
    let failed = 0;
    const stream = run({ files, concurrency: 2, timeout: 10 * 60_000 });
    stream.on('test:pass', (t: { details: { type?: string } }) => {
      if (t.details.type !== 'suite') passed++;
    });
    stream.on('test:fail', (t: { details: { type?: string } }) => {
      if (t.details.type !== 'suite') failed++;
    });
    const reporter = new spec();
    stream.pipe(reporter).pipe(process.stdout, { end: false });
    await once(reporter, 'end');
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    process.stdout.write(`\n${files.length} test files in ${seconds}s\n${passed} passed, ${failed} failed\n`);
    return failed === 0 && passed > 0 ? 0 : 1;
  } finally {
    await env.teardown();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`test run failed to start: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
