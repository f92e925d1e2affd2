import { closeSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
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

const headerSchema = z.object({
  pid: z.number().int(),
  /** The SDK's default worker identity, `<pid>@<host>`: only attempts this worker ran are failed. */
  identity: z.string().optional(),
  host: z.string().optional(),
  /** The process's start time in clock ticks (Linux), so a reused pid is not taken for the worker. */
  started: z.string().optional(),
});
const journalSchema = headerSchema.extend({ activities: z.array(entrySchema) });

/** Once the log holds this many more lines than attempts running, it is rewritten to just those. */
const COMPACT_AFTER_LINES = 2_000;

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

const keyOf = (a: Pick<InFlightActivity, 'runId' | 'activityId'>) => `${a.runId}/${a.activityId}`;

/**
 * A journal file as a dead process left it: `<pid>-<start>.log` (a header line, then one line per
 * attempt started, `{"+":…}`, or ended, `{"-":"runId/activityId"}`) or the `<pid>.json` that
 * earlier keyops workers wrote (the whole state, rewritten on each change). Undefined if neither.
 */
export function readJournal(file: string): z.infer<typeof journalSchema> | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  if (file.endsWith('.json')) {
    try {
      const parsed = journalSchema.safeParse(JSON.parse(text));
      return parsed.success ? parsed.data : undefined;
    } catch {
      return undefined;
    }
  }
  const lines = text.split('\n');
  let header: z.infer<typeof headerSchema> | undefined;
  const running = new Map<string, InFlightActivity>();
  for (const line of lines) {
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      // A line cut short by the crash (or the empty one after the last newline).
      continue;
    }
    if (!header) {
      const h = headerSchema.safeParse(value);
      if (!h.success) return undefined;
      header = h.data;
      continue;
    }
    if (typeof value !== 'object' || value === null) continue;
    // Most lines are ends, which need no schema; only a start is checked, and only until it ends.
    if ('-' in value && typeof value['-'] === 'string') running.delete(value['-']);
    else if ('+' in value) {
      const started = entrySchema.safeParse(value['+']);
      if (started.success) running.set(keyOf(started.data), started.data);
    }
  }
  return header && { ...header, activities: [...running.values()] };
}

/** The journal a worker process keeps (or left) in `dir`, if any. */
export function journalOf(dir: string, pid: number): string | undefined {
  try {
    const name = readdirSync(dir).find((n) => new RegExp(`^${pid}(-\\d+)?\\.log$`).test(n));
    return name === undefined ? undefined : join(dir, name);
  } catch {
    return undefined;
  }
}

/**
 * The activities a worker process is running, appended to `<dataDir>/workers/<pid>-<start>.log`
 * as they start and end. A worker that dies (SIGKILL, OOM, a lost host) cannot tell the server; without
 * this, its activities are retried only when their heartbeat timeout (30 s) or start-to-close
 * timeout (1 minute) runs out. The next worker on the same data directory reads the journal of
 * every dead process and fails those attempts at once (retryable WORKER_DIED), so the server
 * schedules the next attempt within seconds.
 *
 * Each start is written before the activity runs, so a process killed a moment after taking an
 * activity still leaves it in the journal. An appended line costs one write(2), which the kernel
 * keeps through a SIGKILL of the process; rewriting and renaming a whole file on each change
 * cost a busy worker an eighth of its time.
 */
export class ActivityJournal {
  private readonly running = new Map<string, InFlightActivity>();
  private readonly host = hostname();
  private readonly file: string;
  private readonly header: string;
  private fd: number | undefined;
  private lines = 0;
  private closed = false;
  private warned = false;

