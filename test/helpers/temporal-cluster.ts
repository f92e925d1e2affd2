import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { type Finished, ROOT, freePort, freePortRange, runToEnd } from './child-process';

export const CLUSTER_SCRIPT = join(ROOT, 'temporal-cluster.sh');

export interface TemporalCluster {
  readonly address: string;
  /** The environment that points ./temporal-cluster.sh at this cluster's ports and data directory. */
  readonly env: NodeJS.ProcessEnv;
  readonly client: Client;
  /** `./temporal-cluster.sh ARGS` for this cluster; rejects on a non-zero exit, with its stderr. */
  script(...args: string[]): Promise<Finished>;
  /** Closes the client's connection and stops the cluster (its data stays under `dataDir`). */
  stop(): Promise<void>;
}

/**
 * ./temporal-cluster.sh's cluster on free ports, its data under `dataDir`, and a client of it.
 * `cli` is a Temporal CLI to use instead of the one temporal-dev.sh finds (the test suite's).
 */
export async function startCluster(dataDir: string, options: { cli?: string } = {}): Promise<TemporalCluster> {
  // Ten ports in a row: frontend, history, matching, worker, HTTP, four membership, PostgreSQL.
  const base = await freePortRange(10);
  const env: NodeJS.ProcessEnv = {
    KEYOPS_DATA_DIR: dataDir,
    KEYOPS_TEMPORAL_PORT: String(base),
    KEYOPS_UI_PORT: String(await freePort()),
    ...(options.cli ? { KEYOPS_TEMPORAL_CLI: options.cli } : {}),
  };
  const script = async (...args: string[]) => {
    // A first start on a fresh machine builds the server: minutes.
    const r = await runToEnd(CLUSTER_SCRIPT, args, { env, timeoutMs: 30 * 60_000 });
    if (r.code !== 0) throw new Error(`temporal-cluster.sh ${args.join(' ')} exited ${r.code ?? r.signal}: ${r.stderr}`);
    return r;
  };
  try {
    await script('up');
  } catch (err) {
    // Whatever `up` started before it failed (PostgreSQL, some services) must not outlive the test.
    await script('down').catch(() => undefined);
    throw err;
  }
  const address = `127.0.0.1:${base}`;
  let connection: Connection;
  try {
    connection = await Connection.connect({ address });
  } catch (err) {
    await script('down');
    throw err;
  }
  return {
    address,
    env,
    client: new Client({ connection, namespace: 'default' }),
    script,
    stop: async () => {
      await connection.close();
      await script('down');
    },
  };
}
