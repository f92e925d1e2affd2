import { existsSync, readFileSync } from 'node:fs';
import { status as grpcStatus } from '@grpc/grpc-js';
import { type Client, type Connection, isGrpcServiceError, ScheduleNotFoundError } from '@temporalio/client';
import { SearchAttributeType } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import type { Command } from 'commander';
import type { NightCheck } from '../../activities/night-readiness';
import { asKeyId } from '../../activities/kms/key-id';
import { checkNightUpdate } from '../../workflows/lookup-messages';
import { keyopsSearchAttributes } from '../../workflows/search-attributes';
import { bulkTaskQueue, TASK_QUEUE } from '../../workflows/task-queue';
import { CliError, ExitCode } from '../cli-error';
import { connectOrExplain } from '../connect-or-explain';
import type { GlobalOptions } from '../global-options';
import { resolveKeyRefs } from '../key-ref';
import { emit } from '../output';
import { lookUpOnWorker } from '../run-on-worker';
import { backupScheduleId } from '../schedules/nightly-backup-schedule';
import { rotationScheduleId } from '../schedules/root-key-rotation-schedule';
import { parseScheduleFile, ScheduleFileError } from '../schedules/schedule-file';
import { WATCH_SCHEDULE_ID } from '../schedules/watch-root-keys-schedule';
import { DRILL_SCHEDULE_ID } from '../schedules/restore-drill-schedule';
import { livePollers } from '../live-pollers';

/**
 * One line of `keyops doctor`. `ok` is null for a check that was not run (its precondition
 * failed, or there is nothing to check): it prints as SKIP and fails nothing by itself.
 */
export interface DoctorCheck {
  check: string;
  ok: boolean | null;
  detail: string;
  fix: string | null;
}

export interface DoctorOptions {
  taskQueue: string;
  /** The schedule file to compare with the server; undefined: none. */
  scheduleFile?: string | undefined;
  /** How long the worker-side checks may take. */
  timeoutSeconds: number;
}

const ok = (check: string, detail: string): DoctorCheck => ({ check, ok: true, detail, fix: null });
const fail = (check: string, detail: string, fix: string | null): DoctorCheck => ({ check, ok: false, detail, fix });
const skip = (check: string, why: string): DoctorCheck => ({ check, ok: null, detail: `not run: ${why}`, fix: null });
const firstLine = (err: unknown): string => (err instanceof Error ? err.message : String(err)).split('\n')[0]!;

/** What follows the server check, named for the "not run" lines when the server is unreachable. */
function laterChecks(taskQueue: string): string[] {
  return [
    'namespace exists',
    'search attributes registered',
    `workers poll task queue "${taskQueue}"`,
    `workers poll task queue "${bulkTaskQueue(taskQueue)}"`,
    'worker-side checks (KMS, engines, backup space, master secret)',
    'schedules applied and active',
    'no run waits for an operator',
  ];
}

const queueOption = (taskQueue: string): string => (taskQueue === TASK_QUEUE ? '' : ` --task-queue ${taskQueue}`);

export function searchAttributeCheck(registered: Record<string, temporal.api.enums.v1.IndexedValueType>, namespace: string): DoctorCheck {
  const expected = (type: SearchAttributeType) =>
    type === SearchAttributeType.INT ? temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_INT : temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD;
  const missing = keyopsSearchAttributes.filter((a) => registered[a.name] !== expected(a.type));
  if (missing.length === 0) return ok('search attributes registered', keyopsSearchAttributes.map((a) => a.name).join(', '));
  return fail(
    'search attributes registered',
    `missing or of another type: ${missing.map((a) => a.name).join(', ')}`,
    `temporal operator search-attribute create --namespace ${namespace} ${missing.map((a) => `--name ${a.name} --type ${a.type === SearchAttributeType.INT ? 'Int' : 'Keyword'}`).join(' ')}`,
  );
}


