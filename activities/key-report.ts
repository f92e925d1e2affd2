import type { BackupCatalog, BackupStatus, DrillRecord, NightRecord } from './catalog/backup-catalog';
import type { DemoDatabases } from './demo-data';
import type { DatabaseEngine } from './engines/database-engine';
import { createKeyVersionActivities, type KeyVersionUse } from './key-versions';
import type { KeyManagementService, KeyState, RotationPolicy } from './kms/key-management-service';
import { typed } from './typed';
import type { WdekRegistry } from './wdek-registry/wdek-registry';

/** One catalogued backup of a key, as the report shows it: no path, no checksum, no key hash. */
export interface ReportBackup {
  backupId: string;
  databaseId: string;
  night: string;
  createdAt: string;
  bytes: number;
  keyVersion: number;
  status: BackupStatus;
  verified: boolean;
  lastDrill?: Pick<DrillRecord, 'drilledAt' | 'result' | 'workflowId'> | undefined;
}

/** What the worker knows of one key for `keyops report`: the KMS's metadata and the catalog's records. */
export interface KeyReportFacts {
  keyId: string;
  name: string;
  state: KeyState;
  createdAt: string;
  lastRotateDate?: string | undefined;
  rotationPolicy?: RotationPolicy | undefined;
  currentVersion: number;
  /** Every version with what still needs it, and the KMS's rotation request id where it records one. */
  versions: (KeyVersionUse & { requestId?: string | undefined })[];
  /** Retained backups whose file could not be read: which version they need is unknown. */
  unreadableBackups: string[];
  /** Databases whose data or backups are under the key. */
  databases: string[];
  /** Its newest MAX_REPORTED_BACKUPS backups (every status: retention's deletions are part of the trail), oldest first. */
  backups: ReportBackup[];
  /** Older backups in the period left out of `backups`, so that the answer stays far below Temporal's 2 MB payload limit. */
  omittedBackups: number;
  /** The failed nights of those databases, oldest first. */
  nights: NightRecord[];
}

/** A key the worker could not read for the report (gone from its KMS, KMS unreachable): the rest still reports. */
export interface KeyReportProblem {
  keyId: string;
  error: string;
}

export interface KeyReportAnswer {
  keys: KeyReportFacts[];
  problems: KeyReportProblem[];
}

/** About 250 bytes each: a year of nightly backups of a few databases per key. */
const MAX_REPORTED_BACKUPS = 2000;

export interface KeyReportDeps {
  kms: KeyManagementService;
  registry: WdekRegistry;
  catalog: BackupCatalog;
  engine: DatabaseEngine & Partial<Pick<DemoDatabases, 'listDatabases'>>;
}

/**
 * The worker's half of the lifecycle report: only a worker holds the KMS credentials and the
 * catalog. Read-only; ids, versions, dates and counts leave it, never a key or a path.
 */
export function createKeyReportActivities(deps: KeyReportDeps) {
  const keyVersions = createKeyVersionActivities(deps);

  /** Keys keyops uses on this worker: registered WDEKs, catalogued backups, databases. */
  function keysInUse(): string[] {
    const keyIds = new Set<string>();
    for (const k of deps.registry.listKeys()) keyIds.add(k.keyId);
    for (const e of deps.catalog.list()) keyIds.add(e.keyId);
    for (const d of deps.engine.listDatabases?.() ?? []) keyIds.add(d.keyId);
    return [...keyIds].sort();
  }

  async function factsOf(keyId: string, since: string | undefined): Promise<KeyReportFacts> {
    const meta = await deps.kms.getKeyMetadata(keyId);
    const uses = await keyVersions.listKeyVersions({ keyId });
    const requestIds = new Map(meta.versions.map((v) => [v.version, v.requestId]));
    const entries = deps.catalog
      .list()
      .filter((e) => e.keyId === keyId)
      .reverse();
    const databases = new Set(entries.map((e) => e.databaseId));
    for (const d of deps.engine.listDatabases?.() ?? []) if (d.keyId === keyId) databases.add(d.databaseId);
    for (const v of uses.versions) for (const d of v.databases) databases.add(d);
    const nights = [...databases].flatMap((databaseId) => deps.catalog.listNights({ databaseId, ...(since ? { since } : {}) }).filter((n) => n.outcome === 'failed'));
    nights.sort((a, b) => a.recordedAt.localeCompare(b.recordedAt));
    const inPeriod = entries.filter((e) => !since || e.createdAt >= since);
    return {
      keyId,
      name: meta.name,
      state: meta.state,
      createdAt: meta.createdAt,
      lastRotateDate: meta.lastRotateDate,
      rotationPolicy: meta.rotationPolicy,
      currentVersion: meta.currentVersion,
      versions: uses.versions.map((v) => ({ ...v, requestId: requestIds.get(v.version) })),
      unreadableBackups: uses.unreadableBackups,
      databases: [...databases].sort(),
      omittedBackups: Math.max(0, inPeriod.length - MAX_REPORTED_BACKUPS),
      backups: inPeriod
        .slice(-MAX_REPORTED_BACKUPS)
        .map((e) => ({
          backupId: e.backupId,
          databaseId: e.databaseId,
          night: e.night,
          createdAt: e.createdAt,
          bytes: e.bytes,
          keyVersion: e.keyVersion,
          status: e.status,
          verified: e.verification !== undefined,
          ...(e.lastDrill ? { lastDrill: { drilledAt: e.lastDrill.drilledAt, result: e.lastDrill.result, workflowId: e.lastDrill.workflowId } } : {}),
        })),
      nights,
    };
  }

  return {
    /** `keyops report`: the worker's facts for the given keys, or for every key in use. */
    async keyReportFacts(input: { keyIds?: string[]; since?: string }): Promise<KeyReportAnswer> {
      const keyIds = input.keyIds?.length ? input.keyIds : keysInUse();
      const answer: KeyReportAnswer = { keys: [], problems: [] };
      // One key's failure (a deleted backup's key gone from the KMS) is reported, not fatal: an
      // auditor still gets every other key, and learns which one could not be read and why.
      for (const keyId of keyIds) {
        try {
          answer.keys.push(await typed(() => factsOf(keyId, input.since)));
        } catch (err) {
          answer.problems.push({ keyId, error: (err instanceof Error ? err.message : String(err)).split('\n')[0]! });
        }
      }
      return answer;
    },
  };
}
