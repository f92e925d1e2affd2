/**
 * What shows that the fleet test's faults hit work in flight: a worker's activity journal at the
 * moment it is killed, and the retries and timeouts the night's histories recorded.
 */
import { join } from 'node:path';
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { journalOf, readJournal } from '../../workers/activity-journal';
import { pool } from '../helpers/fleet';

/**
 * How many activities a worker process is running, from the journal it keeps for whoever
 * outlives it (workers/activity-journal.ts, written as each starts).
 */
export function activitiesInFlight(dataDir: string, pid: number): number {
  // No journal yet: nothing has run there.
  const file = journalOf(join(dataDir, 'workers'), pid);
  return file === undefined ? 0 : (readJournal(file)?.activities.length ?? 0);
}

const { EventType } = temporal.api.enums.v1;
const TALLIED = {
  [EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT]: 'workflow tasks timed out',
  [EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]: 'workflow tasks failed',
  [EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT]: 'activities timed out',
} as Record<number, string>;

/** Retries and timeouts in the histories of the given runs, for the timeline (not asserted: faults may land between tasks). */
export async function historyEffects(client: Client, runs: readonly { workflowId: string; runId?: string }[]): Promise<string> {
  const counts = new Map<string, number>();
  const add = (what: string) => counts.set(what, (counts.get(what) ?? 0) + 1);
  await pool(runs, 8, async ({ workflowId, runId }) => {
    for (const e of (await client.workflow.getHandle(workflowId, runId).fetchHistory()).events ?? []) {
      const tallied = TALLIED[e.eventType ?? 0];
      if (tallied) add(tallied);
      // A second attempt of an activity: its first failed (a dead worker's, failed by the journal sweep) or timed out.
      if ((e.activityTaskStartedEventAttributes?.attempt ?? 1) > 1) add('activity attempts after the first');
    }
  });
  return [...counts].map(([what, n]) => `${n} ${what}`).join(', ') || 'no retry or timeout';
}
