import type { KeyReportFacts } from '../../activities';
import type { ReportBackup } from '../../activities/key-report';
import type { NightRecord } from '../../activities/catalog/backup-catalog';
import { backupWorkflowId } from '../../workflows/backup-messages';
import { rewrapWorkflowId } from '../../workflows/root-key-messages';
import type { KeyRuns, OtherRun, RewrapRun } from './key-runs';

/**
 * Why a version exists: made with the key; rotated by hand (`key rotate`, or `--kms-only`); by a
 * keyops schedule; by the KMS's rotation policy; or by someone outside keyops (a console, a
 * script). `keyops` alone: the KMS says keyops asked for it, but its run is no longer in the
 * server's retention.
 */
export type VersionOrigin = 'created' | 'manual' | 'manual-kms-only' | 'schedule' | 'policy' | 'outside-keyops' | 'keyops';

export const ORIGIN_TEXT: Record<VersionOrigin, string> = {
  created: 'created with the key',
  manual: 'manual rotation (keyops key rotate)',
  'manual-kms-only': 'manual rotation in the KMS only (keyops key rotate --kms-only)',
  schedule: 'scheduled rotation (keyops schedule)',
  policy: "the KMS's rotation policy",
  'outside-keyops': 'outside keyops (KMS console or API)',
  keyops: 'keyops (its run is past the server retention)',
};

export interface ReportVersion {
  version: number;
  createdAt: string;
  origin: VersionOrigin;
  /** The run that made it, or that found it and rewrapped (for policy and outside rotations). */
  run?: string | undefined;
  state: 'current' | 'retired' | 'destroyed';
  wdeks: number;
  /** Databases whose pages may still be under it (an engine re-encrypting itself). */
  databases: string[];
  /** Retained good backups that need it to restore. */
  backups: string[];
}

export interface KeyLifecycle {
  keyId: string;
  name: string;
  state: string;
  createdAt: string;
  currentVersion: number;
  rotationPolicy?: { intervalMonths: number } | undefined;
  lastRotateDate?: string | undefined;
  versions: ReportVersion[];
  /** Retired versions that something still needs, the auditor's first question. */
  retiredStillNeeded: { version: number; backups: string[]; wdeks: number; databases: string[] }[];
  unreadableBackups: string[];
  rewraps: (RewrapRun & { seconds?: number | undefined; origin: VersionOrigin })[];
  kmsOnlyRotations: OtherRun[];
  scheduledRotations: OtherRun[];
  backups: ReportBackup[];
  /** Older backups of the period the worker left out (it sends the newest 2,000). */
  omittedBackups: number;
  failedNights: (NightRecord & { workflowId: string })[];
  databases: string[];
}

export interface LifecycleReport {
  generatedAt: string;
  since?: string | undefined;
  namespace: string;
  taskQueue: string;
  keys: KeyLifecycle[];
  /** Keys the worker could not read (gone from their KMS, KMS unreachable), and why. */
  unreadableKeys: { keyId: string; error: string }[];
  masterKeyRotations: OtherRun[];
}

const seconds = (from: string, to: string | undefined) => (to ? Math.max(0, (Date.parse(to) - Date.parse(from)) / 1000) : undefined);

function originOf(facts: KeyReportFacts, version: number, runs: KeyRuns): { origin: VersionOrigin; run?: string } {
  const id = rewrapWorkflowId(facts.keyId, version);
  const rewrap = runs.rewraps.find((r) => r.workflowId === id);
  // Only a run that made the version counts, as its history tells: a run that failed, or found
  // the version already made (`rotated: false`), did not make it, whatever it was asked.
  const kmsOnly = runs.others.find((r) => r.type === 'rotateInKms' && r.keyVersion === version && r.rotated === true);
  if (kmsOnly) return { origin: 'manual-kms-only', run: kmsOnly.workflowId };
  if (rewrap?.rotated === true) {
    return rewrap.parent?.type === 'rotateRootKeyOnSchedule' ? { origin: 'schedule', run: rewrap.parent.workflowId } : { origin: 'manual', run: rewrap.workflowId };
  }
  if (version === 1) return { origin: 'created' };
  const requestId = facts.versions.find((v) => v.version === version)?.requestId;
  if (requestId === id) return { origin: 'keyops', ...(rewrap ? { run: rewrap.workflowId } : {}) };
  return { origin: facts.rotationPolicy ? 'policy' : 'outside-keyops', ...(rewrap ? { run: rewrap.workflowId } : {}) };
}

/** Joins what the worker knows (KMS, catalog) with what the histories tell, for one key. */
export function keyLifecycle(facts: KeyReportFacts, runs: KeyRuns, since: string | undefined): KeyLifecycle {
  const inWindow = (at: string | undefined) => !since || (at !== undefined && at >= since);
  const versions: ReportVersion[] = facts.versions.map((v) => ({
    version: v.version,
    createdAt: v.createdAt,
    ...originOf(facts, v.version, runs),
    state: v.destroyed ? 'destroyed' : v.current ? 'current' : 'retired',
    wdeks: v.wdeks,
    databases: v.databases,
    backups: v.backups,
  }));
  return {
    keyId: facts.keyId,
    name: facts.name,
    state: facts.state,
    createdAt: facts.createdAt,
    currentVersion: facts.currentVersion,
    rotationPolicy: facts.rotationPolicy,
    lastRotateDate: facts.lastRotateDate,
    versions,
    retiredStillNeeded: versions
      .filter((v) => v.state === 'retired' && (v.backups.length > 0 || v.wdeks > 0 || v.databases.length > 0))
      .map((v) => ({ version: v.version, backups: v.backups, wdeks: v.wdeks, databases: v.databases })),
    unreadableBackups: facts.unreadableBackups,
    rewraps: runs.rewraps
      .filter((r) => inWindow(r.closedAt ?? new Date().toISOString()))
      .map((r) => ({ ...r, seconds: seconds(r.startedAt, r.closedAt), origin: versions.find((v) => v.version === r.targetVersion)?.origin ?? 'outside-keyops' })),
    kmsOnlyRotations: runs.others.filter((r) => r.type === 'rotateInKms' && inWindow(r.startedAt)),
    scheduledRotations: runs.others.filter((r) => r.type === 'rotateRootKeyOnSchedule' && inWindow(r.startedAt)),
    backups: facts.backups,
    omittedBackups: facts.omittedBackups,
    failedNights: facts.nights.filter((n) => n.outcome === 'failed').map((n) => ({ ...n, workflowId: backupWorkflowId(n.databaseId, n.night) })),
    databases: facts.databases,
  };
}
