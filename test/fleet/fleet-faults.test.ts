/**
 * Faults at fleet scale (issue 16, section 3). Not part of `npm test` (it reads test/*.test.ts
 * only): `npm run test:fleet-faults`. On ./temporal-cluster.sh's cluster, a fleet night of at least
 * 200 real encrypted databases (KEYOPS_FLEET_DATABASES raises it) under 20 keys, 4 of them rotated
 * in the KMS just before every schedule is triggered at once. As the night goes on, driven by how
 * many backups have closed, the history service is SIGKILLed and started again (at a quarter),
 * then the matching service (at half), then one of the three keyops workers is SIGKILLed and
 * replaced (at three quarters). Afterwards every backup ended exactly once, catalogued and
 * verified; no rewrap ran twice; nothing is left stuck.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { WatchResult } from '../../workflows/watch-root-keys';
import { type Fleet, applySchedules, closedBackups, createFleet, listBackupRuns, rotateInKms, startWatcher, triggerAll, writeScheduleFile } from '../helpers/fleet';
import { captureLogFiles, dumpHistoriesAt, harvestDataDir } from '../helpers/key-material';
import { temporalCliPath, uniqueTaskQueue } from '../helpers/temporal';
import { type TemporalCluster, startCluster } from '../helpers/temporal-cluster';
import { waitUntil } from '../helpers/wait-until';
import { WorkerProcess } from '../helpers/worker-process';
import { activitiesInFlight, historyEffects } from './fault-evidence';
import { checkBackups, checkNothingStuck, checkRewraps, restoreSample } from './night-checks';

/** At least 200, as issue 16 asks; more fit as long as the suite still ends within SUITE_MS. */
const DATABASES = Number(process.env.KEYOPS_FLEET_DATABASES ?? 200);
if (!Number.isInteger(DATABASES) || DATABASES < 200) throw new Error(`KEYOPS_FLEET_DATABASES must be a whole number of at least 200, got ${process.env.KEYOPS_FLEET_DATABASES}`);
const KEYS = 20;
const ROTATED = 4;
const WORKERS = 3;
const ROWS = 50;
/**
 * test/run-tests.ts stops a test file after 10 minutes, without its after() hook: the suite times
 * out first, so that the cluster and the workers are still torn down.
 */
const SUITE_MS = 9 * 60_000;
/** How long the night may take from the first trigger, faults and restarts included, on 2 shared cores. */
const NIGHT_MS = 5 * 60_000;

