/**
 * A worker process as the activity journal sees it, for test/activity-journal.test.ts: it starts
 * the activities named on its command line through the journal's interceptor, finishes those
 * marked `done`, prints "running" and waits to be killed.
 *   node --import tsx activity-journal-child.ts DIR act-1 act-2:done …
 */
import type { Context } from '@temporalio/activity';
import { ActivityJournal } from '../../workers/activity-journal';

async function main() {
  const [dir, ...activities] = process.argv.slice(2);
  const journal = new ActivityJournal(dir!);
  for (const spec of activities) {
    const [activityId, done] = spec.split(':');
    const info = { workflowExecution: { workflowId: `wf-${activityId}`, runId: `run-${activityId}` }, activityId: activityId!, activityType: 'backupDatabase', attempt: 1 };
    const { inbound } = journal.interceptor({ info } as unknown as Context);
    // The activity body: one that never ends, or one that ends at once.
    void inbound!.execute!({ args: [], headers: {} }, () => (done ? Promise.resolve('ok') : new Promise(() => undefined)));
  }
  // The finished ones end in microtasks; the others were journalled before their body ran.
  await new Promise((r) => setImmediate(r));
  process.stdout.write('running\n');
  setInterval(() => undefined, 60_000);
}

void main();
