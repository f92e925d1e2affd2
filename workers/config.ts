import { resolve } from 'node:path';
import { z } from 'zod';
import { TASK_QUEUE } from '../workflows/task-queue';

const HOST_PORT = /^(?:[A-Za-z0-9.\-_]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$/;
const hostPort = z.string().refine((v) => {
  const port = HOST_PORT.exec(v)?.[1];
  return port !== undefined && Number(port) >= 1 && Number(port) <= 65535;
}, 'expected host:port with a port from 1 to 65535 (e.g. 127.0.0.1:9464), or off');

const wholeSeconds = 'expected whole seconds from 0 to 3600';

/**
 * Worker settings, all from the environment (12-factor). The Temporal connection itself comes
 * from the standard Temporal variables (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY,
 * TEMPORAL_TLS_*, TEMPORAL_PROFILE, TEMPORAL_CONFIG_FILE) through @temporalio/envconfig.
 */
export const workerConfigSchema = z.object({
  KEYOPS_TASK_QUEUE: z.string().min(1).default(TASK_QUEUE),
  KEYOPS_DATA_DIR: z.string().min(1).default('.data'),
  KEYOPS_LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error']).default('info'),
  KEYOPS_LOG_FORMAT: z.enum(['auto', 'json', 'pretty']).default('auto'),
  /** Prometheus scrape address for the SDK runtime metrics, or `off`. */
  KEYOPS_METRICS_ADDRESS: z.union([z.literal('off'), hostPort]).default('127.0.0.1:9464'),
  /** The local KMS's master secret (base64, at least 32 bytes), or a file holding it. */
  KEYOPS_KMS_MASTER_SECRET: z.string().optional(),
  KEYOPS_KMS_MASTER_SECRET_FILE: z.string().optional(),
  /** Receives a JSON POST when a database has two failed backup nights in a row. */
  KEYOPS_ALERT_WEBHOOK: z
    .url({ protocol: /^https?$/, error: 'must be an http(s) URL' })
    .refine((v) => {
      const url = new URL(v);
      return url.username === '' && url.password === '';
    }, 'must not carry credentials (user:pass@): they would reach logs and process listings; use a token the receiver accepts in a header-free URL path, or a proxy')
    .optional(),
  /** Protects exported backup keys (rotateBackupKey); read when a key is exported. */
  KEYOPS_BACKUP_KEY_PASSPHRASE: z.string().min(12, 'a backup-key passphrase needs at least 12 characters').optional(),
  KEYOPS_BACKUP_KEY_PASSPHRASE_FILE: z.string().optional(),
  /** The crypto-unit set whose master key protects the KMS's key storage: backups and rewraps wait while it rotates. */
  KEYOPS_KMS_UNIT_SET: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, 'must be a crypto-unit set id: letters, digits, "_", "." or "-"').default('default'),
  /** How long in-flight activities get to finish after SIGINT/SIGTERM before they are cancelled. */
  /** keyops.yaml: the KMS instances (keyops-config.ts). Unset: the embedded local KMS. */
  KEYOPS_CONFIG: z.string().optional(),
  KEYOPS_SHUTDOWN_GRACE_SECONDS: z.coerce
    .number(wholeSeconds)
    .int(wholeSeconds)
    .min(0, wholeSeconds)
    .max(3600, wholeSeconds)
    .default(10),
});

export interface WorkerConfig {
  taskQueue: string;
  dataDir: string;
  logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error';
  logFormat: 'json' | 'pretty';
  metricsAddress: string | undefined;
  shutdownGraceSeconds: number;
  kmsMasterSecret: { base64: string } | { file: string } | undefined;
  backupKeyPassphrase: { value: string } | { file: string } | undefined;
  alertWebhook: string | undefined;
  kmsUnitSet: string;
  /** The KMS instances, from KEYOPS_CONFIG (checked when the adapters open). */
  configFile: string | undefined;
}

/** Variables whose values are secrets: an error names them, never shows them. */
const SECRET_VARIABLES: ReadonlySet<string> = new Set(['KEYOPS_KMS_MASTER_SECRET', 'KEYOPS_BACKUP_KEY_PASSPHRASE', 'KEYOPS_ALERT_WEBHOOK']);

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid worker configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

export function loadWorkerConfig(env: NodeJS.ProcessEnv, stdoutIsTty: boolean): WorkerConfig {
  // An empty variable is an unset one: `KEYOPS_LOG_LEVEL= keyops-worker` should mean the default.
  const present = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = workerConfigSchema.safeParse(present);
  if (!parsed.success) {
    throw new ConfigError(
      parsed.error.issues.map((issue) => {
        const field = issue.path.join('.');
        const shown = SECRET_VARIABLES.has(field) ? '(value hidden)' : JSON.stringify(env[field] ?? '');
        return `${field}=${shown}: ${issue.message}`;
      }),
    );
  }
  const c = parsed.data;
  return {
    taskQueue: c.KEYOPS_TASK_QUEUE,
    dataDir: resolve(c.KEYOPS_DATA_DIR),
    logLevel: c.KEYOPS_LOG_LEVEL,
    logFormat: c.KEYOPS_LOG_FORMAT === 'auto' ? (stdoutIsTty ? 'pretty' : 'json') : c.KEYOPS_LOG_FORMAT,
    metricsAddress: c.KEYOPS_METRICS_ADDRESS === 'off' ? undefined : c.KEYOPS_METRICS_ADDRESS,
    shutdownGraceSeconds: c.KEYOPS_SHUTDOWN_GRACE_SECONDS,
    kmsMasterSecret: c.KEYOPS_KMS_MASTER_SECRET
      ? { base64: c.KEYOPS_KMS_MASTER_SECRET }
      : c.KEYOPS_KMS_MASTER_SECRET_FILE
        ? { file: resolve(c.KEYOPS_KMS_MASTER_SECRET_FILE) }
        : undefined,
    backupKeyPassphrase: c.KEYOPS_BACKUP_KEY_PASSPHRASE
      ? { value: c.KEYOPS_BACKUP_KEY_PASSPHRASE }
      : c.KEYOPS_BACKUP_KEY_PASSPHRASE_FILE
        ? { file: resolve(c.KEYOPS_BACKUP_KEY_PASSPHRASE_FILE) }
        : undefined,
    alertWebhook: c.KEYOPS_ALERT_WEBHOOK,
    kmsUnitSet: c.KEYOPS_KMS_UNIT_SET,
    configFile: c.KEYOPS_CONFIG === undefined ? undefined : resolve(c.KEYOPS_CONFIG),
  };
}
