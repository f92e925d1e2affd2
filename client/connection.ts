import { Connection, Client } from '@temporalio/client';
import type { PayloadCodec } from '@temporalio/common';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import type { NativeConnectionOptions } from '@temporalio/worker';

/** Flags that override the standard Temporal environment configuration for one invocation. */
export interface ConnectionFlags {
  address?: string;
  namespace?: string;
  profile?: string;
  configFile?: string;
}

export interface ResolvedConnection {
  connectionOptions: NativeConnectionOptions;
  address: string;
  namespace: string;
}

export const DEFAULT_ADDRESS = '127.0.0.1:7233';

/** Settings that cannot be loaded (missing profile, malformed TOML): a user mistake, not a bug. */
export class ConnectionConfigError extends Error {
  constructor(cause: unknown) {
    // Only the first line: the TOML parser quotes the offending lines, which may hold an API key.
    const first = (cause instanceof Error ? cause.message : String(cause)).split('\n')[0]?.trim();
    super(`cannot load the Temporal connection settings: ${first || 'unknown error'}`);
    this.name = 'ConnectionConfigError';
  }
}

/**
 * Resolves where to connect the same way the `temporal` CLI does (profile file, then
 * TEMPORAL_* variables), then applies explicit flags. Local dev needs no configuration at all;
 * Temporal Cloud needs only TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE and TEMPORAL_API_KEY.
 */
export function resolveConnection(flags: ConnectionFlags = {}): ResolvedConnection {
  // An empty TEMPORAL_ADDRESS= in a shell means unset, not "connect to ''" or "override the profile".
  const env = Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => !!e[1]));
  let loaded;
  try {
    loaded = loadClientConnectConfig({
      overrideEnvVars: env,
      ...(flags.profile ? { profile: flags.profile } : {}),
      ...(flags.configFile ? { configSource: { path: flags.configFile } } : {}),
    });
  } catch (err) {
    throw new ConnectionConfigError(err);
  }
  const address = flags.address || loaded.connectionOptions.address || DEFAULT_ADDRESS;
  const namespace = flags.namespace || loaded.namespace || 'default';
  return { connectionOptions: { ...loaded.connectionOptions, address }, address, namespace };
}

/** `payloadCodec`: the worker's payload encryption (KEYOPS_PAYLOAD_KEY_FILE), if it is on. */
export async function connectClient(
  resolved: ResolvedConnection,
  connectTimeout = '5 seconds',
  payloadCodec?: PayloadCodec,
): Promise<{ client: Client; connection: Connection; resolved: ResolvedConnection }> {
  const connection = await Connection.connect({
    ...(resolved.connectionOptions as Parameters<typeof Connection.connect>[0]),
    connectTimeout,
  });
  const client = new Client({
    connection,
    namespace: resolved.namespace,
    ...(payloadCodec ? { dataConverter: { payloadCodecs: [payloadCodec] } } : {}),
  });
  return { client, connection, resolved };
}
