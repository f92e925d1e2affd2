import { Worker, type WorkerOptions } from '@temporalio/worker';
import { bulkTaskQueue } from '../workflows/task-queue';

/**
 * The two workers of one keyops process, run and stopped together: the main one (workflows and
 * every activity) and an activities-only one on the bulk task queue.
 */
export class KeyopsWorkers {
  private constructor(
    readonly main: Worker,
    readonly bulk: Worker,
  ) {}

  static async create(options: WorkerOptions): Promise<KeyopsWorkers> {
    const main = await Worker.create(options);
    try {
      // Everything else as the main worker has it (connection, identity, grace time), minus workflows.
      const { workflowsPath: _path, workflowBundle: _bundle, bundlerOptions: _bundler, ...shared } = options;
      const bulk = await Worker.create({
        ...shared,
        taskQueue: bulkTaskQueue(options.taskQueue),
        // Node runs activities on one thread: a second CPU-bound chunk here would halve the speed
        // of both. With one slot this worker stops polling while busy, and another process gets it.
        maxConcurrentActivityTaskExecutions: 1,
      });
      return new KeyopsWorkers(main, bulk);
    } catch (err) {
      // A created worker holds native resources until it has run; run it to a stop at once.
      await main.runUntil(Promise.resolve());
      throw err;
    }
  }

  /** Runs both until shutdown (SIGINT/SIGTERM through the Runtime); one failing stops the other. */
  async run(): Promise<void> {
    const workers = [this.main, this.bulk];
    const results = await Promise.allSettled(
      workers.map((w) =>
        w.run().catch((err: unknown) => {
          for (const other of workers) if (other !== w && other.getState() === 'RUNNING') other.shutdown();
          throw err;
        }),
      ),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /** As Worker.runUntil: both run until the promise (or function) settles, then both drain. */
  runUntil<R>(fnOrPromise: Promise<R> | (() => Promise<R>)): Promise<R> {
    return this.bulk.runUntil(this.main.runUntil(fnOrPromise));
  }
}
