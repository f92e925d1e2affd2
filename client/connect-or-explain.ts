import { CliError, ExitCode } from './cli-error';
import { ConnectionConfigError, connectClient, resolveConnection } from './connection';
import type { GlobalOptions } from './global-options';

/** Connects for a CLI command, turning every connection problem into an operator-facing error. */
export async function connectOrExplain(options: GlobalOptions) {
  let resolved;
  try {
    resolved = resolveConnection(options);
  } catch (err) {
    if (err instanceof ConnectionConfigError) {
      throw new CliError(err.message, ExitCode.usage, 'check --profile / TEMPORAL_PROFILE and the file named by --config-file / TEMPORAL_CONFIG_FILE');
    }
    throw err;
  }
  try {
    return await connectClient(resolved);
  } catch (err) {
    throw new CliError(
      `cannot reach Temporal at ${resolved.address}: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`,
      ExitCode.unreachable,
      'start the local stack with ./temporal-dev.sh, or point keyops at your cluster with --address or TEMPORAL_ADDRESS',
    );
  }
}
