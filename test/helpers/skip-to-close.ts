import type { Client } from '@temporalio/client';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { waitUntil } from './wait-until';

/** What a run waits on, read from its history. */
interface RunState {
  closed: boolean;
  /** A workflow task, an activity or a child start is outstanding: the clock must not jump now. */
  busy: string | undefined;
  /** When each timer still pending fires, in server milliseconds. */
  timers: number[];
}

const ms = (t: { seconds?: unknown; nanos?: number | null } | null | undefined) => Number(t?.seconds ?? 0) * 1000 + Math.round((t?.nanos ?? 0) / 1e6);

async function stateOf(client: Client, workflowId: string): Promise<RunState> {
  const events = (await client.workflow.getHandle(workflowId).fetchHistory()).events ?? [];
  const open = { tasks: new Set<string>(), activities: new Set<string>(), children: new Set<string>() };
  const timers = new Map<string, number>();
  let closed = false;
  for (const e of events) {
    const id = String(e.eventId);
    if (e.workflowTaskScheduledEventAttributes) open.tasks.add(id);
    const taskEnd = e.workflowTaskCompletedEventAttributes ?? e.workflowTaskFailedEventAttributes ?? e.workflowTaskTimedOutEventAttributes;
    if (taskEnd) open.tasks.delete(String(taskEnd.scheduledEventId));
    if (e.activityTaskScheduledEventAttributes) open.activities.add(id);
    const activityEnd =
      e.activityTaskCompletedEventAttributes ?? e.activityTaskFailedEventAttributes ?? e.activityTaskTimedOutEventAttributes ?? e.activityTaskCanceledEventAttributes;
    if (activityEnd) open.activities.delete(String(activityEnd.scheduledEventId));
    if (e.startChildWorkflowExecutionInitiatedEventAttributes) open.children.add(id);
    const childStart = e.childWorkflowExecutionStartedEventAttributes ?? e.startChildWorkflowExecutionFailedEventAttributes;
    if (childStart) open.children.delete(String(childStart.initiatedEventId));
    const timer = e.timerStartedEventAttributes;
    if (timer) timers.set(id, ms(e.eventTime) + ms(timer.startToFireTimeout));
    const timerEnd = e.timerFiredEventAttributes ?? e.timerCanceledEventAttributes;
    if (timerEnd) timers.delete(String(timerEnd.startedEventId));
    closed ||= Boolean(
      e.workflowExecutionCompletedEventAttributes ??
        e.workflowExecutionFailedEventAttributes ??
        e.workflowExecutionTimedOutEventAttributes ??
        e.workflowExecutionCanceledEventAttributes ??
        e.workflowExecutionTerminatedEventAttributes ??
        e.workflowExecutionContinuedAsNewEventAttributes,
    );
  }
  const busy = open.tasks.size ? 'a workflow task' : open.activities.size ? 'an activity' : open.children.size ? 'a child start' : undefined;
  return { closed, busy, timers: [...timers.values()] };
}

/**
 * Moves the time-skipping server's clock forward until the run `workflowIds[0]` closes, one
 * timer at a time: each sleep ends as the earliest pending timer of the runs fires, and starts
 * only while every run waits on a timer or a child, with no workflow task or activity out.
 *
 * Why not one long `env.sleep()`: the test server jumps its clock whenever nothing holds it, and
 * a workflow task on a worker does not. One 7-hour sleep jumped past a task still on the worker:
 * the task timed out and the run was replayed in the middle of the test (CI, 2026-12-07: that
 * replay hit the patch bug nightly-backup-patches-first fixes, and the file hung 10 minutes).
 */
export async function skipTimeUntilClosed(env: TestWorkflowEnvironment, client: Client, workflowIds: [string, ...string[]], limitMs: number): Promise<void> {
  const startedAt = await env.currentTimeMs();
  for (;;) {
    // Ready to jump: the run closed, or every run waits (no task, no activity) and one on a timer.
    // A run waiting on no timer is about to move without a jump: a child that just closed has
    // not reached its parent's history yet, say.
    const states = await waitUntil(`${workflowIds.join(', ')} to close or wait on a timer, with nothing running`, async () => {
      const all = await Promise.all(workflowIds.map((id) => stateOf(client, id)));
      if (all[0]!.closed) return all;
      const open = all.filter((s) => !s.closed);
      return open.every((s) => !s.busy) && open.some((s) => s.timers.length > 0) ? all : undefined;
    });
    if (states[0]!.closed) return;
    const now = await env.currentTimeMs();
    if (now - startedAt > limitMs) throw new Error(`${workflowIds[0]} still open after ${limitMs / 3_600_000} h of server time`);
    const next = Math.min(...states.flatMap((s) => (s.closed ? [] : s.timers)));
    // 1 ms past the fire time: the timer has fired when the sleep ends, so the next round waits
    // for its workflow task instead of sleeping to the same timer again.
    await env.sleep(Math.max(next - now, 0) + 1);
  }
}
