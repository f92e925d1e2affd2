import { mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { Client, WorkflowNotFoundError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import type { Context } from '@temporalio/activity';
import type { ActivityInterceptorsFactory, NativeConnection } from '@temporalio/worker';
import type { Logger } from 'pino';
import { z } from 'zod';

/** One activity attempt this process is running: enough to find it on the server. */
const entrySchema = z.object({
  workflowId: z.string(),
  runId: z.string(),
  activityId: z.string(),
  activityType: z.string(),
  attempt: z.number().int(),
});
export type InFlightActivity = z.infer<typeof entrySchema>;

const journalSchema = z.object({
  pid: z.number().int(),
  /** The SDK's default worker identity, `<pid>@<host>`: only attempts this worker ran are failed. */
  identity: z.string().optional(),
  host: z.string().optional(),
  /** The process's start time in clock ticks (Linux), so a reused pid is not taken for the worker. */
  started: z.string().optional(),
  activities: z.array(entrySchema),
});

/** How long journal changes may wait to be written together. */
const WRITE_EVERY_MS = 50;

/** `/proc/<pid>/stat` field 22: when the process started. Undefined off Linux or when it is gone. */
function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

function alive(pid: number, started: string | undefined): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    // ESRCH, or EPERM: a process of another user has that pid, so ours is gone.
    return false;
  }
  return started === undefined || processStart(pid) === started;
}

/**
 * The activities a worker process is running, written to `<dataDir>/workers/<pid>.json` as they
 * start and end. A worker that dies (SIGKILL, OOM, a lost host) cannot tell the server; without
 * this, its activities are retried only when their heartbeat timeout (30 s) or start-to-close
 * timeout (1 minute) runs out. The next worker on the same data directory reads the journal of
 * every dead process and fails those attempts at once (retryable WORKER_DIED), so the server
 * schedules the next attempt within seconds.
 */
export class ActivityJournal {
  private readonly running = new Map<string, InFlightActivity>();
  private readonly file: string;
  private readonly started = processStart(process.pid);
  private readonly host = hostname();
  private readonly identity = `${process.pid}@${hostname()}`;

  constructor(
    private readonly dir: string,
    private readonly logger?: Logger,
  ) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.file = join(dir, `${process.pid}.json`);
  }

  /** The interceptor that keeps the journal: add it to the worker's `interceptors.activity`. */
  readonly interceptor: ActivityInterceptorsFactory = (ctx: Context) => ({
    inbound: {
      execute: async (input, next) => {
        const { workflowExecution, activityId, activityType, attempt } = ctx.info;
        // Standalone activities have no workflow to resume; nothing to journal.
        if (!workflowExecution) return next(input);
        const key = `${workflowExecution.runId}/${activityId}`;
        this.running.set(key, { workflowId: workflowExecution.workflowId, runId: workflowExecution.runId, activityId, activityType, attempt });
        this.changed();
        try {
          return await next(input);
        } finally {
          this.running.delete(key);
          this.changed();
        }
      },
    },
  });

  /** This process's own journal goes with it on a clean stop. */
  close(): void {
    this.running.clear();
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    rmSync(this.file, { force: true });
  }

  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  /**
   * Changes are written together, at most every WRITE_EVERY_MS: a night of a thousand backups
   * starts and ends thousands of activities, and a write (and rename) for each cost a busy
   * worker an eighth of its time. A crash within that window leaves an activity to its timeout,
   * as it would without the journal.
   */
  private changed(): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.closed) this.write();
    }, WRITE_EVERY_MS);
    this.timer.unref();
  }

  /** Writes the journal now (also what `changed` does, a moment later). */
  write(): void {
    const body = JSON.stringify({ pid: process.pid, identity: this.identity, host: this.host, started: this.started, activities: [...this.running.values()] });
    const tmp = `${this.file}.tmp`;
    try {
      // Renamed into place: a crash mid-write leaves the previous journal, never half of one.
      writeFileSync(tmp, body, { mode: 0o600 });
      renameSync(tmp, this.file);
    } catch (err) {
      // The journal only speeds up recovery: a full disk must not fail (or un-succeed) the work.
      this.logger?.warn({ file: this.file, err: err instanceof Error ? err.message : String(err) }, 'could not write the activity journal; a crash now costs the activity timeouts');
    }
  }

  /** The journals of processes that are gone: their pid, and what each was running. */
  orphans(): { file: string; pid: number; identity: string | undefined; activities: InFlightActivity[] }[] {
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch {
      return [];
    }
    return names.flatMap((name) => {
      const file = join(this.dir, name);
      if (!/^\d+\.json$/.test(name) || file === this.file) return [];
      let parsed;
      try {
        parsed = journalSchema.safeParse(JSON.parse(readFileSync(file, 'utf8')));
      } catch {
        return [];
      }
      if (!parsed.success) return [];
      // Another host (a shared volume) or another PID namespace cannot be checked from here:
      // treated as alive, its attempts are left to their timeouts.
      if (parsed.data.host !== undefined && parsed.data.host !== this.host) return [];
      if (alive(parsed.data.pid, parsed.data.started)) return [];
      return [{ file, pid: parsed.data.pid, identity: parsed.data.identity, activities: parsed.data.activities }];
    });
  }
}

/**
 * Fails, on the server, every activity attempt a dead worker process left running, if that
 * attempt is still the pending one, and resets the sticky queue of its workflow so the next
 * workflow task is not held for the dead worker. Returns the attempts it failed.
 */
export async function resumeOrphanedActivities(journal: ActivityJournal, connection: NativeConnection, namespace: string, logger: Logger): Promise<InFlightActivity[]> {
  const client = new Client({ connection, namespace });
  const failed: InFlightActivity[] = [];
  for (const orphan of journal.orphans()) {
    let complete = true;
    for (const a of orphan.activities) {
      try {
        const description = await client.workflow.getHandle(a.workflowId, a.runId).describe();
        const pending = description.raw.pendingActivities?.find((p) => p.activityId === a.activityId);
        // Another worker already noticed (a timeout, an earlier sweep), or the run ended.
        if (!pending || pending.attempt !== a.attempt || description.status.name !== 'RUNNING') continue;
        // Only an attempt the dead worker itself was running (a live one elsewhere keeps its own).
        if (orphan.identity !== undefined && pending.lastWorkerIdentity && pending.lastWorkerIdentity !== orphan.identity) continue;
        await client.activity.fail(
          { workflowId: a.workflowId, runId: a.runId, activityId: a.activityId },
          ApplicationFailure.retryable(`worker process ${orphan.pid} died while running ${a.activityType} (attempt ${a.attempt})`, 'WORKER_DIED'),
        );
        await client.workflowService.resetStickyTaskQueue({ namespace, execution: { workflowId: a.workflowId, runId: a.runId } }).catch(() => undefined);
        failed.push(a);
        logger.info({ workflowId: a.workflowId, activityId: a.activityId, activityType: a.activityType, attempt: a.attempt, deadPid: orphan.pid }, 'resumed an activity a dead worker left running');
      } catch (err) {
        if (err instanceof WorkflowNotFoundError) continue;
        // Server unreachable, say: keep the journal and try again on the next sweep.
        complete = false;
        logger.warn({ workflowId: a.workflowId, activityId: a.activityId, err: err instanceof Error ? err.message : String(err) }, 'could not resume an activity a dead worker left running');
      }
    }
    if (complete) rmSync(orphan.file, { force: true });
  }
  return failed;
}
