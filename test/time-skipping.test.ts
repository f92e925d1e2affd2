import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { createActivities } from '../activities';
import { selfCheck } from '../workflows';
import { createTestWorker, createTimeSkippingEnv, uniqueTaskQueue } from './helpers/temporal';

/**
 * The harness later issues rely on to test hour-long waits (the 6-hour bounded rewrap wait,
 * hourly watchers) without waiting: Temporal's Java test server from Maven Central.
 */
describe('time-skipping test environment', () => {
  let env: TestWorkflowEnvironment;
  let dataDir: string;

  before(async () => {
    env = await createTimeSkippingEnv();
    dataDir = await mkdtemp(join(tmpdir(), 'keyops-time-skipping-'));
  });
  after(async () => {
    await env?.teardown();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('skips six hours of server time in seconds of wall time', async () => {
    assert.equal(env.supportsTimeSkipping, true);
    const serverBefore = await env.currentTimeMs();
    const wallBefore = Date.now();
    await env.sleep('6 hours');
    const skippedMs = (await env.currentTimeMs()) - serverBefore;
    assert.ok(skippedMs >= 6 * 3600_000, `server clock advanced only ${skippedMs} ms`);
    assert.ok(Date.now() - wallBefore < 60_000, 'six hours took a minute or more of wall time');
  });

  it('runs the project workflows from the shared bundle', async () => {
    const taskQueue = uniqueTaskQueue('time-skipping');
    const worker = await createTestWorker(env, { taskQueue, activities: createActivities({ dataDir, keyopsVersion: 'test' }) });
    const result = await worker.runUntil(env.client.workflow.execute(selfCheck, { taskQueue, workflowId: `self-check/${taskQueue}` }));
    assert.equal(result.healthy, true);
  });
});