  constructor(
    private readonly dir: string,
    private readonly logger?: Logger,
  ) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const started = processStart(process.pid);
    // With the start time in the name, a worker that gets a dead one's pid (PID 1 in a restarted
    // container) neither takes that journal for its own nor overwrites it.
    this.file = join(dir, started === undefined ? `${process.pid}.log` : `${process.pid}-${started}.log`);
    this.header = JSON.stringify({ pid: process.pid, identity: `${process.pid}@${this.host}`, host: this.host, started });
  }

  /** The interceptor that keeps the journal: add it to the worker's `interceptors.activity`. */
  readonly interceptor: ActivityInterceptorsFactory = (ctx: Context) => ({
    inbound: {
      execute: async (input, next) => {
        const { workflowExecution, activityId, activityType, attempt } = ctx.info;
        // Standalone activities have no workflow to resume; nothing to journal.
        if (!workflowExecution) return next(input);
        const entry = { workflowId: workflowExecution.workflowId, runId: workflowExecution.runId, activityId, activityType, attempt };
        this.running.set(keyOf(entry), entry);
        this.append({ '+': entry });
        try {
          return await next(input);
        } finally {
          this.running.delete(keyOf(entry));
          this.append({ '-': keyOf(entry) });
        }
      },
    },
  });

  /** This process's own journal goes with it on a clean stop. */
  close(): void {
    this.running.clear();
    this.closed = true;
    this.closeFd();
    rmSync(this.file, { force: true });
    rmSync(`${this.file}.tmp`, { force: true });
  }

  private closeFd(): void {
    const fd = this.fd;
    this.fd = undefined;
    try {
      if (fd !== undefined) closeSync(fd);
    } catch {
      // Already unusable: there is nothing more to release.
    }
  }

  private append(line: object): void {
    if (this.closed) return;
    try {
      if (this.fd === undefined || this.lines > this.running.size + COMPACT_AFTER_LINES) this.rewrite();
      else {
        const text = `${JSON.stringify(line)}\n`;
        // A short write (a disk filling up) would glue the next line to half of this one.
        if (writeSync(this.fd, text) !== Buffer.byteLength(text)) throw new Error('short write');
      }
      this.lines++;
    } catch (err) {
      // The journal only speeds up recovery: a full disk must not fail (or un-succeed) the work.
      // The next change rewrites it whole.
      this.closeFd();
      if (!this.warned) this.logger?.warn({ file: this.file, err: err instanceof Error ? err.message : String(err) }, 'could not write the activity journal; a crash now costs the activity timeouts');
      this.warned = true;
    }
  }

  /** The header and what runs now, renamed into place: a crash mid-write leaves the previous log whole. */
  private rewrite(): void {
    const tmp = `${this.file}.tmp`;
    writeFileSync(tmp, [this.header, ...[...this.running.values()].map((a) => JSON.stringify({ '+': a })), ''].join('\n'), { mode: 0o600 });
    renameSync(tmp, this.file);
    this.closeFd();
    this.fd = openSync(this.file, 'a');
    this.lines = this.running.size;
    this.warned = false;
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
      const named = /^(\d+)(?:-(\d+))?\.(log|json)$/.exec(name);
      if (!named || file === this.file) return [];
      // A live worker's journal is not read: it grows to thousands of lines on a busy night, and
      // this runs every few seconds. Its name says whose it is: pid and start time. (A name
      // without the start time, or an earlier worker's .json, is read for the one in its header.)
      if (named[2] !== undefined && alive(Number(named[1]), named[2])) return [];
      const journal = readJournal(file);
      if (!journal) return [];
      // Another host (a shared volume) or another PID namespace cannot be checked from here:
      // treated as alive, its attempts are left to their timeouts.
      if (journal.host !== undefined && journal.host !== this.host) return [];
      if (alive(journal.pid, journal.started)) return [];
      return [{ file, pid: journal.pid, identity: journal.identity, activities: journal.activities }];
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
    if (complete) {
      rmSync(orphan.file, { force: true });
      // A compaction the process was in the middle of when it died.
      rmSync(`${orphan.file}.tmp`, { force: true });
    }
  }
  return failed;
}
