import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { ROOT, freePort, runToEnd } from './child-process';
import { captureLogFiles, captureServerDatabase, dumpHistoriesAt, harvestDataDir } from './key-material';
import { temporalCliPath } from './temporal';

export const DEV_SCRIPT = join(ROOT, 'temporal-dev.sh');

export interface DevStack {
  /** The environment that points temporal-dev.sh at this stack's ports and data directory. */
  readonly env: NodeJS.ProcessEnv;
  readonly ports: { grpc: number; ui: number; metrics: number };
  readonly dataDir: string;
}

/**
 * Registers hooks for a temporal-dev.sh stack on its own free ports and data directory, beside
 * the suite's server; `down` and removal of the directory afterwards.
 */
export function useDevStack(label: string): DevStack {
  const stack: { env?: NodeJS.ProcessEnv; ports?: DevStack['ports']; dataDir?: string } = {};
  before(async () => {
    stack.dataDir = await mkdtemp(join(tmpdir(), `keyops-${label}-`));
    stack.ports = { grpc: await freePort(), ui: await freePort(), metrics: await freePort() };
    stack.env = {
      KEYOPS_TEMPORAL_CLI: temporalCliPath(),
      KEYOPS_DATA_DIR: stack.dataDir,
      KEYOPS_TEMPORAL_PORT: String(stack.ports.grpc),
      KEYOPS_UI_PORT: String(stack.ports.ui),
      KEYOPS_WORKER_METRICS_PORT: String(stack.ports.metrics),
    };
  });
  after(async () => {
    // For the key-material scan (key-material.ts): the stack's histories while its server is up
    // (or its database, if its test stopped it), then its logs and the keys in its data directory.
    const dumped = stack.ports ? await dumpHistoriesAt(`127.0.0.1:${stack.ports.grpc}`, `dev stack ${label}`, { noteFailure: false }) : false;
    if (stack.env) await runToEnd(DEV_SCRIPT, ['down'], { env: stack.env });
    if (stack.dataDir) {
      if (!dumped) captureServerDatabase(join(stack.dataDir, 'temporal'), `dev stack ${label}`);
      captureLogFiles(join(stack.dataDir, 'logs'), `dev-stack-${label}`);
      harvestDataDir(stack.dataDir);
      await rm(stack.dataDir, { recursive: true, force: true });
    }
  });
  const ready = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error('dev stack used outside a test');
    return value;
  };
  return {
    get env() {
      return ready(stack.env);
    },
    get ports() {
      return ready(stack.ports);
    },
    get dataDir() {
      return ready(stack.dataDir);
    },
  };
}
