import { WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError, WorkflowUpdateFailedError, type Client, type WorkflowHandle } from '@temporalio/client';
import type { Command } from 'commander';
import { rotateMasterKey } from '../../workflows';
import { type MasterKeyRotationState, decideRecoveryUpdate, masterKeyRotationQuery, masterKeyRotationWorkflowId } from '../../workflows/master-key-messages';
import type { RecoveryActionName } from '../../workflows/master-key-recovery';
import { TASK_QUEUE } from '../../workflows/task-queue';
import { CliError, ExitCode } from '../cli-error';
import type { GlobalOptions } from '../global-options';
import { followRun } from '../follow-run';
import { emit } from '../output';
import { rootApplicationFailure, withClient } from '../run-on-worker';
import { examples } from '../help-examples';

const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
const ACTIONS: readonly RecoveryActionName[] = ['restart', 'reencrypt', 'promote', 'finish', 'abort'];

function parseId(what: string, raw: string): string {
  if (!ID.test(raw)) throw new CliError(`${what} "${raw}" is malformed: 1 to 63 letters, digits, "_", "." or "-"`, ExitCode.usage);
  return raw;
}

function parseAction(raw: string): RecoveryActionName {
  const action = ACTIONS.find((a) => a === raw);
  if (!action) throw new CliError(`--action "${raw}" is not one of ${ACTIONS.join(', ')}`, ExitCode.usage);
  return action;
}

/** What an operator needs to read: phase, checkpoint, patterns, and why it stopped. */
function describeState(s: MasterKeyRotationState): string[] {
  const lines = [
    `mk-rotation/${s.unitSetId}/${s.requestId}: ${s.phase} (checkpoint ${s.checkpoint})`,
    `  current MK ${s.currentVp ?? '-'}  new MK ${s.newVp ?? '-'}  recoveries ${s.recoveries}`,
  ];
  if (s.keyStorage) lines.push(`  key storage: ${s.keyStorage.readable} of ${s.keyStorage.entries} entries open under the current MK`);
  if (s.evidence) {
    lines.push(`  last error: ${s.evidence.error}`, `  decision: ${s.evidence.decision}: ${s.evidence.reason}`);
    for (const u of s.evidence.units) {
      lines.push(`    unit ${u.unitId}${u.selected ? '' : ' (not selected)'}: current ${u.current.verificationPattern ?? u.current.state}, new ${u.next.verificationPattern ?? u.next.state}`);
    }
  }
  for (const d of s.decisions) lines.push(`  operator decision: ${d.action}${d.operator ? ` by ${d.operator}` : ''}${d.note ? ` (${d.note})` : ''}`);
  if (s.phase === 'needs-operator') {
    lines.push(`  answer: keyops mk decide ${s.unitSetId} ${s.requestId} --action <${ACTIONS.join('|')}> --operator <you>`);
  }
  return lines;
}

async function queryState(client: Client, unitSetId: string, requestId: string): Promise<{ handle: WorkflowHandle; state: MasterKeyRotationState }> {
  const handle = client.workflow.getHandle(masterKeyRotationWorkflowId(unitSetId, requestId));
  try {
    return { handle, state: await handle.query(masterKeyRotationQuery) };
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw new CliError(`no master-key rotation ${masterKeyRotationWorkflowId(unitSetId, requestId)}`, ExitCode.usage, 'keyops mk rotate <unitSetId> starts one');
    throw err;
  }
}

