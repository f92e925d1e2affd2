import { stat, statfs } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { BackupCatalog } from './catalog/backup-catalog';
import type { DemoDatabases } from './demo-data';
import type { DatabaseEngine } from './engines/database-engine';
import { splitKeyId } from './kms/key-id';
import type { KeyManagementService } from './kms/key-management-service';
import { LOCAL_INSTANCE } from './kms/kms-router';
import type { WdekRegistry } from './wdek-registry/wdek-registry';

/** One line of `keyops doctor`: what was checked, whether it would hold tonight, and what fixes it. */
export interface NightCheck {
  check: string;
  ok: boolean;
  detail: string;
  fix: string | null;
}

/** Where the worker's local KMS master secret comes from, or undefined when the worker has no local KMS. */
export type MasterSecretSource = { file: string } | { variable: string };

export interface NightReadinessDeps {
  dataDir: string;
  kms: KeyManagementService;
  registry: WdekRegistry;
  engine: DatabaseEngine & Partial<Pick<DemoDatabases, 'listDatabases'>>;
  catalog: BackupCatalog;
  /** How long each KMS instance gets to answer for all its keys (default KMS_ANSWER_WITHIN_MS). */
  kmsAnswerWithinMs?: number;
  /** Given by the worker when it runs a local KMS (workers/night-readiness-deps.ts). */
  localKmsMasterSecret?: MasterSecretSource | undefined;
}

/** Each KMS instance's limit: well inside the 2 minutes `keyops doctor` waits for the worker's answer. */
const KMS_ANSWER_WITHIN_MS = 20_000;

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err)).split('\n')[0]!;

const gib = (bytes: number): string => (bytes >= 1024 ** 3 ? `${(bytes / 1024 ** 3).toFixed(1)} GiB` : bytes >= 1024 ** 2 ? `${(bytes / 1024 ** 2).toFixed(1)} MiB` : `${bytes} B`);

/** The nearest directory of `path` that exists (the backup directory appears with the first backup). */
async function existingDir(path: string): Promise<string> {
  for (let dir = path; ; dir = dirname(dir)) {
    try {
      if ((await stat(dir)).isDirectory()) return dir;
    } catch {
      // not there yet: its parent holds tonight's files
    }
    if (dirname(dir) === dir) return dir;
  }
}

/**
 * What a night needs of this worker, checked without changing anything: every KMS answers for
 * the keys keyops uses there, the engine answers for every database it backs up, the backup
 * directory has room for tonight, and the local KMS master secret is in place and private.
 * One item's error never stops the others; results carry ids, counts and sizes, never keys.
 */
