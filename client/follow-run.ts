import type { QueryDefinition, WorkflowHandle } from '@temporalio/client';
import { SingleBar } from 'cli-progress';
import type { GlobalOptions } from './global-options';

export interface Progress {
  phase: string;
  done?: number;
  total?: number;
}

/**
 * Awaits a run's result while showing its progress from `query` on stderr: a progress bar on a
 * terminal, one line per change otherwise (logs, CI). With --json nothing but the result is printed.
 */
export async function followRun<R, S>(
  options: GlobalOptions,
  handle: WorkflowHandle,
  query: QueryDefinition<S>,
  progressOf: (state: S) => Progress,
  result: () => Promise<R>,
): Promise<R> {
  if (options.json) return result();
  const tty = process.stderr.isTTY;
  const bar = tty ? new SingleBar({ format: '  {phase} [{bar}] {value}/{total}', hideCursor: true, clearOnComplete: false, stream: process.stderr }) : undefined;
  let last = '';
  let started = false;
  let finished = false;
  const show = async () => {
    const state = await handle.query(query).catch(() => undefined);
    if (state !== undefined) {
      const p = progressOf(state);
      const line = `${p.phase}${p.total ? ` ${p.done ?? 0}/${p.total}` : ''}`;
      if (bar) {
        if (!started) bar.start(p.total ?? 0, p.done ?? 0, { phase: p.phase });
        else bar.setTotal(p.total ?? 0);
        bar.update(p.done ?? 0, { phase: p.phase });
        started = true;
      } else if (line !== last) {
        process.stderr.write(`  ${line}\n`);
      }
      last = line;
    }
  };
  const poll = async () => {
    while (!finished) {
      await show();
      await new Promise((r) => setTimeout(r, 300));
    }
  };
  const polling = poll();
  try {
    const value = await result();
    finished = true;
    await polling;
    // The end state too, however quickly the run got there.
    await show();
    return value;
  } finally {
    finished = true;
    await polling;
    if (started) bar?.stop();
  }
}
