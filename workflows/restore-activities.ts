import { proxyActivities } from '@temporalio/workflow';
import type { Activities } from '../activities';

/** Quick checks of a catalogued backup's keys: a few tries, then a clear failure. */
export const { checkRestorable } = proxyActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1 second', maximumInterval: '30 seconds', maximumAttempts: 5 },
});

/** Reading a whole backup (test restore, restore): long, heartbeated, retried with backoff. */
export const { restoreBackupImage, verifyBackupImage } = proxyActivities<Activities>({
  startToCloseTimeout: '6 hours',
  heartbeatTimeout: '30 seconds',
  retry: { initialInterval: '2 seconds', backoffCoefficient: 2, maximumInterval: '5 minutes', maximumAttempts: 10 },
});
