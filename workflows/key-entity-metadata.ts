/** The Web UI's summary and details of a key's entity workflow, whoever starts it (a rewrap, a waiter, `keyops signal`). */
export const keyEntityMetadata = (keyId: string) => ({
  staticSummary: `Key ${keyId}: knows the rewrapped version and releases waiting workflows`,
  staticDetails: [
    `One long-lived run per root key (\`key/${keyId}\`). It records the highest version every WDEK of the key was rewrapped to, as announced by the rewrap runs or by \`keyops signal rewrap-complete\`.`,
    'Workflows waiting for a rewrap (nightly backups, scheduled rotations) register here and are signalled in order when their version is reached.',
    'Query `keyState` shows the version and the waiters.',
  ].join('\n\n'),
});
