import type { Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';

/** A live worker re-polls at least once a minute, so older pollers are remembered, not running. */
const LIVE_POLLER_WINDOW_MS = 90_000;

/** The workers polling `taskQueue` for `type` tasks now (`keyops ping`, `keyops doctor`). */
export async function livePollers(
  connection: Connection,
  namespace: string,
  taskQueue: string,
  type: temporal.api.enums.v1.TaskQueueType = temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
): Promise<{ identity: string; lastAccessTime: string | undefined }[]> {
  const response = await connection.workflowService.describeTaskQueue({
    namespace,
    taskQueue: { name: taskQueue, kind: temporal.api.enums.v1.TaskQueueKind.TASK_QUEUE_KIND_NORMAL },
    taskQueueType: type,
  });
  const now = Date.now();
  return (response.pollers ?? [])
    .map((p) => {
      const seconds = p.lastAccessTime?.seconds;
      return { identity: p.identity ?? 'unknown', at: seconds == null ? undefined : Number(seconds) * 1000 };
    })
    .filter((p) => p.at === undefined || now - p.at < LIVE_POLLER_WINDOW_MS)
    .map((p) => ({ identity: p.identity, lastAccessTime: p.at === undefined ? undefined : new Date(p.at).toISOString() }));
}
