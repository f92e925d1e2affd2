import { proxyActivities, setCurrentDetails, workflowInfo } from '@temporalio/workflow';
import type { Activities, WorkerProbeReport } from '../activities';

const { probeWorker } = proxyActivities<Activities>({
  startToCloseTimeout: '30 seconds',
  // A self-check that hangs behind retries tells the operator nothing: fail fast instead.
  retry: { maximumAttempts: 3, initialInterval: '1 second' },
  summary: 'probe the worker and its data directory',
});

export interface SelfCheckResult {
  workflowId: string;
  worker: WorkerProbeReport;
  healthy: boolean;
}

/**
 * End-to-end check of the stack: the server accepted a workflow, a worker on the task queue ran
 * it, and that worker can write its data directory. `keyops ping --workflow` starts it.
 */
export async function selfCheck(): Promise<SelfCheckResult> {
  setCurrentDetails('Waiting for a worker to run the probe activity');
  const worker = await probeWorker();
  const healthy = worker.dataDirWritable;
  setCurrentDetails(
    healthy
      ? `Worker ${worker.hostname} (pid ${worker.pid}) is healthy; data directory \`${worker.dataDir}\` is writable`
      : `Worker ${worker.hostname} (pid ${worker.pid}) cannot write \`${worker.dataDir}\`: ${worker.dataDirError ?? 'unknown error'}`,
  );
  return { workflowId: workflowInfo().workflowId, worker, healthy };
}