/** Resolves when the run ends or stops for an operator: the state to report. */
async function stopped(client: Client, unitSetId: string, requestId: string): Promise<MasterKeyRotationState> {
  for (;;) {
    const { handle, state } = await queryState(client, unitSetId, requestId);
    if (state.phase === 'needs-operator' || state.phase === 'failed') return state;
    if (state.phase === 'done') {
      // The run may still be finishing its last task: its result is the final state.
      return (await handle.result()) as MasterKeyRotationState;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

// The five stages, counted by the last checkpoint reached: the bar's done/total.
const STAGES_DONE: Record<MasterKeyRotationState['checkpoint'], number> = { none: 0, prechecked: 1, 'new-mk-loaded': 2, reencrypted: 3, promoting: 4, done: 5 };

export function registerMasterKeyCommands(program: Command): void {
  const mk = program.command('mk').description('rotate the HSM master key of a crypto-unit set in stages, and answer its recovery questions');

  mk.command('rotate <unitSetId>')
    .description('start a staged master-key rotation (workflow mk-rotation/<unitSetId>/<request>)')
    .option('-q, --task-queue <name>', 'task queue of the keyops workers', TASK_QUEUE)
    .option('--request <id>', 'the request id, part of the workflow id (default: the UTC time now)')
    .option('--wait', 'follow the run (stage bar: done/5); exit 0 when done, 1 when it failed or stopped for an operator decision')
    .addHelpText(
      'after',
      `
Stages: pre-check, load a new master key, re-encrypt key storage, promote on every unit, check
key storage. After a failure the run decides the recovery itself where reference 002 has a rule,
and otherwise stops in phase needs-operator: read it with "keyops mk status", answer it with
"keyops mk decide". Nightly backups and root-key rewraps wait while it runs.

Examples:
  keyops mk rotate default --wait
  keyops mk status default 20261123T020000`,
    )
    .action(async (raw: string, _opts: unknown, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & { taskQueue: string; request?: string; wait?: boolean }>();
      const unitSetId = parseId('unit set id', raw);
      const requestId = parseId('--request', options.request ?? new Date().toISOString().replace(/[-:]/g, '').slice(0, 15));
      const workflowId = masterKeyRotationWorkflowId(unitSetId, requestId);
      await withClient(options, async (client) => {
        try {
          await client.workflow.start(rotateMasterKey, {
            taskQueue: options.taskQueue,
            workflowId,
            args: [{ unitSetId, requestId }],
            staticSummary: `Master-key rotation of crypto-unit set ${unitSetId}`,
            staticDetails:
              'Stages: pre-check, load a new master key, re-encrypt key storage, promote on every unit, check key storage. ' +
              `After a failure the recovery follows reference 002; otherwise the run stops in needs-operator: \`keyops mk status ${unitSetId} ${requestId}\`, then \`keyops mk decide\`.`,
          });
        } catch (err) {
          if (err instanceof WorkflowExecutionAlreadyStartedError) throw new CliError(`${workflowId} already exists`, ExitCode.usage, `follow it with: keyops mk status ${unitSetId} ${requestId}`);
          throw err;
        }
        if (!options.wait) {
          emit(options, { workflowId, unitSetId, requestId }, () => [`started ${workflowId}`, `follow it with: keyops mk status ${unitSetId} ${requestId}`]);
          return;
        }
        const handle = client.workflow.getHandle(workflowId);
        const state = await followRun(
          options,
          handle,
          masterKeyRotationQuery,
          (p) => ({ phase: p.phase, done: STAGES_DONE[p.checkpoint], total: 5 }),
          () => stopped(client, unitSetId, requestId),
        ).catch(async (err: unknown) => {
          const failure = rootApplicationFailure(err);
          if (!failure) throw err;
          return (await queryState(client, unitSetId, requestId)).state;
        });
        emit(options, state, () => describeState(state));
        if (state.phase !== 'done') throw new CliError(`${workflowId} ${state.phase === 'failed' ? 'failed' : 'waits for an operator decision'}`, ExitCode.failed);
      });
    });

  mk.command('status <unitSetId> <requestId>')
    .description('phase, checkpoint, verification patterns and, when stopped, the evidence and the command that answers it')
    .addHelpText('after', examples('keyops mk status default 20261123T020000', 'keyops mk status default 20261123T020000 --json'))
    .action(async (rawSet: string, rawRequest: string, _opts: unknown, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions>();
      const unitSetId = parseId('unit set id', rawSet);
      const requestId = parseId('request id', rawRequest);
      const { state } = await withClient(options, (client) => queryState(client, unitSetId, requestId));
      emit(options, state, () => describeState(state));
    });

  mk.command('decide <unitSetId> <requestId>')
    .description('answer a rotation in needs-operator; forbidden actions are refused with the reason')
    .requiredOption('--action <action>', `one of ${ACTIONS.join(', ')}`, parseAction)
    .option('--operator <name>', 'who decides, for the record')
    .option('--note <text>', 'why, for the record')
    .addHelpText(
      'after',
      `
Actions (reference 002):
  restart     run the whole rotation again: only before a new master key was loaded
  reencrypt   re-run the re-encryption of key storage, keeping the loaded new master key
  promote     take already promoted units out of the selection, promote the rest
  finish      every unit is promoted: put units back in the selection and check key storage
  abort       stop and change nothing; the registers stay as they are`,
    )
    .addHelpText('after', examples('keyops mk decide default 20261123T020000 --action reencrypt --operator alice --note "units back online"'))
    .action(async (rawSet: string, rawRequest: string, _opts: unknown, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions & { action: RecoveryActionName; operator?: string; note?: string }>();
      const unitSetId = parseId('unit set id', rawSet);
      const requestId = parseId('request id', rawRequest);
      const decision = { action: options.action, ...(options.operator ? { operator: options.operator } : {}), ...(options.note ? { note: options.note } : {}) };
      const accepted = await withClient(options, async (client) => {
        const { handle } = await queryState(client, unitSetId, requestId);
        try {
          return await handle.executeUpdate(decideRecoveryUpdate, { args: [decision] });
        } catch (err) {
          if (err instanceof WorkflowUpdateFailedError) {
            throw new CliError(`refused: ${err.cause?.message ?? err.message}`, ExitCode.usage, `see the evidence with: keyops mk status ${unitSetId} ${requestId}`);
          }
          throw err;
        }
      });
      emit(options, { workflowId: masterKeyRotationWorkflowId(unitSetId, requestId), ...accepted }, () => [`accepted: ${accepted.accepted}; the rotation resumes`]);
    });
}
