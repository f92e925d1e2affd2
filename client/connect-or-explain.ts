import { CliError, ExitCode } from './cli-error';
import { ConnectionConfigError, connectClient, resolveConnection } from './connection';
import type { GlobalOptions } from './global-options';
import { ENCRYPTED_ENCODING } from '../workers/payload-codec';
import { PAYLOAD_KEY_VARIABLE, PayloadKeyError, loadPayloadCodec } from '../workers/payload-keys';

/** Connects for a CLI command, turning every connection problem into an operator-facing error. */
export async function connectOrExplain(options: GlobalOptions) {
  let resolved;
  let payloadCodec;
  try {
    resolved = resolveConnection(options);
    // The same variable the worker reads: what one encrypts, the other must decrypt.
    payloadCodec = loadPayloadCodec(process.env);
  } catch (err) {
    if (err instanceof ConnectionConfigError) {
      throw new CliError(err.message, ExitCode.usage, 'check --profile / TEMPORAL_PROFILE and the file named by --config-file / TEMPORAL_CONFIG_FILE');
    }
    if (err instanceof PayloadKeyError) {
      throw new CliError(err.message, ExitCode.usage, `${PAYLOAD_KEY_VARIABLE} must list the same key files as the worker's, the current key first`);
    }
    throw err;
  }
  try {
    return await connectClient(resolved, undefined, payloadCodec);
  } catch (err) {
    throw new CliError(
      `cannot reach Temporal at ${resolved.address}: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`,
      ExitCode.unreachable,
      'start the local stack with ./temporal-dev.sh, or point keyops at your cluster with --address or TEMPORAL_ADDRESS',
    );
  }
}

/**
 * A payload this CLI cannot decode because the worker encrypted it and this process has no key
 * (KEYOPS_PAYLOAD_KEY_FILE unset): the SDK says only "Unknown encoding".
 */
export function explainEncryptedPayload(err: unknown): CliError | undefined {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if (e.message.includes(`Unknown encoding: ${ENCRYPTED_ENCODING}`)) {
      return new CliError(
        'the worker encrypts payloads and this keyops has no key to read them',
        ExitCode.usage,
        `set ${PAYLOAD_KEY_VARIABLE} to the key file(s) the worker uses`,
      );
    }
  }
  return undefined;
}
