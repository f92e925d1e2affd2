import { proxyActivities } from '@temporalio/workflow';
import { z } from 'zod';
import type { Activities } from '../activities';
import type { DemoData, DemoOptions } from '../activities/demo-data';
import { parseInput } from './workflow-input';

const { initDemoData } = proxyActivities<Activities>({
  startToCloseTimeout: '2 minutes',
  retry: { maximumAttempts: 3 },
  summary: 'create the demo root key, encrypted database and WDEKs (skipped if they exist)',
});

const initDemoInputSchema = z.object({ wdeks: z.number().int().min(1).max(100_000).optional() }).strict();

/** `keyops init`: the demo key, database and WDEKs, created once (the worker holds the KMS and files). */
export async function initDemo(input: DemoOptions = {}): Promise<DemoData> {
  parseInput('initDemo', initDemoInputSchema, input);
  return initDemoData(input);
}
