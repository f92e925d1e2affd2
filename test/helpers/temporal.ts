import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { Client } from '@temporalio/client';
import { SearchAttributeType } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { type LogLevel, Runtime, type WorkerOptions } from '@temporalio/worker';
import { KeyopsWorkers } from '../../workers/keyops-workers';
import { keyopsSearchAttributes } from '../../workflows/search-attributes';
import { dumpHistories, harvestDataDir, instrumentKeyMaterial, queryResultInterceptor, sdkTestLogger, workflowIdRecorder } from './key-material';
import { testEnvVars } from './test-env-vars';

// Before any worker or connection exists in this test process; TEST_LOG_LEVEL=INFO shows more.
// Everything from DEBUG up also goes to the key-material scan's log file (key-material.ts).
Runtime.install({ logger: sdkTestLogger((process.env.TEST_LOG_LEVEL as LogLevel | undefined) ?? 'WARN') });
// The scan also needs the real keys this process creates: spy on the KMS and crypto units.
instrumentKeyMaterial();

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run tests through \`npm test [-- test/FILE.test.ts]\``);
  return value;
}

/** Address of the suite's one dev server. */
export const testServerAddress = (): string => required(testEnvVars.address);

/** Connects to the suite's one dev server (started by test/run-tests.ts). */
export function connectTestEnv(): Promise<TestWorkflowEnvironment> {
  return TestWorkflowEnvironment.createFromExistingServer({
    address: testServerAddress(),
    namespace: 'default',
    // Query results go to the key-material scan's logs (key-material.ts).
    client: { interceptors: { workflow: [queryResultInterceptor] } },
  });
}

/**
 * A private Java test server whose clock jumps ahead whenever every workflow is only waiting on
 * timers, so hour-long waits finish in seconds. One per test file: its clock is global.
 */
export async function createTimeSkippingEnv(): Promise<TestWorkflowEnvironment> {
  // The SDK gives a starting server 5 s to accept connections (sdk-core ephemeral_server), and a
  // JVM on 2 busy cores sometimes needs longer: try again rather than fail the suite.
  for (let attempt = 1; ; attempt++) {
    try {
      const env = await TestWorkflowEnvironment.createTimeSkipping({
        server: {
          executable: { type: 'existing-path', path: required(testEnvVars.timeSkippingServer) },
          extraArgs: ['--enable-time-skipping'],
        },
      });
      // As the dev server does at start: workflows that upsert them fail their tasks otherwise.
      await env.connection.operatorService.addSearchAttributes({
        namespace: 'default',
        searchAttributes: Object.fromEntries(
          keyopsSearchAttributes.map((a) => [
            a.name,
            a.type === SearchAttributeType.INT ? temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_INT : temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
          ]),
        ),
      });
      return env;
    } catch (err) {
      if (attempt >= 3) throw err;
    }
  }
}

/** A task queue no other test polls, so workers never steal each other's tasks. */
export function uniqueTaskQueue(label: string): string {
  return `test-${label.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}-${randomUUID().slice(0, 8)}`;
}

/**
 * The workers of one keyops process (main and bulk task queues, as production runs them) on the
 * prebuilt bundle: bundling once per suite instead of once per worker.
 */
export function createTestWorker(
  env: TestWorkflowEnvironment,
  options: Omit<WorkerOptions, 'connection' | 'workflowBundle' | 'workflowsPath'>,
): Promise<KeyopsWorkers> {
  return KeyopsWorkers.create({
    connection: env.nativeConnection,
    namespace: 'default',
    workflowBundle: { codePath: required(testEnvVars.workflowBundle) },
    ...options,
  });
}

export const workflowBundlePath = (): string => required(testEnvVars.workflowBundle);
export const temporalCliPath = (): string => required(testEnvVars.temporalCli);

export interface SuiteFixture {
  /** The suite's Temporal environment (valid inside tests). */
  readonly env: TestWorkflowEnvironment;
  /**
   * The client tests should use. On a time-skipping server it never unlocks time skipping by
   * itself (env.client does, while awaiting a result): the server clock then moves only by
   * `env.sleep()`. Otherwise, under load, the server skips ahead while a worker is still busy
   * with a workflow task and times the run out (sdk-java#1291).
   */
  readonly client: Client;
  /** A fresh temporary directory for the suite, removed afterwards. */
  readonly dir: string;
}

/**
 * Registers before/after hooks that connect to the shared dev server (or start a private
 * time-skipping server) and make a temporary directory, and clean both up.
 */
export function useSuiteFixture(label: string, server: 'shared' | 'time-skipping' = 'shared'): SuiteFixture {
  let env: TestWorkflowEnvironment | undefined;
  let client: Client | undefined;
  let dir: string | undefined;
  // The time-skipping server lists no workflows: the scan walks from the ids this client touched.
  const recorder = workflowIdRecorder();
  before(async () => {
    env = server === 'shared' ? await connectTestEnv() : await createTimeSkippingEnv();
    client = server === 'shared' ? env.client : new Client({ connection: env.connection, namespace: 'default', interceptors: { workflow: [recorder.interceptor, queryResultInterceptor] } });
    dir = await mkdtemp(join(tmpdir(), `keyops-${label}-`));
  });
  after(async () => {
    // For the key-material scan: a private server's histories end with it; the keys with `dir`.
    if (env && client && server === 'time-skipping') await dumpHistories(client, `time-skipping server ${label}`, { knownWorkflowIds: recorder.ids });
    if (dir) harvestDataDir(dir);
    await env?.teardown();
    if (dir) await rm(dir, { recursive: true, force: true });
  });
  const ready = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error('fixture used outside a test');
    return value;
  };
  return {
    get env() {
      return ready(env);
    },
    get client() {
      return ready(client);
    },
    get dir() {
      return ready(dir);
    },
  };
}