export function createNightReadiness(deps: NightReadinessDeps) {
  return async function checkNightReadiness(): Promise<NightCheck[]> {
    const checks: NightCheck[] = [];
    const catalogEntries = (() => {
      try {
        return deps.catalog.list({ status: 'good' });
      } catch (err) {
        checks.push({ check: 'backup catalog readable', ok: false, detail: message(err), fix: `check ${join(deps.dataDir, 'catalog')} on the worker` });
        return [];
      }
    })();
    const databases = new Map<string, string | undefined>();
    for (const e of catalogEntries) if (!databases.has(e.databaseId)) databases.set(e.databaseId, e.keyId);
    try {
      for (const d of deps.engine.listDatabases?.() ?? []) databases.set(d.databaseId, d.keyId);
    } catch (err) {
      checks.push({ check: 'engine lists its databases', ok: false, detail: message(err), fix: `check ${join(deps.dataDir, 'databases')} on the worker` });
    }

    // 1. Every KMS instance answers for each key keyops uses there.
    const keyIds = new Set<string>();
    try {
      for (const k of deps.registry.listKeys()) keyIds.add(k.keyId);
    } catch (err) {
      checks.push({ check: 'WDEK registry readable', ok: false, detail: message(err), fix: `check ${join(deps.dataDir, 'registry')} on the worker` });
    }
    for (const e of catalogEntries) keyIds.add(e.keyId);
    for (const keyId of databases.values()) if (keyId) keyIds.add(keyId);
    const byInstance = new Map<string, string[]>();
    for (const keyId of [...keyIds].sort()) {
      const instance = splitKeyId(keyId).instance ?? LOCAL_INSTANCE;
      byInstance.set(instance, [...(byInstance.get(instance) ?? []), keyId]);
    }
    if (byInstance.size === 0) checks.push({ check: 'KMS', ok: true, detail: 'no key in use yet', fix: null });
    // Instances in parallel, each within its own limit: a KMS that never answers (a firewall
    // dropping packets) is named as such, and cannot use up the look-up's time for the others.
    const limitMs = deps.kmsAnswerWithinMs ?? KMS_ANSWER_WITHIN_MS;
    const answers = await Promise.all(
      [...byInstance].sort(([a], [b]) => a.localeCompare(b)).map(async ([instance, keys]): Promise<NightCheck> => {
        const failures: string[] = [];
        let asked = 0;
        let gaveUp = false;
        const work = (async () => {
          for (const keyId of keys) {
            // Past the limit, the keys left are not asked: repeated doctors must not pile up calls to a dead KMS.
            if (gaveUp) return false;
            asked++;
            try {
              const meta = await deps.kms.getKeyMetadata(keyId);
              if (meta.state !== 'active') failures.push(`${keyId} is ${meta.state}`);
            } catch (err) {
              failures.push(`${keyId}: ${message(err)}`);
            }
          }
          return true;
        })();
        let timer: NodeJS.Timeout | undefined;
        const answered = await Promise.race([work, new Promise<false>((r) => (timer = setTimeout(() => r(false), limitMs)))]);
        clearTimeout(timer);
        gaveUp = !answered;
        const fix = instance === LOCAL_INSTANCE ? `check the local KMS store ${join(deps.dataDir, 'kms')} and its master secret on the worker` : `check kms.${instance} in the worker's keyops.yaml and its credentials`;
        if (!answered) {
          return { check: `KMS ${instance}`, ok: false, detail: `no answer within ${limitMs / 1000} s (waiting on key ${asked} of ${keys.length})${failures.length ? `; ${failures.join('; ')}` : ''}`, fix: `${fix}, and that the worker reaches its address` };
        }
        return failures.length === 0
          ? { check: `KMS ${instance}`, ok: true, detail: `answers for ${keys.length} key(s) keyops uses`, fix: null }
          : { check: `KMS ${instance}`, ok: false, detail: `${failures.length} of ${keys.length} key(s) fail: ${failures.join('; ')}`, fix };
      }),
    );
    checks.push(...answers);

    // 2. The engine answers for every database keyops backs up.
    const engineFailures: string[] = [];
    for (const databaseId of [...databases.keys()].sort()) {
      try {
        await deps.engine.keyState(databaseId);
      } catch (err) {
        engineFailures.push(`${databaseId}: ${message(err)}`);
      }
    }
    checks.push(
      engineFailures.length === 0
        ? { check: 'engines', ok: true, detail: `answer for ${databases.size} database(s)`, fix: null }
        : { check: 'engines', ok: false, detail: `${engineFailures.length} of ${databases.size} database(s) fail: ${engineFailures.join('; ')}`, fix: "check the database servers in the worker's keyops.yaml and the worker's log" },
    );

    // 3. Room for tonight's backups: as much as each database's last backup took.
    const backupDir = join(deps.dataDir, 'backups');
    try {
      let needed = 0;
      for (const databaseId of databases.keys()) needed += deps.catalog.lastGood(databaseId)?.bytes ?? 0;
      const dir = await existingDir(backupDir);
      const fs = await statfs(dir);
      const free = Number(fs.bavail) * Number(fs.bsize);
      checks.push(
        free >= needed
          ? { check: 'backup space', ok: true, detail: `${gib(free)} free in ${backupDir}, tonight needs about ${gib(needed)}`, fix: null }
          : { check: 'backup space', ok: false, detail: `${gib(free)} free in ${backupDir}, tonight needs about ${gib(needed)}`, fix: `free space on the file system of ${backupDir}, or lower the retention of old backups` },
      );
    } catch (err) {
      checks.push({ check: 'backup space', ok: false, detail: message(err), fix: `check ${backupDir} on the worker` });
    }

    // 4. The local KMS master secret: present, and readable by the worker's user only.
    const source = deps.localKmsMasterSecret;
    if (source && 'variable' in source) {
      checks.push({ check: 'local KMS master secret', ok: true, detail: `from ${source.variable}`, fix: null });
    } else if (source) {
      try {
        const mode = (await stat(source.file)).mode & 0o777;
        checks.push(
          (mode & 0o077) === 0
            ? { check: 'local KMS master secret', ok: true, detail: `${source.file} mode 0${mode.toString(8)}`, fix: null }
            : { check: 'local KMS master secret', ok: false, detail: `${source.file} has mode 0${mode.toString(8)}, expected 0600`, fix: `chmod 600 ${source.file}` },
        );
      } catch (err) {
        checks.push({
          check: 'local KMS master secret',
          ok: false,
          detail: `${source.file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : message(err)}`,
          fix: `restore ${source.file} from your backup of it (without it no root key can be read)`,
        });
      }
    }
    return checks;
  };
}
