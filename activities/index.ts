import { createBackupKeyActivities, type BackupKeyDeps } from './backup-key-rotation';
import { createDemoActivities, type DemoDeps } from './demo-data';
import { createKeyConsumerActivities, type KeyConsumerDeps } from './key-consumers';
import { createKeyRefActivities, type KeyRefDeps } from './key-refs';
import { createKeyReportActivities } from './key-report';
import { createKeyVersionActivities, type KeyVersionDeps } from './key-versions';
import { createMasterKeyActivities, type MasterKeyDeps } from './master-key-rotation';
import { createNightReadiness, type NightReadinessDeps } from './night-readiness';
import { createBackupActivities, type BackupDeps } from './nightly-backup';
import { createRestoreDrillActivities } from './restore-drill';
import { createRootKeyActivities, type RootKeyDeps } from './root-key-rotation';
import { createWorkerProbe, type WorkerProbeDeps } from './worker-probe';

export type ActivityDeps = WorkerProbeDeps & RootKeyDeps & BackupDeps & BackupKeyDeps & MasterKeyDeps & DemoDeps & KeyRefDeps & KeyConsumerDeps & KeyVersionDeps & NightReadinessDeps;

/**
 * Builds every activity from the adapters the worker chose. Tests call this with real local
 * adapters; production wiring passes cloud ones. Workflows see only `typeof` the result.
 */
export function createActivities(deps: ActivityDeps) {
  return {
    probeWorker: createWorkerProbe(deps),
    ...createRootKeyActivities(deps),
    ...createBackupActivities(deps),
    ...createBackupKeyActivities(deps),
    ...createMasterKeyActivities(deps),
    ...createDemoActivities(deps),
    ...createKeyRefActivities(deps),
    ...createKeyConsumerActivities(deps),
    ...createKeyVersionActivities(deps),
    ...createKeyReportActivities(deps),
    ...createRestoreDrillActivities(deps),
    checkNightReadiness: createNightReadiness(deps),
  };
}

export type Activities = ReturnType<typeof createActivities>;
export type { WorkerProbeReport } from './worker-probe';
export type { KeyStatus } from './root-key-rotation';
export type { KeyRef } from './key-refs';
export type { KeyVersions } from './key-versions';
export type { KeyReportAnswer, KeyReportFacts } from './key-report';
export type { BackupKeyCheck } from './nightly-backup';
export type { NightCheck } from './night-readiness';
