/**
 * A real MariaDB 10.11 server for tests: Debian's packages, installed by the project's own script
 * (scripts/install-mariadb.sh), run as a child process with its own data directory and unix
 * socket under `dir`, no networking. Its tables are encrypted with keys it reads from an OpenBao
 * KV v2 mount through the `hashicorp_key_management` plugin: every tablespace encrypted
 * (`innodb_encrypt_tables=FORCE`), the redo log too, background encryption threads, and
 * `innodb_encryption_rotate_key_age=1`.
 *
 * The Vault token never appears on a command line or in my.cnf: the server gets it as VAULT_TOKEN
 * in its environment, read from the token file, and nothing else of the test's environment.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createConnection, type Connection } from 'mariadb';
import { MariaDbKeyStore } from '../../activities/engines/mariadb-key-store';
import { ROOT, runToEnd } from './child-process';
import { type OpenBao, startOpenBao } from './openbao';

export interface MariaDbInstall {
  mariadbd: string;
  mariadbBackup: string;
  pluginDir: string;
}

export interface MariaDbOptions {
  /** Holds data/, my.cnf, the socket and the error log; created when missing. */
  dir: string;
  /** The KV v2 mount holding the keys: `<address>/v1/<mount>/data/<key id>`. */
  vault: { address: string; mount: string; tokenFile: string };
  /** Background threads that re-encrypt pages under a new key version (0 stops them). */
  encryptionThreads?: number;
  /** How long (ms) the plugin keeps a key it read. */
  keyCacheMs?: number;
  /** How long (ms) the plugin trusts the latest version it read; a rotation shows after this. */
  versionCacheMs?: number;
}

export interface MariaDb {
  socket: string;
  dataDir: string;
  pid: number;
  install: MariaDbInstall;
  /** The server's error log (MariaDB writes its own messages there). */
  errorLog: string;
  /** Its option file (mariadb-backup and scratch servers read the key plugin's settings there). */
  config: string;
  /** One statement as root over the socket; rows as objects. */
  query<T = Record<string, unknown>>(sql: string, values?: unknown[]): Promise<T[]>;
  stop(): Promise<void>;
  /** SIGKILL, as a crash would. */
  kill(): Promise<void>;
}

let installed: Promise<MariaDbInstall> | undefined;

/** Runs scripts/install-mariadb.sh once per process (quick when the packages are there). */
export function installMariaDb(): Promise<MariaDbInstall> {
  installed ??= (async () => {
    const run = await runToEnd('bash', [join(ROOT, 'scripts', 'install-mariadb.sh')], { timeoutMs: 900_000 });
    const found = Object.fromEntries(
      run.stdout
        .trim()
        .split('\n')
        .map((line) => line.split('=', 2) as [string, string]),
    );
    if (run.code !== 0 || !found.mariadbd || !found['mariadb-backup'] || !found['plugin-dir']) {
      throw new Error(`scripts/install-mariadb.sh failed (exit ${run.code ?? run.signal}):\n${run.stderr}`);
    }
    return { mariadbd: found.mariadbd, mariadbBackup: found['mariadb-backup'], pluginDir: found['plugin-dir'] };
  })();
  return installed;
}

/** Every server this process started, killed if the process exits without stopping them. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

const exited = (child: ChildProcess) => child.exitCode !== null || child.signalCode !== null;

/** The my.cnf of a private server: everything but the token. */
function config(options: MariaDbOptions, install: MariaDbInstall, dataDir: string, socket: string, errorLog: string): string {
  const cacheMs = options.keyCacheMs ?? 60_000;
  return [
    '[mariadbd]',
    `datadir=${dataDir}`,
    `socket=${socket}`,
    'skip-networking',
    `pid-file=${join(options.dir, 'mariadbd.pid')}`,
    `log-error=${errorLog}`,
    `plugin-dir=${install.pluginDir}`,
    'plugin-load-add=hashicorp_key_management.so',
    `hashicorp-key-management-vault-url=${options.vault.address}/v1/${options.vault.mount}`,
    `hashicorp-key-management-cache-timeout=${cacheMs}`,
    `hashicorp-key-management-cache-version-timeout=${options.versionCacheMs ?? 1000}`,
    'hashicorp-key-management-check-kv-version=on',
    'innodb_encrypt_tables=FORCE',
    'innodb_encrypt_log=ON',
    'innodb_encrypt_temporary_tables=ON',
    `innodb_encryption_threads=${options.encryptionThreads ?? 2}`,
    'innodb_encryption_rotate_key_age=1',
    'innodb_buffer_pool_size=64M',
    'innodb_log_file_size=48M',
    '',
  ].join('\n');
}

