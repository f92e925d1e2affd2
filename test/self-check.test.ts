import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { temporal } from '@temporalio/proto';
import { createWorkerProbe } from '../activities/worker-probe';
import { selfCheck } from '../workflows';
import { recordHistory } from './helpers/record-history';
import { createTestWorker, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';

const EventType = temporal.api.enums.v1.EventType;

describe('selfCheck workflow on a real worker and dev server', () => {
  const suite = useSuiteFixture('self-check');

  it('runs the probe activity and records it in the workflow history', async () => {
    const taskQueue = uniqueTaskQueue('self-check');
    const dataDir = join(suite.dir, 'data');
    const worker = await createTestWorker(suite.env, {
      taskQueue,
      activities: { probeWorker: createWorkerProbe({ dataDir, keyopsVersion: 'test' }) },
    });
    const workflowId = `self-check/${taskQueue}`;
    const result = await worker.runUntil(suite.client.workflow.execute(selfCheck, { taskQueue, workflowId }));

    assert.equal(result.healthy, true);
    assert.equal(result.workflowId, workflowId);
    assert.equal(result.worker.pid, process.pid, 'the activity ran in this worker process');
    assert.equal(result.worker.dataDir, dataDir);

    const history = await suite.client.workflow.getHandle(workflowId).fetchHistory();
    const events = history.events ?? [];
    const types = events.map((e) => e.eventType);
    const scheduled = events.find((e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED);
    assert.equal(scheduled?.activityTaskScheduledEventAttributes?.activityType?.name, 'probeWorker');
    assert.equal(scheduled?.activityTaskScheduledEventAttributes?.taskQueue?.name, taskQueue);
    assert.ok(scheduled?.userMetadata?.summary, 'the activity carries a summary for the Web UI');
    const order = [
      EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
      EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
      EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED,
      EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
      EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    ].map((t) => types.indexOf(t));
    assert.ok(order.every((i, n) => i >= 0 && (n === 0 || i > order[n - 1]!)), `event order: ${types.join(',')}`);
    assert.equal(
      events.filter((e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED)[0]?.activityTaskStartedEventAttributes?.attempt,
      1,
      'the probe succeeded on its first attempt',
    );

    if (process.env.KEYOPS_RECORD_HISTORIES) await recordHistory(workflowId, 'self-check.json');
  });

  it('reports an unwritable data directory as unhealthy instead of failing the run', async () => {
    const taskQueue = uniqueTaskQueue('self-check-unwritable');
    const notADir = join(suite.dir, 'a-file');
    await writeFile(notADir, 'x');
    const worker = await createTestWorker(suite.env, {
      taskQueue,
      activities: { probeWorker: createWorkerProbe({ dataDir: notADir, keyopsVersion: 'test' }) },
    });
    const result = await worker.runUntil(
      suite.client.workflow.execute(selfCheck, { taskQueue, workflowId: `self-check/${taskQueue}` }),
    );
    assert.equal(result.healthy, false);
    assert.match(result.worker.dataDirError ?? '', /EEXIST|ENOTDIR/);
  });
});