async function pollerChecks(connection: Connection, namespace: string, taskQueue: string): Promise<{ checks: DoctorCheck[]; workerPolls: boolean }> {
  const { TASK_QUEUE_TYPE_WORKFLOW: WORKFLOW, TASK_QUEUE_TYPE_ACTIVITY: ACTIVITY } = temporal.api.enums.v1.TaskQueueType;
  const startWorker = `./temporal-dev.sh up -d (or KEYOPS_TASK_QUEUE=${taskQueue} npm run worker)`;
  const checks: DoctorCheck[] = [];
  let workerPolls = false;
  const main = `workers poll task queue "${taskQueue}"`;
  try {
    const [workflow, activity] = await Promise.all([livePollers(connection, namespace, taskQueue, WORKFLOW), livePollers(connection, namespace, taskQueue, ACTIVITY)]);
    workerPolls = workflow.length > 0 && activity.length > 0;
    const missing = [...(workflow.length === 0 ? ['workflow'] : []), ...(activity.length === 0 ? ['activity'] : [])];
    checks.push(
      missing.length === 0
        ? ok(main, `${workflow.length} workflow and ${activity.length} activity poller(s): ${[...new Set([...workflow, ...activity].map((p) => p.identity))].join(', ')}`)
        : fail(main, `no live ${missing.join(' or ')} poller`, startWorker),
    );
  } catch (err) {
    checks.push(fail(main, firstLine(err), null));
  }
  const bulk = `workers poll task queue "${bulkTaskQueue(taskQueue)}"`;
  try {
    // Only activities run there (CPU-bound chunks): workflow pollers are not expected.
    const activity = await livePollers(connection, namespace, bulkTaskQueue(taskQueue), ACTIVITY);
    checks.push(activity.length > 0 ? ok(bulk, `${activity.length} activity poller(s)`) : fail(bulk, 'no live activity poller (rewraps and verifications would wait)', startWorker));
  } catch (err) {
    checks.push(fail(bulk, firstLine(err), null));
  }
  return { checks, workerPolls };
}

async function workerSideChecks(client: Client, opts: DoctorOptions, workerPolls: boolean): Promise<DoctorCheck[]> {
  const what = 'worker-side checks (KMS, engines, backup space, master secret)';
  if (!workerPolls) return [skip(what, `no worker polls task queue "${opts.taskQueue}"`)];
  try {
    const checks: NightCheck[] = await lookUpOnWorker(client, checkNightUpdate, { taskQueue: opts.taskQueue, args: [], summary: 'keyops doctor: worker-side checks', timeoutSeconds: opts.timeoutSeconds }, (failure) => {
      throw new CliError(failure.message, ExitCode.failed);
    });
    return checks.map((c) => ({ check: c.check, ok: c.ok, detail: c.detail, fix: c.fix }));
  } catch (err) {
    const unknownUpdate = /checkNight/.test(firstLine(err)) && /handler|not found|unknown/i.test(firstLine(err));
    return [fail(what, firstLine(err), unknownUpdate ? 'restart the workers on this version of keyops (theirs has no checkNight)' : 'check the worker with keyops ping --workflow and its log (./temporal-dev.sh logs worker)')];
  }
}

/** The schedule ids the file declares: rotations by name are resolved by a worker. */
async function declaredSchedules(client: Client, file: ReturnType<typeof parseScheduleFile>, taskQueue: string, workerPolls: boolean): Promise<{ ids: string[]; problems: DoctorCheck[] }> {
  const ids = [...file.backups.map((b) => backupScheduleId(b.database)), ...(file.watch ? [WATCH_SCHEDULE_ID] : []), ...(file.drills ? [DRILL_SCHEDULE_ID] : [])];
  const problems: DoctorCheck[] = [];
  const byName = file.rotations.filter((r) => !asKeyId(r.key));
  for (const r of file.rotations) {
    const keyId = asKeyId(r.key);
    if (keyId) ids.push(rotationScheduleId(keyId));
  }
  if (byName.length > 0) {
    const what = `rotation schedules of key(s) ${byName.map((r) => r.key).join(', ')}`;
    if (!workerPolls) {
      problems.push(skip(what, 'key names are resolved by a worker, and none polls'));
    } else {
      try {
        for (const ref of await resolveKeyRefs(client, byName.map((r) => r.key), taskQueue)) {
          if (ref.keyId !== undefined) ids.push(rotationScheduleId(ref.keyId));
          else problems.push(fail(`rotation schedule of key ${ref.ref}`, ref.problem, null));
        }
      } catch (err) {
        problems.push(fail(what, `cannot resolve the key names: ${firstLine(err)}`, null));
      }
    }
  }
  return { ids, problems };
}

