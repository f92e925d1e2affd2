import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { createWorkerProbe } from '../activities/worker-probe';
import { freePort, keyops } from './helpers/child-process';
import { createTestWorker, testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

const noStackTrace = (text: string) => assert.doesNotMatch(text, /^\s+at .+\(.+:\d+:\d+\)$/m, `stack trace in:\n${text}`);

describe('keyops CLI as a child process', () => {
  const suite = useSuiteFixture('cli');
  const server = () => ({ TEMPORAL_ADDRESS: testServerAddress(), TEMPORAL_NAMESPACE: 'default' });

  it('--help lists the commands, the connection options and the exit codes', async () => {
    const r = await keyops(['--help']);
    assert.equal(r.code, 0);
    for (const text of ['ping', 'version', '--address', '--namespace', '--profile', '--json', 'Exit codes', './temporal-dev.sh']) {
      assert.ok(r.stdout.includes(text), `--help lacks ${text}:\n${r.stdout}`);
    }
  });

  it('version --json reports keyops and SDK versions', async () => {
    const r = await keyops(['version', '--json']);
    assert.equal(r.code, 0);
    const v = JSON.parse(r.stdout) as Record<string, string>;
    assert.match(v.keyops ?? '', /^\d+\.\d+\.\d+/);
    assert.equal(v.temporalSdk, '1.24.0');
    assert.equal(v.node, process.version);
  });

  it('ping reports the server version, namespace and the workers polling the queue', async () => {
    const taskQueue = uniqueTaskQueue('cli-ping');
    const worker = await createTestWorker(suite.env, { taskQueue, activities: { probeWorker: createWorkerProbe({ dataDir: suite.dir, keyopsVersion: 'test' }) } });
    await worker.runUntil(async () => {
      const r = await keyops(['ping', '--json', '--task-queue', taskQueue, '--workflow'], server());
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout) as {
        address: string;
        namespace: string;
        serverVersion: string;
        workers: { identity: string }[];
        selfCheck: { healthy: boolean; worker: { pid: number; dataDir: string } };
      };
      assert.equal(out.address, testServerAddress());
      assert.equal(out.namespace, 'default');
      assert.match(out.serverVersion, /^\d+\.\d+\.\d+/);
      assert.ok(out.workers.some((w) => w.identity === `${process.pid}@${hostname()}`), JSON.stringify(out.workers));
      assert.equal(out.selfCheck.healthy, true);
      assert.equal(out.selfCheck.worker.pid, process.pid);
      assert.equal(out.selfCheck.worker.dataDir, suite.dir);
    });
  });

  it('ping in text form says when no worker polls', async () => {
    const r = await keyops(['ping', '--task-queue', uniqueTaskQueue('nobody')], server());
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^Temporal \d+\.\d+\.\d+ at .+, namespace "default"$/m);
    assert.match(r.stdout, /no worker polling task queue/);
  });

  it('ping --workflow without a worker fails with a hint after its timeout', async () => {
    const r = await keyops(['ping', '--workflow', '--timeout', '2', '--task-queue', uniqueTaskQueue('no-worker')], server());
    assert.equal(r.code, 1);
    assert.match(r.stderr, /no worker completed the self-check within 2s/);
    assert.match(r.stderr, /hint: start a worker/);
    noStackTrace(r.stderr);
  });

  it('an unreachable server gives one clear line, the ./temporal-dev.sh hint and exit code 3', async () => {
    const port = await freePort();
    const r = await keyops(['ping'], { TEMPORAL_ADDRESS: `127.0.0.1:${port}` });
    assert.equal(r.code, 3);
    assert.equal(r.stdout, '');
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 2, r.stderr);
    assert.match(lines[0]!, new RegExp(`^keyops: cannot reach Temporal at 127\\.0\\.0\\.1:${port}`));
    assert.match(lines[1]!, /^hint: .*\.\/temporal-dev\.sh/);
    noStackTrace(r.stderr);
  });

  it('an unknown namespace is bad input (exit 2) and names the namespace', async () => {
    const r = await keyops(['ping', '--namespace', 'no-such-namespace'], { TEMPORAL_ADDRESS: testServerAddress() });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /namespace "no-such-namespace" does not exist/);
    noStackTrace(r.stderr);
  });

  it('an unknown option or command is a usage error (exit 2)', async () => {
    const option = await keyops(['ping', '--bogus']);
    assert.equal(option.code, 2);
    assert.match(option.stderr, /unknown option '--bogus'/);
    const command = await keyops(['frobnicate']);
    assert.equal(command.code, 2);
    assert.match(command.stderr, /unknown command 'frobnicate'/);
  });

  it('a malformed --timeout is rejected before connecting', async () => {
    const r = await keyops(['ping', '--timeout', 'soon'], { TEMPORAL_ADDRESS: '127.0.0.1:1' });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--timeout must be a positive number of seconds, got "soon"/);
  });

  it('a malformed config file is bad input and never echoes its API key', async () => {
    const file = join(suite.dir, 'broken.toml');
    await writeFile(file, '[profile.default]\napi_key = "SECRET-KEY-123" x\n');
    const r = await keyops(['ping', '--config-file', file]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /cannot load the Temporal connection settings: Invalid TOML/);
    assert.doesNotMatch(r.stderr + r.stdout, /SECRET-KEY-123/);
    noStackTrace(r.stderr);
  });

  it('reads the connection from a Temporal config-file profile (envconfig)', async () => {
    const file = join(suite.dir, 'temporal.toml');
    await writeFile(file, `[profile.local]\naddress = "${testServerAddress()}"\nnamespace = "default"\n`);
    const r = await keyops(['ping', '--json', '--profile', 'local', '--config-file', file], { TEMPORAL_ADDRESS: '' });
    assert.equal(r.code, 0, r.stderr);
    const missing = await keyops(['ping', '--profile', 'nope', '--config-file', file], { TEMPORAL_ADDRESS: '' });
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /nope/);
    noStackTrace(missing.stderr);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { address: string }).address, testServerAddress());
  });
});
