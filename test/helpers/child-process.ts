import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { basename, resolve } from 'node:path';
import { logCapture, rememberWorkerEnvironment } from './key-material';

export const ROOT = resolve(__dirname, '..', '..');

export interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

let outputLog: ((text: string) => void) | undefined;

/**
 * What a command run by a test printed, for the key-material scan (key-material.ts). The header
 * names the command; its long arguments (paths, ids) are cut short, so that the header itself
 * never carries a secret a test passed on a command line.
 */
function captureOutput(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string): void {
  outputLog ??= logCapture('commands.log');
  const args = child.spawnargs.slice(1).map((a) => (a.length > 15 ? `${a.slice(0, 8)}…` : a));
  outputLog(`# ${basename(child.spawnfile)} ${args.join(' ')}: exit ${code ?? signal}\n${stdout}${stdout.endsWith('\n') || !stdout ? '' : '\n'}# stderr\n${stderr}${stderr.endsWith('\n') || !stderr ? '' : '\n'}`);
}

/** Runs a command to completion, capturing its output; kills it if it outlives `timeoutMs`. */
export async function runToEnd(
  command: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {},
): Promise<Finished> {
  // The secrets it is given are looked for in everything the suite logs (key-material.ts).
  if (options.env) rememberWorkerEnvironment(options.env);
  const child = spawn(command, args, {
    cwd: options.cwd ?? ROOT,
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return finish(child, options.timeoutMs ?? 60_000);
}

export async function finish(child: ChildProcess, timeoutMs: number): Promise<Finished> {
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const [code, signal] = (await once(child, 'close')) as [number | null, NodeJS.Signals | null];
  clearTimeout(timer);
  captureOutput(child, code, signal, stdout, stderr);
  return { code, signal, stdout, stderr };
}

/** The keyops CLI from source, as a user would run it (a separate process, real argv). */
export function keyops(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Finished> {
  return runToEnd(process.execPath, ['--import', 'tsx', resolve(ROOT, 'client/main.ts'), ...args], { env });
}

/**
 * A port that is free now, chosen below Linux's ephemeral range (32768+), so a server that
 * binds port 0 meanwhile (the dev server does, for its HTTP and metrics ports) cannot take it.
 */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    if (await portFree(port)) return port;
  }
}

/** Whether `port` on 127.0.0.1 can be bound now. */
async function portFree(port: number): Promise<boolean> {
  const server = createServer();
  const bound = await new Promise<boolean>((resolveBound) => {
    server.once('error', () => resolveBound(false));
    server.listen(port, '127.0.0.1', () => resolveBound(true));
  });
  if (bound) {
    server.close();
    await once(server, 'close');
  }
  return bound;
}

/** `count` consecutive ports free now (a Temporal cluster takes a base port and the ones above it). */
export async function freePortRange(count: number): Promise<number> {
  for (;;) {
    const base = 20000 + Math.floor(Math.random() * (12000 - count));
    let ok = true;
    for (let i = 0; i < count && ok; i++) ok = await portFree(base + i);
    if (ok) return base;
  }
}

/** Resolves with the first stdout line for which `match` holds, or rejects when the process exits. */
export function waitForLine(child: ChildProcess, match: (line: string) => boolean, timeoutMs: number): Promise<string> {
  return new Promise((resolveLine, reject) => {
    let buffer = '';
    const timer = setTimeout(() => reject(new Error(`no matching line within ${timeoutMs}ms; got:\n${buffer}`)), timeoutMs);
    const onData = (chunk: Buffer) => {
      buffer += chunk.toString('utf8');
      const line = buffer.split('\n').find((l) => match(l));
      if (line !== undefined) {
        clearTimeout(timer);
        child.stdout?.off('data', onData);
        resolveLine(line);
      }
    };
    child.stdout?.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`process exited with ${code} before the line appeared; output:\n${buffer}`));
    });
  });
}