async function scheduleChecks(client: Client, opts: DoctorOptions, workerPolls: boolean): Promise<DoctorCheck[]> {
  const path = opts.scheduleFile;
  if (!path) return [skip('schedules applied and active', 'no schedules.yaml here; pass --file FILE')];
  const apply = `keyops schedule apply -f ${path}${queueOption(opts.taskQueue)}`;
  let file;
  try {
    file = parseScheduleFile(readFileSync(path, 'utf8'), path);
  } catch (err) {
    const detail = err instanceof ScheduleFileError ? err.problems.join('; ') : firstLine(err);
    return [fail(`schedule file ${path}`, detail, `fix the file, then ${apply}`)];
  }
  const { ids, problems } = await declaredSchedules(client, file, opts.taskQueue, workerPolls);
  const checks: DoctorCheck[] = [];
  for (const id of ids) {
    const what = `schedule ${id}`;
    try {
      // describe, not list: the list is eventually consistent, and a just-applied schedule is missing from it.
      const { state } = await client.schedule.getHandle(id).describe();
      if (state.paused) checks.push(fail(what, `paused${state.note ? ` (${state.note})` : ''}, and ${path} does not say so`, `keyops schedule unpause ${id}`));
      else checks.push(ok(what, 'applied and active'));
    } catch (err) {
      checks.push(err instanceof ScheduleNotFoundError ? fail(what, `not applied (${path} declares it)`, apply) : fail(what, firstLine(err), null));
    }
  }
  if (ids.length === 0 && problems.length === 0) checks.push(ok('schedules applied and active', `${path} declares none`));
  return [...checks, ...problems];
}

async function needsOperatorCheck(client: Client, taskQueue: string): Promise<DoctorCheck> {
  const what = 'no run waits for an operator';
  const query = `TaskQueue = "${taskQueue}" AND Phase = "needs-operator" AND ExecutionStatus = "Running"`;
  try {
    const ids: string[] = [];
    for await (const w of client.workflow.list({ query })) ids.push(w.workflowId);
    if (ids.length === 0) return ok(what, 'none in needs-operator');
    const fixes = ids.sort().map((id) => {
      const mk = /^mk-rotation\/([^/]+)\/([^/]+)$/.exec(id);
      return mk ? `keyops mk status ${mk[1]} ${mk[2]} then keyops mk decide ${mk[1]} ${mk[2]} --action <action>` : `keyops runs --query 'WorkflowId = "${id}"'`;
    });
    return fail(what, `${ids.length} run(s) wait in needs-operator: ${ids.join(', ')}`, fixes.join('; '));
  } catch (err) {
    return fail(what, firstLine(err), null);
  }
}

/** Every check after the connection: each failure is reported, and only what depends on it is skipped. */
export async function runDoctor(client: Client, connection: Connection, namespace: string, address: string, opts: DoctorOptions): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  const server = `server reachable at ${address}`;
  const remaining = (from: number, why: string) => laterChecks(opts.taskQueue).slice(from).map((c) => skip(c, why));
  try {
    const { serverVersion } = await connection.workflowService.getSystemInfo({});
    checks.push(ok(server, `Temporal ${serverVersion || 'unknown'}`));
  } catch (err) {
    return [fail(server, firstLine(err), './temporal-dev.sh up -d (or --address / TEMPORAL_ADDRESS for your cluster)'), ...remaining(0, 'the server is unreachable')];
  }
  try {
    await connection.workflowService.describeNamespace({ namespace });
    checks.push(ok('namespace exists', namespace));
  } catch (err) {
    const missing = isGrpcServiceError(err) && err.code === grpcStatus.NOT_FOUND;
    checks.push(fail('namespace exists', missing ? `namespace "${namespace}" does not exist` : firstLine(err), missing ? `temporal operator namespace create --namespace ${namespace}` : null));
    return [...checks, ...remaining(1, `namespace "${namespace}" is not usable`)];
  }
  try {
    const { customAttributes } = await connection.operatorService.listSearchAttributes({ namespace });
    checks.push(searchAttributeCheck(customAttributes ?? {}, namespace));
  } catch (err) {
    checks.push(fail('search attributes registered', firstLine(err), null));
  }
  const pollers = await pollerChecks(connection, namespace, opts.taskQueue);
  checks.push(...pollers.checks);
  checks.push(...(await workerSideChecks(client, opts, pollers.workerPolls)));
  checks.push(...(await scheduleChecks(client, opts, pollers.workerPolls)));
  checks.push(await needsOperatorCheck(client, opts.taskQueue));
  return checks;
}

/** `OK   what: detail`, `FAIL what: why` and its `  fix:` line, `SKIP what: not run: why`. */
export function formatChecks(checks: DoctorCheck[]): string[] {
  return checks.flatMap((c) => {
    const head = `${c.ok === true ? 'OK  ' : c.ok === false ? 'FAIL' : 'SKIP'} ${c.check}: ${c.detail}`;
    return c.ok === false && c.fix ? [head, `  fix: ${c.fix}`] : [head];
  });
}

