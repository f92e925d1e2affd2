import { ApplicationFailure, type Duration, WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import { msToNumber } from '@temporalio/common/lib/time';
import type { Client } from '@temporalio/client';
import type { Command } from 'commander';
import { createRootKey, destroyRootKeyVersion, rotateInKms, rotateRootKey, setRootKeyPolicy, watchRootKeys } from '../../workflows';
import { KMS_ROTATION_SPACING_MS, isEngineKey, rewrapProgressQuery, rewrapWorkflowId } from '../../workflows/root-key-messages';
import type { KeyStatus } from '../../activities';
import { followRun } from '../follow-run';
import { INSTANCE_NAME } from '../../activities/kms/key-id';
import { KEY_ARGUMENT, resolveKeyId } from '../key-ref';
import { TASK_QUEUE } from '../../workflows/task-queue';
import { CliError, ExitCode } from '../cli-error';
import type { GlobalOptions } from '../global-options';
import { emit } from '../output';
import { lookUpOnWorker, rootApplicationFailure, runOnWorker, withClient } from '../run-on-worker';
import { describeKeyUpdate, listKeyVersionsUpdate } from '../../workflows/lookup-messages';
import { WATCH_DETAILS, WATCH_SCHEDULE_ID, applyWatchSchedule } from '../schedules/watch-root-keys-schedule';
import { examples } from '../help-examples';

interface KeyOptions {
  taskQueue: string;
  wait?: boolean;
}

/** Turns a KMS failure that travelled through a workflow into an operator-facing error. */
function explainKmsFailure(err: unknown, keyId: string): never {
  const failure = rootApplicationFailure(err);
  switch (failure?.type) {
    case 'KEY_NOT_FOUND':
      throw new CliError(`key ${keyId} does not exist in the KMS`, ExitCode.usage, 'list the KMS keys, or create one first');
    case 'INVALID_INPUT':
      throw new CliError(failure.message, ExitCode.usage);
    case 'KEY_DISABLED':
      throw new CliError(`key ${keyId} is disabled: the KMS refuses every use of it`, ExitCode.failed, 'enable it in the KMS once the suspected compromise is resolved');
    case 'KEY_ROTATION_NOT_PERMITTED':
      throw new CliError(failure.message, ExitCode.failed);
    default:
      throw new CliError(failure?.message ?? (err instanceof Error ? err.message : String(err)), ExitCode.failed);
  }
}

const describe = (client: Client, keyId: string, taskQueue: string) =>
  lookUpOnWorker(client, describeKeyUpdate, { taskQueue, args: [keyId], summary: `keyops: read metadata of key ${keyId}` }, (failure) => explainKmsFailure(failure, keyId));

/** A key's consumers as `key show` and `rewrap status` list them: WDEKs, engines re-encrypting themselves. */
export function consumerLines(status: Pick<KeyStatus, 'consumers' | 'currentVersion'>): string[] {
  const c = status.consumers;
  if (!c) return [];
  const lines = c.wdeks > 0 || c.engines.length === 0 ? [`  WDEKs: ${c.wdeks}${c.wdeksBehind > 0 ? `, ${c.wdeksBehind} below version ${status.currentVersion}` : ''}`] : [];
  for (const e of c.engines) {
    const where = e.lostKey
      ? 'cannot read its key (key store unreachable)'
      : e.settled
        ? `settled: ${e.spaces} tablespace(s), oldest page version ${e.oldestVersionNeeded ?? 'none'}`
        : `re-encrypting: ${e.spacesBehind} of ${e.spaces} tablespace(s) moving${e.pages ? `, page ${e.pages.done} of ${e.pages.total}` : ''}`;
    lines.push(`  database ${e.databaseId} (${e.description}): ${where}`);
  }
  return ['consumers:', ...lines];
}

function parseEvery(raw: string): number {
  let ms: number;
  try {
    ms = msToNumber(raw as Duration);
  } catch {
    ms = NaN;
  }
  if (!Number.isFinite(ms) || ms < 60_000) {
    throw new CliError(`--every "${raw}" is not a duration of at least one minute (examples: 1h, 30m, "1 day")`, ExitCode.usage);
  }
  return ms;
}

export function registerKeyCommands(program: Command): void {
  const key = program
    .command('key')
    .description('inspect, rotate and watch KMS root keys')
    .addHelpText('after', `\n${KEY_ARGUMENT}\n`);

  key
    .command('watch')
    .description('find keys the KMS rotated outside keyops (policy, by hand) and start their rewrap')
    .option('-q, --task-queue <name>', 'task queue of the keyops workers', TASK_QUEUE)
    .option('--every <duration>', `instead of running once now, create or update the "${WATCH_SCHEDULE_ID}" schedule`)
    .addHelpText(
      'after',
      `
A KMS rotation policy fires at an unpredictable moment within a 24-hour window, so keyops
detects rotations rather than predicting them. ./temporal-dev.sh applies --every 1h.

Examples:
  keyops key watch               # once, now; prints what it started
  keyops key watch --every 1h    # hourly schedule (idempotent)`,
    )
    .action(async (opts: KeyOptions & { every?: string }, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & KeyOptions & { every?: string }>();
      const everyMs = opts.every === undefined ? undefined : parseEvery(opts.every);
      await withClient(options, async (client) => {
        if (everyMs !== undefined) {
          const change = await applyWatchSchedule(client, everyMs, options.taskQueue);
          emit(options, { scheduleId: WATCH_SCHEDULE_ID, everyMs, change }, () => [
            `schedule ${WATCH_SCHEDULE_ID} ${change}: watchRootKeys every ${opts.every}`,
          ]);
          return;
        }
        const result = await client.workflow.execute(watchRootKeys, {
          taskQueue: options.taskQueue,
          workflowId: `watch-root-keys/manual/${new Date().toISOString()}`,
          staticSummary: 'keyops key watch: detect rotations done outside keyops',
          staticDetails: WATCH_DETAILS,
          workflowExecutionTimeout: '5 minutes',
        });
        emit(options, result, () => [
          `checked ${result.checked} key(s); started ${result.started.length} rewrap(s)${result.started.length ? `: ${result.started.join(', ')}` : ''}`,
          ...result.alreadyRunning.map((id) => `already under way: ${id}`),
          ...result.unreadable.map((u) => `could not read key ${u.keyId}: ${u.reason}`),
        ]);
      });
    });

  key
    .command('create <name>')
    .description('create a root key in the KMS and print its id')
    .option('-q, --task-queue <name>', 'task queue of the workers that hold the KMS credentials', TASK_QUEUE)
    .option('--kms <instance>', "the KMS instance of the workers' keyops.yaml that holds the key (default: its default instance)")
    .addHelpText(
      'after',
      `
The key id printed says where the key is: a bare UUID for the local KMS, <instance>:<id> for a KMS
of keyops.yaml (KEYOPS_CONFIG on the workers), e.g. bao:orders.

Examples:
  keyops key create orders
  keyops key create orders --kms bao --json`,
    )
    .action(async (name: string, _opts: KeyOptions, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & KeyOptions & { kms?: string }>();
      if (options.kms !== undefined && !INSTANCE_NAME.test(options.kms)) {
        throw new CliError(`--kms "${options.kms}" is not a KMS instance name (lower-case letters, digits and "-", as in keyops.yaml)`, ExitCode.usage);
      }
      const args: Parameters<typeof createRootKey> = options.kms === undefined ? [name] : [name, { kms: options.kms }];
      const status = await withClient(options, (client) =>
        runOnWorker(
          client,
          createRootKey,
          { taskQueue: options.taskQueue, workflowId: `create-key/${Date.now()}`, args, summary: `keyops: create root key "${name}"${options.kms ? ` in ${options.kms}` : ''}` },
          (failure) => explainKmsFailure(failure, name),
        ),
      );
      emit(options, status, () => [`created key ${status.keyId} ("${name}"), version ${status.currentVersion}`]);
    });

  key
    .command('show <key>')
    .description('show a root key: state, current version, last rotation, version keyops rewrapped to')
    .option('-q, --task-queue <name>', 'task queue of the workers that hold the KMS credentials', TASK_QUEUE)
    .addHelpText('after', `\n${KEY_ARGUMENT}\n`)
    .addHelpText('after', examples('keyops key show demo', 'keyops key show bao:orders --json'))
    .action(async (raw: string, _opts: KeyOptions, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & KeyOptions>();
      const status = await withClient(options, async (client) => describe(client, await resolveKeyId(client, raw, options.taskQueue), options.taskQueue));
      emit(options, status, () => [
        `key ${status.keyId}: ${status.state}, version ${status.currentVersion}`,
        `last rotated: ${status.lastRotateDate ?? 'never'}`,
        status.consumers?.engines.length
          ? `complete at: ${status.rewrappedVersion === undefined ? 'no version recorded' : `version ${status.rewrappedVersion}`} (every consumer of the key on it)`
          : `WDEKs rewrapped to: ${status.rewrappedVersion === undefined ? 'none recorded' : `version ${status.rewrappedVersion}`}`,
        ...consumerLines(status),
        `rotation policy: ${status.rotationPolicyMonths === undefined ? 'none' : `every ${status.rotationPolicyMonths} month(s), by the KMS`}`,
      ]);
    });

  key
    .command('versions <key>')
    .description('list every version of a key and what still needs it: WDEKs, database pages, retained backups')
    .option('-q, --task-queue <name>', 'task queue of the workers that hold the KMS credentials', TASK_QUEUE)
    .addHelpText(
      'after',
      `
A version nothing needs (no WDEK, no page of an engine re-encrypting itself, no retained backup)
can go: for a database engine's own key (engine:<database>), keyops key destroy-version.

${KEY_ARGUMENT}

Examples:
  keyops key versions engine:shop
  keyops key versions demo --json`,
    )
    .action(async (raw: string, _opts: KeyOptions, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & KeyOptions>();
      let keyId = '';
      const listed = await withClient(options, async (client) => {
        keyId = await resolveKeyId(client, raw, options.taskQueue);
        return lookUpOnWorker(
          client,
          listKeyVersionsUpdate,
          // Reads every retained backup's header: a long catalog takes a while.
          { taskQueue: options.taskQueue, args: [keyId], summary: `keyops: versions of key ${keyId} and what needs each`, timeoutSeconds: 300 },
          (failure) => explainKmsFailure(failure, keyId),
        );
      });
      emit(options, listed, () => [
        `key ${listed.keyId}: ${listed.versions.length} version(s), current ${listed.currentVersion}`,
        ...listed.versions.map((v) => {
          const needs = [
            ...(v.wdeks > 0 ? [`${v.wdeks} WDEK(s)`] : []),
            ...v.databases.map((d) => `pages of database ${d}`),
            ...(v.backups.length > 0 ? [`${v.backups.length} backup(s) (${v.backups.slice(0, 3).join(', ')}${v.backups.length > 3 ? ', …' : ''})`] : []),
          ];
          const state = v.destroyed ? 'destroyed' : v.current ? 'current' : 'retired';
          return `  v${v.version}  ${state.padEnd(9)}  ${v.createdAt || '-'}  ${v.destroyed ? '' : needs.length ? `needed by ${needs.join(', ')}` : 'needed by nothing'}`.trimEnd();
        }),
        ...(listed.unreadableBackups.length ? [`unreadable backup files (what they need is unknown): ${listed.unreadableBackups.join(', ')}`] : []),
        ...(listed.destroyable.ok ? [] : [listed.destroyable.why]),
      ]);
    });

  key
    .command('destroy-version <key> <version>')
    .description("destroy one version of a database engine's own key for good, refused while anything may still need it")
    .option('--yes', 'really destroy it (irreversible: data still under it could never be read again)')
    .option('-q, --task-queue <name>', 'task queue of the workers that hold the KMS credentials', TASK_QUEUE)
    .addHelpText(
      'after',
      `
The worker counts again, at the moment of destruction, everything that may need the version:
WDEKs wrapped under it, pages of the database not yet re-encrypted past it (MariaDB reads its
pages with it), and every retained backup whose header says its pages are under it. Any of
them, or the current version, refuses the destruction and says why. KMS root keys keep their
retired versions: only engine keys (engine:<database>) have versions keyops can destroy.

${KEY_ARGUMENT}

Examples:
  keyops key versions engine:shop                 # what needs each version
  keyops key destroy-version engine:shop 1 --yes`,
    )
    .action(async (raw: string, rawVersion: string, _opts: KeyOptions, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & KeyOptions & { yes?: boolean }>();
      const version = Number(rawVersion);
      if (!Number.isInteger(version) || version < 1) throw new CliError(`version "${rawVersion}" is not a key version (a whole number from 1)`, ExitCode.usage);
      if (!options.yes) {
        throw new CliError(`destroying version ${version} of ${raw} cannot be undone: add --yes`, ExitCode.usage, `keyops key versions ${raw} shows what needs each version`);
      }
      let keyId = '';
      const result = await withClient(options, async (client) => {
        keyId = await resolveKeyId(client, raw, options.taskQueue);
        return runOnWorker(
          client,
          destroyRootKeyVersion,
          { taskQueue: options.taskQueue, workflowId: `destroy-key-version/${keyId}/v${version}/${Date.now()}`, args: [{ keyId, version }], summary: `keyops: destroy version ${version} of key ${keyId}` },
          (failure) => {
            if (failure.type === 'KEY_VERSION_IN_USE') throw new CliError(failure.message, ExitCode.failed, `keyops key versions ${keyId}`);
            return explainKmsFailure(failure, keyId);
          },
        );
      });
      emit(options, result, () => [result.alreadyDestroyed ? `version ${version} of key ${keyId} was already destroyed` : `destroyed version ${version} of key ${keyId}`]);
    });

  key
    .command('policy <key>')
    .description("set or remove the KMS's automatic rotation of a key (the hourly watcher then rewraps after each)")
    .option('--every <months>', 'rotate every N months, 1 to 12 (Key Protect\'s range)', (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1 || n > 12) throw new CliError(`--every "${v}" is not a whole number of months from 1 to 12`, ExitCode.usage);
      return n;
    })
    .option('--off', 'remove the policy: the key rotates only when asked')
    .option('-q, --task-queue <name>', 'task queue of the workers that hold the KMS credentials', TASK_QUEUE)
    .addHelpText('after', `\n${KEY_ARGUMENT}\n`)
    .addHelpText('after', examples('keyops key policy demo --every 3', 'keyops key policy demo --off'))
    .action(async (raw: string, _opts: KeyOptions, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & KeyOptions & { every?: number; off?: boolean }>();
      if ((options.every === undefined) === (options.off === undefined)) throw new CliError('give exactly one of --every <months> or --off', ExitCode.usage);
      let keyId = '';
      const status = await withClient(options, async (client) => {
        keyId = await resolveKeyId(client, raw, options.taskQueue);
        return runOnWorker(
          client,
          setRootKeyPolicy,
          {
            taskQueue: options.taskQueue,
            workflowId: `key-policy/${keyId}/${Date.now()}`,
            args: [{ keyId, ...(options.every === undefined ? {} : { intervalMonths: options.every }) }],
            summary: `keyops: rotation policy of key ${keyId}`,
          },
          (failure) => explainKmsFailure(failure, keyId),
        );
      });
      emit(options, status, () => [
        status.rotationPolicyMonths === undefined ? `key ${keyId}: no rotation policy` : `key ${keyId}: the KMS rotates it every ${status.rotationPolicyMonths} month(s)`,
      ]);
    });

  key
    .command('rotate <key>')
    .description('rotate a root key and rewrap every WDEK it protects (workflow rewrap/<keyId>/v<version>)')
    .option('-q, --task-queue <name>', 'task queue of the keyops workers', TASK_QUEUE)
    .option('--wait', 'wait for the rewrap to finish; the exit code reflects the outcome')
    .option('--kms-only', 'create the new version in the KMS only, as its console or a rotation policy would; the watcher rewraps later, and backups wait until then')
    .addHelpText(
      'after',
      `
The KMS allows one manual rotation per key per hour (IBM Key Protect's rule). Waiting backups
are released when every WDEK is on the new version. Follow the run in the Web UI with the
query: WorkflowId = "rewrap/<keyId>/v<version>"

--kms-only rehearses what happens when the KMS rotates by itself (the Db2 backup that fails
during a Key Protect rotation): keyops' backups wait until the watcher has rewrapped.

${KEY_ARGUMENT}

Examples:
  keyops key rotate demo --wait
  keyops key rotate demo --kms-only && keyops backup run demo   # the backup waits in awaiting-rewrap
  keyops key watch                                              # finds the rotation, rewraps: the backup goes on
  keyops key rotate 0f6b9b2e-4c1d-4a8e-9d3a-5b7c2e1f8a90 --json`,
    )
    .action(async (raw: string, _opts: KeyOptions, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & KeyOptions & { kmsOnly?: boolean }>();
      if (options.kmsOnly && options.wait) throw new CliError('--kms-only starts no rewrap, so there is nothing to --wait for', ExitCode.usage, 'keyops rewrap status <key> shows who waits');
      await withClient(options, async (client) => {
        const keyId = await resolveKeyId(client, raw, options.taskQueue);
        const status = await describe(client, keyId, options.taskQueue);
        if (status.state === 'disabled') explainKmsFailure(ApplicationFailure.create({ type: 'KEY_DISABLED' }), keyId);
        // Key Protect's rule, not a database engine's: MariaDB takes a new key version any time.
        if (status.lastRotateDate && !isEngineKey(keyId)) {
          const allowed = new Date(Date.parse(status.lastRotateDate) + KMS_ROTATION_SPACING_MS);
          if (allowed.getTime() > Date.now()) {
            throw new CliError(
              `key ${keyId} was rotated at ${status.lastRotateDate}; the KMS allows one rotation per hour, so the next is allowed at ${allowed.toISOString()}`,
              ExitCode.failed,
            );
          }
        }
        const targetVersion = status.currentVersion + 1;
        if (options.kmsOnly) {
          const rotation = await runOnWorker(
            client,
            rotateInKms,
            { taskQueue: options.taskQueue, workflowId: `kms-rotate/${keyId}/v${targetVersion}`, args: [{ keyId, targetVersion }], summary: `keyops: version ${targetVersion} of key ${keyId} in the KMS only` },
            (failure) => explainKmsFailure(failure, keyId),
          );
          emit(options, { keyId, ...rotation, rewrapped: false }, () => [
            `key ${keyId} is at version ${rotation.version} in the KMS${rotation.rotated ? '' : ' (it already was)'}; its WDEKs stay on their version until a rewrap, and backups of its databases wait`,
            `the hourly watcher rewraps them, or now: keyops key watch`,
          ]);
          return;
        }
        const workflowId = rewrapWorkflowId(keyId, targetVersion);
        let handle;
        let joined = false;
        try {
          handle = await client.workflow.start(rotateRootKey, {
            taskQueue: options.taskQueue,
            workflowId,
            args: [{ keyId, targetVersion, rotate: true }],
            ...(isEngineKey(keyId)
              ? {
                  staticSummary: `Rotate database engine key ${keyId} to version ${targetVersion} and follow the engine re-encrypting its pages`,
                  staticDetails: [
                    `Started by \`keyops key rotate\`. Writes version ${targetVersion} of \`${keyId}\` (${status.name}) once, however often retried; the database engine re-encrypts its own pages under it, and this run follows it (phase \`following\`), then announces "complete (${keyId}, v${targetVersion})".`,
                    'Nightly backups of the database wait in phase `awaiting-rewrap` until the announcement.',
                    `Follow it: \`keyops rewrap status ${keyId}\`.`,
                  ].join('\n\n'),
                }
              : {
                  staticSummary: `Rotate root key ${keyId} to version ${targetVersion} and rewrap every WDEK`,
                  staticDetails: [
                    `Started by \`keyops key rotate\`. Creates version ${targetVersion} of root key \`${keyId}\` in the KMS (once, however often retried), rewraps every WDEK it protects in parallel id ranges, verifies each unwraps under version ${targetVersion}, records it and announces it.`,
                    'Nightly backups of databases under this key wait in phase `awaiting-rewrap` until the announcement.',
                    `Follow it: \`keyops rewrap status ${keyId}\`.`,
                  ].join('\n\n'),
                }),
          });
        } catch (err) {
          if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
          // The same rotation, started by the schedule, the watcher or another operator: the
          // workflow id makes it one run, so join it rather than fail (--wait follows it).
          if (!options.wait) {
            throw new CliError(`a rotation of key ${keyId} to version ${targetVersion} is already running: ${workflowId}; follow it: keyops rewrap status ${keyId}`, ExitCode.failed);
          }
          handle = client.workflow.getHandle<typeof rotateRootKey>(workflowId);
          joined = true;
          // On stderr even with --json: stdout stays one JSON document.
          process.stderr.write(`${workflowId} is already running (started elsewhere): following it\n`);
        }
        if (!options.wait) {
          emit(options, { workflowId, runId: 'firstExecutionRunId' in handle ? handle.firstExecutionRunId : undefined, keyId, targetVersion }, () => [
            `started ${workflowId}: rotating key ${keyId} to version ${targetVersion}`,
          ]);
          return;
        }
        const result = await followRun(
          options,
          handle,
          rewrapProgressQuery,
          (p) => ({ phase: p.phase, done: p.phase === 'verifying' ? p.verified : p.rewrapped, total: p.total }),
          () => handle.result(),
        ).catch((err: unknown) => explainKmsFailure(err, keyId));
        const consumers = [
          ...(result.verified > 0 || !result.engines?.length ? [`${result.verified} WDEK(s) rewrapped and verified`] : []),
          ...(result.engines ?? []).map((e) => `database ${e.databaseId}: ${e.spaces} tablespace(s) re-encrypted as far as version ${result.targetVersion} asks (oldest page version ${e.oldestVersionNeeded ?? 'none'})`),
        ];
        emit(options, { workflowId, joined, ...result }, () => [
          `${workflowId}: key ${keyId} ${result.rotated ? 'rotated' : 'was already'} at version ${result.targetVersion}; ${consumers.join('; ')}${joined ? ' (a run started elsewhere, followed)' : ''}`,
        ]);
      });
    });
}
