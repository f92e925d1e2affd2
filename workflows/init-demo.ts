import { proxyActivities } from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { DemoData } from '../activities/demo-data';

const { initDemoData } = proxyActivities<Activities>({
  startToCloseTimeout: '2 minutes',
  retry: { maximumAttempts: 3 },
  summary: 'create the demo root key, encrypted database and WDEKs (skipped if they exist)',
});

/** `keyops init`: the demo key, database and WDEKs, created once (the worker holds the KMS and files). */
export async function initDemo(): Promise<DemoData> {
  return initDemoData();
}
