/** How `test/run-tests.ts` hands the shared dev server and workflow bundle to test files. */
export const testEnvVars = {
  address: 'KEYOPS_TEST_TEMPORAL_ADDRESS',
  workflowBundle: 'KEYOPS_TEST_WORKFLOW_BUNDLE',
  temporalCli: 'KEYOPS_TEST_TEMPORAL_CLI',
  timeSkippingServer: 'KEYOPS_TEST_TIME_SKIPPING_SERVER',
} as const;
