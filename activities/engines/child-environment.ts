/**
 * What an engine's or an HSM's command-line tool (db2, ibmcloud tke) inherits from the worker: the
 * variables it needs to find itself and its instance, nothing else. The worker's environment
 * holds the KMS master secret, the backup-key passphrase and the Temporal API key; a child
 * process would pass them on to its own children, core dumps and `ps e`.
 */
const PASSED = new Set(['PATH', 'HOME', 'USER', 'LOGNAME', 'LANG', 'LANGUAGE', 'TZ', 'TMPDIR', 'SHELL', 'LD_LIBRARY_PATH', 'CLASSPATH', 'CLOUDTKEFILES']);
/** Db2's instance settings (DB2INSTANCE, DB2DIR…), the IBM Cloud CLI's (IBMCLOUD_HOME…), locales. */
const PASSED_PREFIXES = ['LC_', 'DB2', 'IBMCLOUD_', 'BLUEMIX_'];

/** Never passed, whatever the lists above say. */
const WITHHELD_PREFIXES = ['KEYOPS_', 'TEMPORAL_'];

/** The longest a tool may run when its caller names no limit: a hung tool must not hang an activity. */
export const DEFAULT_CHILD_TIMEOUT_MS = 10 * 60_000;

export function childEnvironment(extra: Record<string, string> = {}, from: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(from)) {
    if (value === undefined || WITHHELD_PREFIXES.some((p) => name.startsWith(p))) continue;
    if (PASSED.has(name) || PASSED_PREFIXES.some((p) => name.startsWith(p))) env[name] = value;
  }
  for (const [name, value] of Object.entries(extra)) {
    if (!WITHHELD_PREFIXES.some((p) => name.startsWith(p))) env[name] = value;
  }
  return env;
}
