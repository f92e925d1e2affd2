/**
 * Part of `npm run build`: bundles the compiled workflows once, into dist/workflow-bundle.js.
 * A worker started from dist loads that file instead of running webpack at every start, which
 * costs seconds and a few hundred MB of peak memory per process (Temporal's advice for
 * production workers). Workers started from source (tsx) still bundle for themselves.
 */
import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DefaultLogger, bundleWorkflowCode } from '@temporalio/worker';
import { preloadModules, workflowsPath } from './workflow-bundle-options';

export const PREBUILT_BUNDLE = join(__dirname, '..', 'workflow-bundle.js');

async function main(): Promise<void> {
  const { code } = await bundleWorkflowCode({ workflowsPath, preloadModules, logger: new DefaultLogger('WARN') });
  // Renamed into place: a worker starting meanwhile reads the old bundle or the new, never half.
  writeFileSync(`${PREBUILT_BUNDLE}.tmp`, code);
  renameSync(`${PREBUILT_BUNDLE}.tmp`, PREBUILT_BUNDLE);
}

if (require.main === module) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
