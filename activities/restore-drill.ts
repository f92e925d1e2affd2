import { ApplicationFailure } from '@temporalio/common';
import type { BackupCatalog, CatalogEntry, DrillResult } from './catalog/backup-catalog';
import type { KeyManagementService } from './kms/key-management-service';
import { typed } from './typed';
import { postAlert } from './alert-webhook';

export interface RestoreDrillDeps {
  kms: KeyManagementService;
  catalog: BackupCatalog;
  /** The nightly backup's alert webhook: a failed drill is POSTed to it too. */
  alertWebhook?: string;
}

/** Why a backup is in a drill's sample. */
export type DrillReason = 'oldest' | 'retired-key-version' | 'newest';

/** One backup a drill restores: ids, versions and why it was chosen (no key material). */
export interface DrillSample {
  backupId: string;
  databaseId: string;
  night: string;
  keyId: string;
  keyVersion: number;
  reasons: DrillReason[];
}

/**
 * The backups a restore drill restores, from the catalog's retained (good) backups: the oldest of
 * each database (the one most likely to have lost a key), one per retired root-key version that a
 * retained backup still needs (the newest under it), and, unless `newest` is false, the newest of
 * each database. Each backup once, with every reason it was chosen; oldest first.
 */
export function drillSample(entries: CatalogEntry[], currentVersion: (keyId: string) => number, newest = true): DrillSample[] {
  const good = entries.filter((e) => e.status === 'good').sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.backupId.localeCompare(b.backupId));
  const chosen = new Map<string, DrillSample>();
  const choose = (e: CatalogEntry, reason: DrillReason) => {
    const sample = chosen.get(e.backupId) ?? { backupId: e.backupId, databaseId: e.databaseId, night: e.night, keyId: e.keyId, keyVersion: e.keyVersion, reasons: [] };
    if (!sample.reasons.includes(reason)) sample.reasons.push(reason);
    chosen.set(e.backupId, sample);
  };
  const byDatabase = new Map<string, CatalogEntry[]>();
  for (const e of good) byDatabase.set(e.databaseId, [...(byDatabase.get(e.databaseId) ?? []), e]);
  for (const list of byDatabase.values()) choose(list[0]!, 'oldest');
  const byRetiredVersion = new Map<string, CatalogEntry>();
  for (const e of good) if (e.keyVersion < currentVersion(e.keyId)) byRetiredVersion.set(`${e.keyId}\u0000${e.keyVersion}`, e);
  for (const e of byRetiredVersion.values()) choose(e, 'retired-key-version');
  if (newest) for (const list of byDatabase.values()) choose(list[list.length - 1]!, 'newest');
  const order = new Map(good.map((e, i) => [e.backupId, i]));
  return [...chosen.values()].sort((a, b) => order.get(a.backupId)! - order.get(b.backupId)!);
}

export function createRestoreDrillActivities({ kms, catalog, alertWebhook }: RestoreDrillDeps) {
  return {
    /** Chooses the drill's sample (drillSample) from the catalog and the KMS's current versions. Read-only. */
    async selectDrillSample(input: { databaseId?: string; newest?: boolean }): Promise<DrillSample[]> {
      const entries = catalog.list({ ...(input.databaseId ? { databaseId: input.databaseId } : {}), status: 'good' });
      const current = new Map<string, number>();
      for (const keyId of new Set(entries.map((e) => e.keyId))) {
        current.set(keyId, (await typed(() => kms.getKeyMetadata(keyId))).currentVersion);
      }
      return drillSample(entries, (keyId) => current.get(keyId) ?? 0, input.newest ?? true);
    },

    /** Records how a backup's drill went. Idempotent: the backup's last drill is replaced. */
    async recordDrill(input: { backupId: string; drilledAt: string; result: DrillResult; workflowId: string; rows?: number; tables?: number; error?: string }): Promise<void> {
      if (!catalog.get(input.backupId)) {
        throw ApplicationFailure.create({ type: 'BACKUP_NOT_FOUND', nonRetryable: true, message: `no backup ${input.backupId} in the catalog to record a drill for` });
      }
      const { backupId, ...drill } = input;
      catalog.recordDrill(backupId, drill);
      return Promise.resolve();
    },

    /**
     * POSTs a failed drill to the alert webhook (`reason`: why no backup could be drilled at all) the nightly backup uses (event `keyops.drill.alert`);
     * without one, does nothing. A refusal is retried.
     */
    sendDrillAlert(alert: { workflowId: string; failed: { backupId: string; databaseId: string; reason: string }[]; drilled: number; reason?: string }): Promise<{ sent: boolean }> {
      return postAlert(alertWebhook, 'keyops.drill.alert', alert);
    },
  };
}
