import { randomUUID } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';

export interface WorkerProbeReport {
  hostname: string;
  pid: number;
  nodeVersion: string;
  keyopsVersion: string;
  dataDir: string;
  dataDirWritable: boolean;
  dataDirError?: string;
}

export interface WorkerProbeDeps {
  dataDir: string;
  keyopsVersion: string;
}

/**
 * Reports which worker picked up the task and whether it can write its data directory: the
 * things an operator checks first when runs sit in "scheduled" or fail on the first file write.
 * Idempotent: the probe file has a unique name and is always removed.
 */
export function createWorkerProbe({ dataDir, keyopsVersion }: WorkerProbeDeps) {
  return async function probeWorker(): Promise<WorkerProbeReport> {
    const base = { hostname: hostname(), pid: process.pid, nodeVersion: process.version, keyopsVersion, dataDir };
    const probeFile = join(dataDir, `.probe-${randomUUID()}`);
    try {
      await mkdir(dataDir, { recursive: true, mode: 0o700 });
      await writeFile(probeFile, 'probe', { mode: 0o600 });
      return { ...base, dataDirWritable: true };
    } catch (err) {
      return { ...base, dataDirWritable: false, dataDirError: err instanceof Error ? err.message : String(err) };
    } finally {
      // Under an unusable data dir even the clean-up fails; the report above already says why.
      await rm(probeFile, { force: true }).catch(() => undefined);
    }
  };
}
