/**
 * moto's server mode: an AWS emulator (PyPI `moto[server]`), installed by
 * scripts/install-moto.sh into .cache/venv-moto and started on a free local port for one test
 * file. It emulates the KMS API's shapes and errors; it is not AWS (its rotations, for one, do not
 * change key material). See test/aws-kms.test.ts for what it does and does not implement.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ROOT, freePort } from './child-process';

export interface Moto {
  /** http://127.0.0.1:PORT, for the SDK's `endpoint`. */
  endpoint: string;
  stop(): Promise<void>;
}

const INSTALL = join(ROOT, 'scripts', 'install-moto.sh');
const START_TIMEOUT_MS = 60_000;
const KEEP_OUTPUT = 8_192;

/** The moto_server binary, installed first if the venv lacks it (quick when present). */
export async function motoServerPath(): Promise<string> {
  const { stdout } = await promisify(execFile)(INSTALL, [], { cwd: ROOT, timeout: 10 * 60_000, maxBuffer: 1 << 20 });
  const path = stdout.trim().split('\n').at(-1);
  if (!path) throw new Error(`${INSTALL} printed no moto_server path`);
  return path;
}

/** Polls until the server answers HTTP (any status), or fails with what it printed. */
async function waitUntilAnswering(endpoint: string, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`moto_server exited (${child.exitCode ?? child.signalCode}) before answering; it printed:\n${output()}`);
    }
    try {
      const res = await fetch(`${endpoint}/moto-api/`, { signal: AbortSignal.timeout(2_000) });
      await res.arrayBuffer();
      return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`moto_server did not answer on ${endpoint} within ${START_TIMEOUT_MS} ms; it printed:\n${output()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Starts `moto_server -H 127.0.0.1 -p PORT` and waits until it answers. */
export async function startMoto(): Promise<Moto> {
  const server = await motoServerPath();
  const port = await freePort();
  const endpoint = `http://127.0.0.1:${port}`;
  const child = spawn(server, ['-H', '127.0.0.1', '-p', String(port)], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PYTHONUNBUFFERED: '1' } });
  // Keep the tail of what it prints (its request log), for an error message; never let a pipe fill.
  let printed = '';
  const keep = (chunk: Buffer) => {
    printed = (printed + chunk.toString('utf8')).slice(-KEEP_OUTPUT);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  try {
    await waitUntilAnswering(endpoint, child, () => printed);
  } catch (err) {
    child.kill('SIGKILL');
    process.off('exit', killOnExit);
    throw err;
  }
  return {
    endpoint,
    async stop() {
      process.off('exit', killOnExit);
      if (child.exitCode !== null || child.signalCode !== null) return;
      const closed = once(child, 'close');
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await closed;
      clearTimeout(timer);
    },
  };
}
