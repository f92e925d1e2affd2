import { createWorkerProbe, type WorkerProbeDeps } from './worker-probe';

export type ActivityDeps = WorkerProbeDeps;

/**
 * Builds every activity from the adapters the worker chose. Tests call this with real local
 * adapters; production wiring passes cloud ones. Workflows see only `typeof` the result.
 */
export function createActivities(deps: ActivityDeps) {
  return {
    probeWorker: createWorkerProbe(deps),
  };
}

export type Activities = ReturnType<typeof createActivities>;
export type { WorkerProbeReport } from './worker-probe';
