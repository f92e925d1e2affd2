import { randomUUID } from 'node:crypto';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { DefaultLogger, type LogLevel, Runtime, Worker, type WorkerOptions } from '@temporalio/worker';
import { testEnvVars } from './test-env-vars';

// Before any worker or connection exists in this test process; TEST_LOG_LEVEL=INFO shows more.
Runtime.install({ logger: new DefaultLogger((process.env.TEST_LOG_LEVEL as LogLevel | undefined) ?? 'WARN') });

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run tests through \`npm test [-- test/FILE.test.ts]\``);
  return value;
}

/** Address of the suite's one dev server. */
export const testServerAddress = (): string => required(testEnvVars.address);

/** Connects to the suite's one dev server (started by test/run-tests.ts). */
export function connectTestEnv(): Promise<TestWorkflowEnvironment> {
  return TestWorkflowEnvironment.createFromExistingServer({ address: testServerAddress(), namespace: 'default' });
}

/**
 * A private Java test server whose clock jumps ahead whenever every workflow is only waiting on
 * timers, so hour-long waits finish in seconds. One per test file: its clock is global.
 */
export function createTimeSkippingEnv(): Promise<TestWorkflowEnvironment> {
  return TestWorkflowEnvironment.createTimeSkipping({
    server: {
      executable: { type: 'existing-path', path: required(testEnvVars.timeSkippingServer) },
      extraArgs: ['--enable-time-skipping'],
    },
  });
}

/** A task queue no other test polls, so workers never steal each other's tasks. */
export function uniqueTaskQueue(label: string): string {
  return `test-${label.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}-${randomUUID().slice(0, 8)}`;
}

/** A worker on the prebuilt bundle: bundling once per suite instead of once per worker. */
export function createTestWorker(
  env: TestWorkflowEnvironment,
  options: Omit<WorkerOptions, 'connection' | 'workflowBundle' | 'workflowsPath'>,
): Promise<Worker> {
  return Worker.create({
    connection: env.nativeConnection,
    namespace: 'default',
    workflowBundle: { codePath: required(testEnvVars.workflowBundle) },
    ...options,
  });
}

export const workflowBundlePath = (): string => required(testEnvVars.workflowBundle);
export const temporalCliPath = (): string => required(testEnvVars.temporalCli);
