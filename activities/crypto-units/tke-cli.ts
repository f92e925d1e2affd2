import { execFile } from 'node:child_process';
import { DEFAULT_CHILD_TIMEOUT_MS, childEnvironment } from '../engines/child-environment';
import type { CommandResult, CommandRunner } from '../engines/command-runner';
import { CryptoUnitError } from './crypto-unit-set';
import { checkpointFromOutput, classifyTkeFailure, parseMasterKeyRegisters, type TkeCheckpoint, type TkeUnitRegisters } from './tke-output';

export interface TkeRunOptions {
  timeoutMs?: number;
  env?: Record<string, string>;
  /** Written to standard input, which is then closed. */
  input?: string;
}

/**
 * The command-runner port plus standard input. TKE asks its questions on the terminal
 * ("Do you want to continue?", the CRYPTO UNIT NUM list) and the shared port has no stdin; the
 * brand keeps a runner that would silently drop the answers (and hang on the prompt) from being
 * passed in.
 */
export interface TkeCommandRunner extends CommandRunner {
  readonly answersPrompts: true;
  run(command: string, args: readonly string[], options?: TkeRunOptions): Promise<CommandResult>;
}

/**
 * Runs TKE as a child process without a shell. Standard input always gets the answers and then
 * end-of-file, so a question keyops did not expect (a signature-key password, a service-instance
 * choice) makes TKE fail at once instead of waiting forever.
 */
export class TkeProcessRunner implements TkeCommandRunner {
  readonly answersPrompts = true as const;

  run(command: string, args: readonly string[], options: TkeRunOptions = {}): Promise<CommandResult> {
    return new Promise((resolve, reject) => {
      const child = execFile(
        command,
        [...args],
        { timeout: options.timeoutMs ?? DEFAULT_CHILD_TIMEOUT_MS, maxBuffer: 64 * 1024 * 1024, env: childEnvironment(options.env), encoding: 'utf8' },
        (err, stdout, stderr) => {
          if (err && typeof err.code !== 'number') reject(new Error(`${command}: ${err.killed ? `did not finish within ${options.timeoutMs ?? DEFAULT_CHILD_TIMEOUT_MS} ms and was stopped (${err.signal ?? 'killed'})` : err.message}`, { cause: err }));
          else resolve({ exitCode: err ? Number(err.code) : 0, stdout, stderr });
        },
      );
      // A command that exits without reading its input closes the pipe (EPIPE): its exit status tells the story.
      child.stdin?.on('error', () => undefined);
      child.stdin?.end(options.input ?? '');
    });
  }
}

/**
 * A failed rotation command, with how far it got. `unknown` when the output was lost (the runner
 * itself failed, e.g. a timeout killed TKE): the caller must then read the registers and ask an
 * operator, never assume 'none'.
 */
export class TkeRotationError extends CryptoUnitError {
  constructor(
    code: CryptoUnitError['code'],
    message: string,
    readonly checkpoint: TkeCheckpoint | 'unknown',
  ) {
    super(code, message);
  }
}

const MEANING: Record<TkeCheckpoint | 'unknown', string> = {
  none: 'no stage marker seen, nothing changed',
  'new-mk-loaded': 'new master key registers loaded, key storage not re-encrypted',
  reencrypted: 'key storage re-encrypted, new master key not yet promoted',
  unknown: 'output lost, stage unknown',
};
const reached = (checkpoint: TkeCheckpoint | 'unknown') => `checkpoint reached: ${checkpoint} (${MEANING[checkpoint]})`;

/** A service-instance CRN of Hyper Protect Crypto Services: crn:v1:<cloud>:<type>:hs-crypto:<region>:a/<account>:<instance>:: */
const HPCS_CRN = /^crn:v1:[a-z][a-z0-9-]*:[a-z][a-z0-9-]*:hs-crypto:[a-z][a-z0-9-]*:a\/[0-9a-f]{32}:[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}::$/;

/**
 * The IBM Cloud TKE CLI plug-in as keyops drives it for master-key rotation with recovery crypto
 * units (reference 002). Arguments are arrays (no shell) and everything that reaches the command
 * line or a prompt is validated first.
 */
export class TkeCli {
  constructor(
    private readonly runner: TkeCommandRunner,
    private readonly ibmcloud = 'ibmcloud',
  ) {}

