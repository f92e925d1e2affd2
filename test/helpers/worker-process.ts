import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from './child-process';
import { harvestDataDir, logCapture, rememberWorkerEnvironment } from './key-material';

export const WORKER = ['--import', 'tsx', join(ROOT, 'workers/main.ts')];

export interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

/** The worker as production runs it: its own process, configured only by environment. */
export class WorkerProcess {
  readonly lines: LogLine[] = [];
  stderr = '';
  readonly child: ChildProcess;
  private partial = '';

  constructor(env: NodeJS.ProcessEnv) {
    this.child = spawn(process.execPath, WORKER, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      const parts = (this.partial + chunk).split('\n');
      this.partial = parts.pop() ?? '';
      // Every stdout line must be one JSON object: that is the log shippers' contract.
      for (const part of parts) if (part.trim()) this.lines.push(JSON.parse(part) as LogLine);
    });
    this.child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (this.stderr += chunk));
    // For the key-material scan (key-material.ts): the worker's secrets, everything it writes, and,
    // when it ends (before its test can remove the data directory), every key its data holds.
    const masterSecret = rememberWorkerEnvironment(env);
    const stdout = logCapture('worker.stdout.log');
    const stderr = logCapture('worker.stderr.log');
    this.child.stdout!.on('data', (chunk: string) => stdout(chunk));
    this.child.stderr!.on('data', (chunk: string) => stderr(chunk));
    const dataDir = env.KEYOPS_DATA_DIR;
    if (dataDir) this.child.once('exit', () => harvestDataDir(dataDir, masterSecret ? { masterSecret } : {}));
  }

  async waitFor(msg: string, timeoutMs = 60_000): Promise<LogLine> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const line = this.lines.find((l) => l.msg === msg);
      if (line) return line;
      if (this.child.exitCode !== null || this.child.signalCode !== null) throw new Error(`worker ended (${this.child.exitCode ?? this.child.signalCode}) before "${msg}": ${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`no "${msg}" within ${timeoutMs}ms: ${JSON.stringify(this.lines)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

