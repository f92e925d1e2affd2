import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

// Custom search attributes let an operator filter runs in the Web UI, e.g.
// `KeyId = "demo" AND Phase = "awaiting-rewrap"`. They are stored unencrypted:
// only ids, versions and phases go here, never key material.
export const KeyIdAttribute = defineSearchAttributeKey('KeyId', SearchAttributeType.KEYWORD);
export const DatabaseIdAttribute = defineSearchAttributeKey('DatabaseId', SearchAttributeType.KEYWORD);
export const PhaseAttribute = defineSearchAttributeKey('Phase', SearchAttributeType.KEYWORD);
export const OutcomeAttribute = defineSearchAttributeKey('Outcome', SearchAttributeType.KEYWORD);
export const KeyVersionAttribute = defineSearchAttributeKey('KeyVersion', SearchAttributeType.INT);

/** Every custom attribute keyops uses; the dev server and the test server register exactly these. */
export const keyopsSearchAttributes = [
  KeyIdAttribute,
  DatabaseIdAttribute,
  PhaseAttribute,
  OutcomeAttribute,
  KeyVersionAttribute,
] as const;
