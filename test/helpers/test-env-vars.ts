/** How `test/run-tests.ts` hands the shared dev server and workflow bundle to test files. */
export const testEnvVars = {
  address: 'KEYOPS_TEST_TEMPORAL_ADDRESS',
  workflowBundle: 'KEYOPS_TEST_WORKFLOW_BUNDLE',
  temporalCli: 'KEYOPS_TEST_TEMPORAL_CLI',
  timeSkippingServer: 'KEYOPS_TEST_TIME_SKIPPING_SERVER',
  /** Where test processes leave secrets, logs and histories for the key-material scan (key-material.ts). */
  secretsDir: 'KEYOPS_TEST_SECRETS_DIR',
} as const;