/** Installs MariaDB if needed, creates the data directory on first use, and starts the server. */
export async function startMariaDb(options: MariaDbOptions): Promise<MariaDb> {
  const install = await installMariaDb();
  mkdirSync(options.dir, { recursive: true, mode: 0o700 });
  const dataDir = join(options.dir, 'data');
  const socket = join(options.dir, 'mariadbd.sock');
  const errorLog = join(options.dir, 'error.log');
  const cnf = join(options.dir, 'my.cnf');
  writeFileSync(cnf, config(options, install, dataDir, socket, errorLog), { mode: 0o600 });
  const asRoot = process.getuid?.() === 0;
  const user = asRoot ? ['--user=root'] : [];
  if (!existsSync(join(dataDir, 'mysql'))) {
    // Root connects through the private socket only (no networking), without a password.
    const made = await runToEnd('mariadb-install-db', ['--no-defaults', `--datadir=${dataDir}`, '--auth-root-authentication-method=normal', '--skip-test-db', ...user], {
      timeoutMs: 120_000,
    });
    if (made.code !== 0) throw new Error(`mariadb-install-db failed (exit ${made.code ?? made.signal}):\n${made.stdout}\n${made.stderr}`);
  }
  const token = readFileSync(options.vault.tokenFile, 'utf8').trim();
  const child = spawn(install.mariadbd, [`--defaults-file=${cnf}`, ...user], {
    cwd: options.dir,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', VAULT_TOKEN: token },
    stdio: 'ignore',
  });
  running.add(child);
  child.once('exit', () => running.delete(child));
  const log = () => (existsSync(errorLog) ? readFileSync(errorLog, 'utf8').split('\n').slice(-30).join('\n') : '(no error log)');

  let connection: Connection | undefined;
  const deadline = Date.now() + 60_000;
  while (!connection) {
    if (exited(child)) throw new Error(`mariadbd exited (${child.exitCode ?? child.signalCode}) before it took connections; its error log ends:\n${log()}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`mariadbd did not take connections on ${socket} within 60 s; its error log ends:\n${log()}`);
    }
    connection = await createConnection({ socketPath: socket, user: 'root' }).catch(() => undefined);
    if (!connection) await new Promise((r) => setTimeout(r, 100));
  }
  const open = connection;
  // A server stopped or killed by the test closes the socket: not an error of the test process.
  open.on('error', () => undefined);
  const close = async () => {
    await open.end().catch(() => undefined);
  };
  return {
    socket,
    dataDir,
    pid: child.pid!,
    install,
    errorLog,
    config: cnf,
    query: async <T>(sql: string, values?: unknown[]) => open.query<T[]>({ sql, rowsAsArray: false }, values),
    stop: async () => {
      await close();
      if (exited(child)) return;
      const gone = once(child, 'exit');
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await gone;
      clearTimeout(timer);
    },
    kill: async () => {
      open.destroy();
      if (exited(child)) return;
      const gone = once(child, 'exit');
      child.kill('SIGKILL');
      await gone;
    },
  };
}

/**
 * OpenBao with a KV v2 mount `mariadb/` holding key 1 (version 1), and a MariaDB whose tables are
 * encrypted with it, holding `shop.orders` with `rows` rows: the parts of reference 000, real.
 */
export async function startMariaDbWithOpenBao(dir: string, rows = 20_000): Promise<{ bao: OpenBao; db: MariaDb; keys: MariaDbKeyStore; stop(): Promise<void> }> {
  const bao = await startOpenBao({ dir: join(dir, 'bao') });
  try {
    const mounted = await bao.api('POST', 'sys/mounts/mariadb', { type: 'kv', options: { version: '2' } });
    if (mounted.status !== 204 && mounted.status !== 200) throw new Error(`OpenBao refused the KV v2 mount: ${mounted.status} ${JSON.stringify(mounted.body)}`);
    const keys = new MariaDbKeyStore({ address: bao.address, mount: 'mariadb', tokenFile: bao.tokenFile });
    // Key 1 must exist before the server starts: with encrypt_tables=FORCE it needs it at once.
    await keys.rotate(1, 0);
    const db = await startMariaDb({ dir: join(dir, 'mariadb'), vault: { address: bao.address, mount: 'mariadb', tokenFile: bao.tokenFile } });
    await db.query('CREATE DATABASE shop');
    await db.query('CREATE TABLE shop.orders (id INT PRIMARY KEY, item VARCHAR(100) NOT NULL, qty INT NOT NULL) ENGINE=InnoDB');
    await db.query(`INSERT INTO shop.orders SELECT seq, CONCAT('item-', seq), seq % 7 FROM shop.seq_1_to_${rows}`);
    return {
      bao,
      db,
      keys,
      stop: async () => {
        await db.stop();
        await bao.stop();
      },
    };
  } catch (err) {
    await bao.stop();
    throw err;
  }
}