describe(`faults at fleet scale: ${DATABASES} databases on the cluster; history, matching and a worker SIGKILLed mid-night`, { timeout: SUITE_MS }, () => {
  let dir: string | undefined;
  let cluster: TemporalCluster | undefined;
  let fleet: Fleet | undefined;
  const workers: WorkerProcess[] = [];
  const taskQueue = uniqueTaskQueue('fleet-faults');
  let night: { t0: number; rotated: string[]; watch: WatchResult } | undefined;

  const startWorker = async () => {
    const worker = new WorkerProcess({ ...fleet!.workerEnv(cluster!.address, taskQueue), KEYOPS_LOG_FORMAT: 'json', KEYOPS_METRICS_ADDRESS: 'off' });
    workers.push(worker);
    // From source, each worker bundles the workflows first: long on 2 cores shared with the cluster.
    await worker.waitFor('worker started', 5 * 60_000);
    return worker;
  };
  const ready = () => {
    assert.ok(cluster && fleet && night, 'the night ran');
    return { cluster, fleet, night };
  };

  before(
    async () => {
      dir = await mkdtemp(join(tmpdir(), 'keyops-fleet-faults-'));
      cluster = await startCluster(join(dir, 'data'), { cli: temporalCliPath() });
      fleet = await createFleet({ dataDir: join(dir, 'keyops'), databases: DATABASES, keys: KEYS, rows: ROWS });
      await Promise.all(Array.from({ length: WORKERS }, startWorker));
      const file = join(dir, 'fleet-schedules.yaml');
      writeScheduleFile(file, fleet.databases);
      assert.equal(await applySchedules(file, cluster.address, taskQueue), DATABASES, 'one schedule created per database');
    },
    { timeout: SUITE_MS },
  );

  after(async () => {
    await Promise.all(
      workers
        .filter((w) => w.child.exitCode === null && w.child.signalCode === null)
        .map((w) => {
          const gone = once(w.child, 'exit');
          w.child.kill('SIGTERM');
          return gone;
        }),
    );
    fleet?.close();
    if (cluster) {
      await dumpHistoriesAt(cluster.address, 'temporal cluster (fleet faults)', { noteFailure: false });
      await cluster.stop();
    }
    if (dir) {
      captureLogFiles(join(dir, 'data', 'cluster', 'logs'), 'temporal-cluster-fleet');
      harvestDataDir(join(dir, 'keyops'));
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('the night goes on through a history restart, a matching restart and a worker replaced; every backup closes', { timeout: SUITE_MS }, async () => {
    const { client } = cluster!;
    const timeline: [number, string][] = [];
    const mark = (what: string, at = Date.now()) => timeline.push([at, what]);
    const closed = () => closedBackups(client, taskQueue);
    /** A fault must hit a night still in progress, or it proves nothing. */
    const fault = async (what: string, act: () => Promise<void>) => {
      const closedThen = await closed();
      assert.ok(closedThen < DATABASES, `${what}: the night had already ended`);
      await act();
      mark(`${what} (${closedThen}/${DATABASES} backups closed)`);
    };
    const restart = async (service: 'history' | 'matching') => {
      await fault(`${service} service SIGKILLed`, async () => void (await cluster!.script('kill', service)));
      const up = await cluster!.script('up');
      assert.match(up.stderr, new RegExp(`starting the ${service} service`));
      mark(`${service} service started again`);
    };

    // Just before the window: keys rotated in the KMS only, as a rotation policy would.
    const rotated = fleet!.keyIds.slice(0, ROTATED);
    await rotateInKms(fleet!.kms, rotated);
    const t0 = Date.now();
    // Every wait below is on what the night has reached, within one bound for the whole night.
    const until = <T>(what: string, probe: () => Promise<T | undefined> | T | undefined) => waitUntil(what, probe, Math.max(0, t0 + NIGHT_MS - Date.now()));
    const closedAtLeast = (n: number) => until(`${n} of ${DATABASES} backups to close`, async () => ((await closed()) >= n ? true : undefined));
    await triggerAll(client, fleet!.databases);
    mark(`${DATABASES} schedules triggered (${ROTATED} of ${KEYS} keys rotated just before)`);
    const watch = await startWatcher(client, taskQueue, `fleet-watch-${t0}`);
    mark('watcher started');

    await closedAtLeast(Math.ceil(DATABASES / 4));
    await restart('history');
    await closedAtLeast(Math.ceil(DATABASES / 2));
    await restart('matching');
    await closedAtLeast(Math.ceil((DATABASES * 3) / 4));
    // The worker killed is one with activities in flight (its journal says so), or the kill proves little.
    const busiest = () => {
      const busy = workers.filter((w) => w.child.exitCode === null && w.child.signalCode === null).map((w) => ({ w, n: activitiesInFlight(fleet!.dataDir, w.child.pid!) }));
      return busy.sort((a, b) => b.n - a.n).find((b) => b.n > 0);
    };
    const victim = await until('a keyops worker with activities in flight', busiest);
    await fault(`keyops worker pid ${victim.w.child.pid} SIGKILLed with ${victim.n} activities in flight`, async () => {
      const gone = once(victim.w.child, 'exit');
      victim.w.child.kill('SIGKILL');
      await gone;
    });
    await startWorker();
    mark('replacement worker started');
    await closedAtLeast(DATABASES);
    const runs = await listBackupRuns(client, taskQueue);
    mark('every backup closed', Math.max(...runs.map((r) => r.close)));
    night = { t0, rotated, watch: await watch.result() };
    // The waiting backups were released when their key's rewrap ended: when was that?
    for (const [i, id] of night.watch.started.entries()) {
      const closedAt = (await client.workflow.getHandle(id).describe()).closeTime;
      if (closedAt) mark(`rewrap ${i + 1} of ${night.watch.started.length} done and announced`, closedAt.getTime());
    }

    const lines = timeline.sort((a, b) => a[0] - b[0]).map(([at, what]) => `${((at - t0) / 1000).toFixed(1).padStart(6)} s  ${what}`);
    const effects = await historyEffects(client, [...runs, ...night.watch.started.map((workflowId) => ({ workflowId }))]);
    console.log(`fleet fault timeline (seconds since the first trigger):\n${lines.join('\n')}\nin the histories of the backups and rewraps: ${effects}`);
  });

  it('every backup ran exactly once and completed; each is catalogued once, good and verified, its file in place, under the new key version where its key rotated', async () => {
    const { cluster, fleet, night } = ready();
    await checkBackups(cluster.client, fleet, taskQueue, { rotated: night.rotated, rows: ROWS });
  });

  it('the watcher started one rewrap per rotated key; each ran exactly once and completed; every WDEK of those keys is on the new version', async () => {
    const { cluster, fleet, night } = ready();
    await checkRewraps(cluster.client, fleet, taskQueue, night);
  });

  it('nothing is stuck: no backup, wait or rewrap left running; the key entities hold no waiter and no pending activity', async () => {
    const { cluster } = ready();
    await checkNothingStuck(cluster.client, taskQueue);
  });

  it('a sample of the backups (some under rotated keys, some not) restores through `keyops backup verify`', async () => {
    const { cluster, fleet, night } = ready();
    await restoreSample(cluster.address, fleet, taskQueue, { rotated: night.rotated, rows: ROWS, size: 10 });
  });
});
