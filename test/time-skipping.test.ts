import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createWorkerProbe } from '../activities/worker-probe';
import { selfCheck } from '../workflows';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

/**
 * The harness later issues rely on to test hour-long waits (the 6-hour bounded rewrap wait,
 * hourly watchers) without waiting: Temporal's Java test server from Maven Central.
 */
describe('time-skipping test environment', () => {
  const suite = useSuiteFixture('time-skipping', 'time-skipping');

  it('skips six hours of server time in seconds of wall time', async () => {
    assert.equal(suite.env.supportsTimeSkipping, true);
    const serverBefore = await suite.env.currentTimeMs();
    const wallBefore = Date.now();
    await suite.env.sleep('6 hours');
    const skippedMs = (await suite.env.currentTimeMs()) - serverBefore;
    assert.ok(skippedMs >= 6 * 3600_000, `server clock advanced only ${skippedMs} ms`);
    assert.ok(Date.now() - wallBefore < 60_000, 'six hours took a minute or more of wall time');
  });

  it('runs the project workflows from the shared bundle', async () => {
    const taskQueue = uniqueTaskQueue('time-skipping');
    const worker = await createTestWorker(suite.env, { taskQueue, activities: { probeWorker: createWorkerProbe({ dataDir: suite.dir, keyopsVersion: 'test' }) } });
    const result = await worker.runUntil(suite.client.workflow.execute(selfCheck, { taskQueue, workflowId: `self-check/${taskQueue}` }));
    assert.equal(result.healthy, true);
  });
});
