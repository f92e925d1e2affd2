import { allHandlersFinished, condition, continueAsNew, proxyActivities, setCurrentDetails, setHandler, workflowInfo } from '@temporalio/workflow';
import { z } from 'zod';
import type { Activities } from '../activities';
import { checkNightUpdate, describeKeyUpdate, keyReportFactsUpdate, listBackupsUpdate, listKeyVersionsUpdate, lookupDeskStateQuery, resolveKeysUpdate, type LookupDeskState } from './lookup-messages';
import { checkUpdate, databaseIdSchema, keyIdSchema, parseInput, positiveIntSchema } from './workflow-input';

// The CLI is waiting on each answer: a few quick tries, then a clear failure. Each look-up ends
// by the time its CLI gives up (scheduleToClose), so that a slow one cannot hold the desk's
// hand-over to its next run long after nobody waits for it.
const quick = { startToCloseTimeout: '30 seconds', scheduleToCloseTimeout: '30 seconds', retry: { initialInterval: '500 milliseconds', maximumAttempts: 3 } } as const;
const { describeKey, resolveKeyRefs, listBackups } = proxyActivities<Activities>(quick);
// Reads every retained backup's header: a long catalog takes a while (`key versions` waits 5 min).
const { listKeyVersions, keyReportFacts } = proxyActivities<Activities>({ ...quick, startToCloseTimeout: '5 minutes', scheduleToCloseTimeout: '5 minutes' });
// One KMS call per key in use and one engine call per database (`keyops doctor` waits 2 min by default at most).
const { checkNightReadiness } = proxyActivities<Activities>({ ...quick, startToCloseTimeout: '2 minutes', scheduleToCloseTimeout: '2 minutes' });

/** Look-ups a run answers before it continues as new, whatever the server suggests. */
const LOOKUPS_PER_RUN = 500;

export interface LookupDeskInput {
  /** Runs before this one (it continues as new). */
  generation?: number;
  /** Look-ups per run; default LOOKUPS_PER_RUN (tests hand over sooner). */
  perRun?: number;
}

const reportFilterSchema = z.object({ keyIds: z.array(keyIdSchema).max(1000).optional(), since: z.iso.datetime().optional() }).strict();
const backupFilterSchema = z.object({ databaseId: databaseIdSchema.optional(), limit: positiveIntSchema.max(100_000).optional() });

/**
 * Answers the CLI's read-only look-ups (`key show`, `key versions`, `rewrap status`, `backup
 * list`, key names) as updates, each by one activity on a worker of this task queue. One run
 * serves them all, so they add nothing to the workflow list; it continues as new every
 * LOOKUPS_PER_RUN look-ups or when the server suggests it, after the answers in flight are sent.
 */
export async function lookupDesk(input: LookupDeskInput = {}): Promise<never> {
  parseInput('lookupDesk', z.object({ generation: z.number().int().nonnegative().optional(), perRun: positiveIntSchema.max(10_000).optional() }), input);
  const perRun = input.perRun ?? LOOKUPS_PER_RUN;
  const state: LookupDeskState = { answered: 0, generation: input.generation ?? 0 };
  const show = () =>
    setCurrentDetails(
      `**Look-ups for task queue \`${workflowInfo().taskQueue}\`**: ${state.answered} answered by this run (run ${state.generation + 1}). ` +
        'Each is an update here, answered by one activity on a worker; none changes anything.',
    );
  // Taken when its handler starts, so that the look-ups accepted in one batch count at once.
  let taken = 0;
  const answered = <T>(value: T): T => {
    state.answered++;
    show();
    return value;
  };
  // Refused once the run has taken its share or the server suggested a new run: the client
  // asks the next run. Without this, steady look-ups could keep a run from ever handing over.
  let closing = false;
  const open = () => {
    if (closing || taken >= perRun) throw new Error('this run is handing over to the next one: ask again');
  };
  const take = () => void taken++;
  setHandler(lookupDeskStateQuery, () => state);
  setHandler(
    describeKeyUpdate,
    async (keyId) => {
      take();
      return answered(await describeKey.executeWithOptions({ summary: `read the KMS metadata and rewrapped version of key ${keyId}` }, [keyId]));
    },
    { description: 'The KMS metadata and rewrapped version of a key (keyops key show, rewrap status)', validator: (keyId) => (open(), checkUpdate('describeKey', keyIdSchema, keyId)) },
  );
  setHandler(
    resolveKeysUpdate,
    async (refs) => {
      take();
      return answered(await resolveKeyRefs.executeWithOptions({ summary: `look up key(s) ${refs.join(', ')} in the KMS` }, [refs]));
    },
    { description: 'Key ids or names to key ids (keyops key rotate demo, key: demo in a schedule file)', validator: (refs) => (open(), checkUpdate('resolveKeys', z.array(keyIdSchema).max(1000), refs)) },
  );
  setHandler(
    listBackupsUpdate,
    async (filter) => {
      take();
      const which = filter.databaseId ? `database ${filter.databaseId}` : 'every database';
      return answered(await listBackups.executeWithOptions({ summary: `read the backup catalog for ${which}, newest first${filter.limit ? ` (at most ${filter.limit})` : ''}` }, [filter]));
    },
    { description: 'The backup catalog, newest first (keyops backup list)', validator: (filter) => (open(), checkUpdate('listBackups', backupFilterSchema, filter)) },
  );
  setHandler(
    listKeyVersionsUpdate,
    async (keyId) => {
      take();
      return answered(await listKeyVersions.executeWithOptions({ summary: `list the versions of key ${keyId} and the WDEKs, pages and backups that need each` }, [{ keyId }]));
    },
    { description: 'Every version of a key and what still needs it (keyops key versions)', validator: (keyId) => (open(), checkUpdate('listKeyVersions', keyIdSchema, keyId)) },
  );
  setHandler(
    keyReportFactsUpdate,
    async (filter) => {
      take();
      const which = filter.keyIds?.length ? `key(s) ${filter.keyIds.join(', ')}` : 'every key in use';
      return answered(await keyReportFacts.executeWithOptions({ summary: `read the KMS metadata, versions, backups and nights of ${which} for keyops report` }, [filter]));
    },
    { description: 'KMS metadata, versions and what needs each, backups and nights of keys (keyops report)', validator: (filter) => (open(), checkUpdate('keyReportFacts', reportFilterSchema, filter)) },
  );
  setHandler(
    checkNightUpdate,
    async () => {
      take();
      return answered(await checkNightReadiness.executeWithOptions({ summary: 'check what tonight needs of the worker: KMSs, engines, backup space, master secret' }, []));
    },
    { description: 'What tonight needs of the worker: every KMS and engine answers, backup space, the local KMS master secret (keyops doctor)', validator: () => open() },
  );
  show();
  await condition(() => taken >= perRun || workflowInfo().continueAsNewSuggested);
  closing = true;
  await condition(allHandlersFinished);
  return continueAsNew<typeof lookupDesk>({ generation: state.generation + 1, ...(input.perRun ? { perRun: input.perRun } : {}) });
}
