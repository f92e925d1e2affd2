import assert from 'node:assert/strict';
import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { selfCheck } from '../workflows';
import { freePort, runToEnd } from './helpers/child-process';
import { WORKER, WorkerProcess, type LogLine } from './helpers/worker-process';
import { testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

describe('worker process', () => {
  const suite = useSuiteFixture('worker');

  it('polls its task queue, logs JSON through pino, serves Prometheus metrics and stops on SIGTERM when idle (draining work in flight: worker-shutdown.test.ts)', async () => {
    const taskQueue = uniqueTaskQueue('worker-process');
    const metricsAddress = `127.0.0.1:${await freePort()}`;
    const worker = new WorkerProcess({
      TEMPORAL_ADDRESS: testServerAddress(),
      TEMPORAL_NAMESPACE: 'default',
      KEYOPS_TASK_QUEUE: taskQueue,
      KEYOPS_DATA_DIR: suite.dir,
      KEYOPS_LOG_FORMAT: 'json',
      KEYOPS_METRICS_ADDRESS: metricsAddress,
    });
    try {
      const started = await worker.waitFor('worker started');
      assert.equal(started.taskQueue, taskQueue);
      assert.equal(started.dataDir, suite.dir);

      const result = await suite.client.workflow.execute(selfCheck, { taskQueue, workflowId: `self-check/${taskQueue}` });
      assert.equal(result.worker.pid, worker.child.pid, 'the spawned worker ran the activity');
      assert.equal(result.healthy, true);

      // The SDK reports metrics asynchronously: poll until the task-queue metrics appear.
      let metrics = '';
      for (let i = 0; i < 50 && !metrics.includes(`task_queue="${taskQueue}"`); i++) {
        metrics = await (await fetch(`http://${metricsAddress}/metrics`)).text();
        await new Promise((r) => setTimeout(r, 200));
      }
      assert.match(metrics, /^temporal_worker_task_slots_available\{/m);
      assert.ok(metrics.includes(`task_queue="${taskQueue}"`), 'metrics carry the task queue label');
      // SDK-component logs arrive through the same pino stream.
      assert.ok(worker.lines.some((l) => l.sdkComponent === 'worker'), 'SDK logs are routed through pino');

      worker.child.kill('SIGTERM');
      const [code] = (await once(worker.child, 'exit')) as [number | null];
      assert.equal(code, 0, worker.stderr);
      assert.ok(worker.lines.some((l) => l.msg === 'worker stopped'));
    } finally {
      if (worker.child.exitCode === null) worker.child.kill('SIGKILL');
    }
  });

  it('rejects bad configuration with the field and expected form, exit 2, no stack trace', async () => {
    const r = await runToEnd(process.execPath, WORKER, {
      env: { KEYOPS_METRICS_ADDRESS: 'localhost', KEYOPS_LOG_LEVEL: 'loud', KEYOPS_SHUTDOWN_GRACE_SECONDS: '-1' },
    });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /KEYOPS_METRICS_ADDRESS="localhost": expected host:port/);
    assert.match(r.stderr, /KEYOPS_LOG_LEVEL="loud": .*"trace"\|"debug"\|"info"\|"warn"\|"error"/);
    assert.match(r.stderr, /KEYOPS_SHUTDOWN_GRACE_SECONDS="-1": expected whole seconds/);
    assert.doesNotMatch(r.stderr, /^\s+at /m);
  });

  it('a malformed Temporal config file is one log line without the API key, exit 2', async () => {
    const file = join(suite.dir, 'broken.toml');
    await writeFile(file, '[profile.default]\napi_key = "SECRET-KEY-123" x\n');
    const r = await runToEnd(process.execPath, WORKER, {
      env: { TEMPORAL_CONFIG_FILE: file, KEYOPS_METRICS_ADDRESS: 'off', KEYOPS_LOG_FORMAT: 'json', KEYOPS_DATA_DIR: suite.dir },
    });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stdout, /cannot load the Temporal connection settings/);
    assert.doesNotMatch(r.stdout + r.stderr, /SECRET-KEY-123/);
    assert.doesNotMatch(r.stdout + r.stderr, /^\s+at /m);
  });

  it('a mistake in keyops.yaml is file:line:col: field: problem, without the secret, and the worker does not start', async () => {
    const file = join(suite.dir, 'keyops.yaml');
    await writeFile(file, 'kms:\n  instances:\n    bao:\n      type: vault-transit\n      address: http://127.0.0.1:8200\n      token: s.TOKEN-IN-THE-FILE\n');
    const r = await runToEnd(process.execPath, WORKER, {
      env: { KEYOPS_CONFIG: file, TEMPORAL_ADDRESS: testServerAddress(), KEYOPS_METRICS_ADDRESS: 'off', KEYOPS_LOG_FORMAT: 'json', KEYOPS_DATA_DIR: join(suite.dir, 'bad-config') },
    });
    assert.equal(r.code, 2, r.stderr);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as LogLine);
    assert.ok(
      lines.some((l) => l.msg === `${file}:6:14: kms.instances.bao.token: credentials are never written in the config file; use tokenFile or tokenEnv`),
      r.stdout,
    );
    assert.ok(!lines.some((l) => l.msg === 'worker started'));
    assert.doesNotMatch(r.stdout + r.stderr, /TOKEN-IN-THE-FILE/);
    assert.doesNotMatch(r.stdout + r.stderr, /^\s+at /m);
  });

  it('exits 3 with a clear log line when Temporal is unreachable', async () => {
    const r = await runToEnd(process.execPath, WORKER, {
      env: { TEMPORAL_ADDRESS: `127.0.0.1:${await freePort()}`, KEYOPS_METRICS_ADDRESS: 'off', KEYOPS_LOG_FORMAT: 'json', KEYOPS_DATA_DIR: suite.dir },
    });
    assert.equal(r.code, 3);
    const last = JSON.parse(r.stdout.trim().split('\n').pop()!) as LogLine;
    assert.match(last.msg, /cannot reach the Temporal server.*temporal-dev\.sh/);
  });

  it('says which setting to change when the metrics port is taken', async () => {
    const { createServer } = await import('node:net');
    const blocker = createServer().listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    const { port } = blocker.address() as { port: number };
    try {
      const r = await runToEnd(process.execPath, WORKER, {
        env: { TEMPORAL_ADDRESS: testServerAddress(), KEYOPS_METRICS_ADDRESS: `127.0.0.1:${port}`, KEYOPS_LOG_FORMAT: 'json', KEYOPS_DATA_DIR: suite.dir },
      });
      assert.equal(r.code, 2);
      assert.match(r.stdout, /KEYOPS_METRICS_ADDRESS/);
      assert.match(r.stdout, /Address already in use/);
    } finally {
      blocker.close();
    }
  });
});