/** Whether tonight would fail: a failed check, or checks not run because something failed. */
export const nightWouldFail = (checks: DoctorCheck[]): boolean => checks.some((c) => c.ok === false);

export function registerDoctorCommand(program: Command): void {
  program
    .command('doctor')
    .description("check everything tonight's runs depend on: server, workers, KMSs, engines, backup space, schedules, runs waiting for an operator")
    .option('-q, --task-queue <name>', 'task queue of the keyops workers', TASK_QUEUE)
    .option('-f, --file <path>', 'the schedule file to compare with the server (default: schedules.yaml, if there is one)')
    .option('--timeout <seconds>', 'how long the worker-side checks may take', '60')
    .addHelpText(
      'after',
      `
Each check prints one line, and a failed one the command that fixes it; the exit code is 1 when
something would fail tonight (3 when the server is unreachable). --json gives the same as an
array of {check, ok, detail, fix} (ok null: not run).

Examples:
  keyops doctor                       # task queue "keyops", schedules.yaml if there is one
  keyops doctor -q keyops-eu -f /etc/keyops/schedules.yaml
  keyops doctor --json | jq '.[] | select(.ok == false)'

What it prints (keyops doctor -f schedules.yaml):
  OK   server reachable at 127.0.0.1:7233: Temporal 1.29.1
  OK   namespace exists: default
  OK   search attributes registered: KeyId, DatabaseId, Phase, Outcome, KeyVersion
  OK   workers poll task queue "keyops": 1 workflow and 1 activity poller(s): 4242@host
  FAIL workers poll task queue "keyops-bulk": no live activity poller (rewraps and verifications would wait)
    fix: ./temporal-dev.sh up -d (or KEYOPS_TASK_QUEUE=keyops npm run worker)
  OK   KMS local: answers for 2 key(s) keyops uses
  OK   engines: answer for 1 database(s)
  OK   backup space: 41.2 GiB free in .data/backups, tonight needs about 1.3 MiB
  FAIL local KMS master secret: .data/kms/master.secret has mode 0644, expected 0600
    fix: chmod 600 .data/kms/master.secret
  FAIL schedule nightly-backup/demo: paused, and schedules.yaml does not say so
    fix: keyops schedule unpause nightly-backup/demo
  OK   no run waits for an operator: none in needs-operator`,
    )
    .action(async (opts: { taskQueue: string; file?: string; timeout: string }, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & { taskQueue: string; file?: string; timeout: string }>();
      const timeoutSeconds = Number(opts.timeout);
      if (!Number.isFinite(timeoutSeconds) || timeoutSeconds <= 0) {
        throw new CliError(`--timeout must be a positive number of seconds, got "${opts.timeout}"`, ExitCode.usage);
      }
      const scheduleFile = opts.file ?? process.env.KEYOPS_SCHEDULE_FILE ?? (existsSync('schedules.yaml') ? 'schedules.yaml' : undefined);
      const doctorOptions: DoctorOptions = { taskQueue: opts.taskQueue, scheduleFile, timeoutSeconds };
      let checks: DoctorCheck[];
      let unreachable = false;
      let connected;
      try {
        connected = await connectOrExplain(options);
      } catch (err) {
        // A settings mistake (bad profile) is the usual one-line error; an unreachable server is a check.
        if (!(err instanceof CliError) || err.exitCode !== ExitCode.unreachable) throw err;
        unreachable = true;
        const server = err.message.replace(/^cannot reach Temporal at (\S+): .*$/, 'server reachable at $1');
        checks = [
          fail(server, err.message.replace(/^cannot reach Temporal at \S+: /, ''), './temporal-dev.sh up -d (or --address / TEMPORAL_ADDRESS for your cluster)'),
          ...laterChecks(opts.taskQueue).map((c) => skip(c, 'the server is unreachable')),
        ];
      }
      if (connected) {
        try {
          checks = await runDoctor(connected.client, connected.connection, connected.resolved.namespace, connected.resolved.address, doctorOptions);
          unreachable = checks[0]?.ok === false;
        } finally {
          await connected.connection.close();
        }
      }
      const result = checks!;
      emit(options, result, () => formatChecks(result));
      if (nightWouldFail(result)) process.exitCode = unreachable ? ExitCode.unreachable : ExitCode.failed;
    });
}
