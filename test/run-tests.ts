/**
 * `npm test`: starts ONE real Temporal dev server (the cached CLI binary, through
 * TestWorkflowEnvironment.createLocal), bundles the workflows ONCE, then runs every
 * test/*.test.ts file in its own process against both. Files that need hours of workflow time
 * start their own time-skipping Java test server (test/time-skipping/). Usage: npm test [-- FILE...]
 *
 * After the last file, a key-material scan (test/helpers/key-material-scan.ts) searches every
 * workflow history and every captured log for the real keys and passphrases the tests used, and
 * fails the run on a find. KEYOPS_TEST_KEEP_SCAN=1 keeps what it read (a temporary directory).
 */
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { run } from 'node:test';
import { spec } from 'node:test/reporters';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { DefaultLogger, Runtime, bundleWorkflowCode } from '@temporalio/worker';
import { preloadModules, workflowsPath } from '../workers/workflow-bundle-options';
import { keyopsSearchAttributes } from '../workflows/search-attributes';
import { formatReport, scanSuite } from './helpers/key-material-scan';
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

/**
 * No key material in any history or log (issue 13, section 2): every history on the suite's
 * server and every one the test processes dumped, and every captured log, searched for every
 * secret the tests knew. A finding fails the run; the directory is then kept for a look.
 */
async function keyMaterialScan(scanDir: string, env: TestWorkflowEnvironment): Promise<boolean> {
  const started = Date.now();
  let report;
  try {
    report = await scanSuite(scanDir, env.client);
  } catch (err) {
    process.stdout.write(`\nkey-material scan failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n  its files are kept in ${scanDir}\n`);
    return false;
  }
  process.stdout.write(`\n${formatReport(report, (Date.now() - started) / 1000)}\n`);
  let notes: string[] = [];
  try {
    notes = readdirSync(join(scanDir, 'notes')).flatMap((f) => readFileSync(join(scanDir, 'notes', f), 'utf8').split('\n').filter(Boolean));
  } catch {
    // no notes
  }
  if (notes.length) process.stdout.write(`  ${notes.length} note(s) on what was not scanned:\n${notes.slice(0, 10).map((n) => `    ${n}`).join('\n')}\n`);
  if (report.findings.length > 0) {
    process.stdout.write(`  secrets, logs and dumped histories kept in ${scanDir}\n`);
    return false;
  }
  if (report.secrets === 0) {
    process.stdout.write('  no secret was recorded: the scan proved nothing\n');
  }
  if (process.env.KEYOPS_TEST_KEEP_SCAN) process.stdout.write(`  kept in ${scanDir} (KEYOPS_TEST_KEEP_SCAN)\n`);
  else rmSync(scanDir, { recursive: true, force: true });
  return true;
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
      workflowsPath,
      preloadModules,
      logger: new DefaultLogger('WARN'),
    });
    mkdirSync(CACHE, { recursive: true });
    const bundlePath = join(CACHE, 'workflow-bundle.js');
    writeFileSync(bundlePath, bundle.code);

    // Test processes leave the secrets they know, their workers' logs and private servers'
    // histories here, for the key-material scan after the last file (test/helpers/key-material.ts).
    const scanDir = mkdtempSync(join(tmpdir(), 'keyops-key-scan-'));

    // Test files run in child processes, which inherit this environment (and `--import tsx`).
    // The developer's own Temporal settings (a Cloud profile, an API key) must not leak in.
    for (const name of Object.keys(process.env)) if (name.startsWith('TEMPORAL_')) delete process.env[name];
    Object.assign(process.env, {
      [testEnvVars.secretsDir]: scanDir,
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
    const clean = await keyMaterialScan(scanDir, env);
    return failed === 0 && passed > 0 && clean ? 0 : 1;
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
