/** The one task queue every keyops worker polls; scaling out is more workers on it. */
export const TASK_QUEUE = 'keyops';

/**
 * Where CPU-bound chunk activities (rewrap, verify) run: each worker process takes one at a
 * time there, so chunks scheduled in parallel spread over processes (cores) instead of queueing
 * on one Node thread while another process idles.
 */
export const bulkTaskQueue = (taskQueue: string): string => `${taskQueue}-bulk`;
