import type { Client } from '@temporalio/client';
import type { KeyRef } from '../activities';
import { asKeyId } from '../activities/kms/key-id';
import { resolveKeysUpdate } from '../workflows/lookup-messages';
import { CliError, ExitCode } from './cli-error';
import { lookUpOnWorker } from './run-on-worker';

/** The help line of every command that takes a <key>. */
export const KEY_ARGUMENT =
  '<key> is a key id (a UUID of the local KMS, or <instance>:<id> for a KMS of keyops.yaml, such as\n' +
  'bao:orders) or the name of a key keyops protects WDEKs with, such as the demo key "demo"; a key\n' +
  'without registered WDEKs is found by its id only.';

// No ":" in a name: `<instance>:<id>` is a key id.
const NAME = /^[A-Za-z0-9][A-Za-z0-9 _.-]{0,89}$/;

/**
 * Resolves key references through a worker (only workers hold KMS credentials): a key id (a
 * UUID, as Key Protect issues them) must exist in the KMS; anything else is the name of a key
 * keyops protects WDEKs with, and must name exactly one.
 */
export async function resolveKeyRefs(client: Client, raws: string[], taskQueue: string): Promise<KeyRef[]> {
  const refs = raws.map((raw) => raw.trim());
  for (const ref of refs) {
    if (!asKeyId(ref) && !NAME.test(ref)) {
      throw new CliError(`key "${ref}" is neither a key id (a UUID such as 0f6b9b2e-4c1d-4a8e-9d3a-5b7c2e1f8a90, or <instance>:<id> such as bao:orders) nor a key name`, ExitCode.usage);
    }
  }
  return lookUpOnWorker(
    client,
    resolveKeysUpdate,
    { taskQueue, args: [refs], summary: `keyops: look up key(s) ${refs.join(', ')}` },
    (failure) => {
      throw new CliError(`could not look up key(s) ${refs.join(', ')}: ${failure.message}`, ExitCode.failed);
    },
  );
}

/**
 * What `keyops key rotate <key>` and friends take: a key id as it is (the command's own call to
 * the KMS reports a missing key), or a key name, looked up (`keyops key rotate demo`).
 */
export async function resolveKeyId(client: Client, raw: string, taskQueue: string): Promise<string> {
  const id = asKeyId(raw);
  if (id) return id;
  const [ref] = await resolveKeyRefs(client, [raw], taskQueue);
  if (!ref?.keyId) {
    throw new CliError(ref?.problem ?? `key "${raw}" not found`, ExitCode.usage, 'a name finds only keys with WDEKs registered with keyops; keyops init and keyops key create print key ids');
  }
  return ref.keyId;
}