  /**
   * `ibmcloud tke auto-mk-rotate --crn <crn>`: load a random MK (stage 1), re-encrypt key storage
   * (stage 2), promote (stage 3). Success requires the stage-2 marker: a rotation that claims
   * success without it is reported, not trusted. On failure the error carries the checkpoint.
   */
  async autoMkRotate(crn: string): Promise<{ checkpoint: TkeCheckpoint; output: string }> {
    if (!HPCS_CRN.test(crn)) {
      throw new CryptoUnitError('PRECONDITION_FAILED', `${JSON.stringify(crn)} is not a Hyper Protect Crypto Services instance CRN (crn:v1:...:hs-crypto:<region>:a/<account>:<instance>::)`);
    }
    const { checkpoint, output } = await this.rotation('auto-mk-rotate', ['--crn', crn]);
    if (checkpoint !== 'reencrypted') {
      throw new TkeRotationError('COMMAND_FAILED', `TKE auto-mk-rotate exited 0 without the re-encryption message; ${reached(checkpoint)}; read the registers before anything else`, checkpoint);
    }
    return { checkpoint, output };
  }

  /**
   * `ibmcloud tke cryptounit-mk-rotate`: re-encrypts key storage with the values already in the
   * registers, never generating a new MK (the recovery for stage 1 reached, reference 002; per
   * IBM's command table it then promotes). Read the registers afterwards.
   */
  mkRotate(): Promise<{ checkpoint: TkeCheckpoint; output: string }> {
    return this.rotation('cryptounit-mk-rotate', []);
  }

  /**
   * The new and current MK registers of the selected units. IBM's command reference and recorded
   * sessions name this `cryptounit-mk` ("Displays master key registers for the selected crypto
   * units"); reference 002 writes `cryptounit-mks`, but `tke mks` lists key-part files instead.
   */
  async masterKeyRegisters(): Promise<TkeUnitRegisters[]> {
    const result = await this.tke('cryptounit-mk', []);
    const failure = classifyTkeFailure('cryptounit-mk', result);
    if (failure) throw failure;
    return parseMasterKeyRegisters(result.stdout);
  }

  /**
   * `ibmcloud tke cryptounit-mk-setimm`: promote new to current on the selected units. TKE warns
   * and asks "Do you want to continue?"; reference 002 says it is safe to continue once key
   * storage is re-encrypted, so the answer `y` goes to standard input. Call it only at stage 2,
   * after the registers were read and already-promoted units removed.
   */
  async setImmediate(): Promise<{ output: string }> {
    const result = await this.tke('cryptounit-mk-setimm', [], 'y\n');
    const failure = classifyTkeFailure('cryptounit-mk-setimm', result);
    if (failure) throw failure;
    return { output: `${result.stdout}${result.stderr}` };
  }

  /**
   * `ibmcloud tke cryptounit-rm`: takes units out of the selection. TKE asks for the list
   * ("Enter a list of CRYPTO UNIT NUM to remove, separated by spaces"); only checked positive
   * integers are written there.
   */
  async removeUnits(unitNumbers: readonly number[]): Promise<void> {
    const bad = unitNumbers.filter((n) => typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1);
    if (unitNumbers.length === 0 || bad.length > 0) {
      throw new CryptoUnitError('PRECONDITION_FAILED', `crypto unit numbers must be a non-empty list of positive integers, got ${JSON.stringify(unitNumbers)}`);
    }
    const result = await this.tke('cryptounit-rm', [], `${unitNumbers.join(' ')}\n`);
    const failure = classifyTkeFailure('cryptounit-rm', result);
    if (failure) throw failure;
  }

  private tke(command: string, args: string[], input = ''): Promise<CommandResult> {
    return this.runner.run(this.ibmcloud, ['tke', command, ...args], { input });
  }

  /** Runs a command that changes registers or key storage; every failure says how far it got. */
  private async rotation(command: string, args: string[]): Promise<{ checkpoint: TkeCheckpoint; output: string }> {
    let result: CommandResult;
    try {
      result = await this.tke(command, args);
    } catch (err) {
      // Not retryable: re-running a rotation whose progress is unknown could destroy key storage.
      throw new TkeRotationError('COMMAND_FAILED', `TKE ${command} did not complete (${(err as Error).message}); ${reached('unknown')}`, 'unknown');
    }
    const output = `${result.stdout}\n${result.stderr}`;
    const checkpoint = checkpointFromOutput(output);
    const failure = classifyTkeFailure(command, result);
    if (failure) throw new TkeRotationError(failure.code, `${failure.message}; ${reached(checkpoint)}`, checkpoint);
    return { checkpoint, output };
  }
}
