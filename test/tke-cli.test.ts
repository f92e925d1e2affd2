import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { CommandResult } from '../activities/engines/command-runner';
import { CryptoUnitError } from '../activities/crypto-units/crypto-unit-set';
import { TkeCli, TkeProcessRunner, TkeRotationError, type TkeCommandRunner, type TkeRunOptions } from '../activities/crypto-units/tke-cli';
import { checkpointFromOutput, classifyTkeFailure, parseMasterKeyRegisters, registerStateOf, TKE_MARKERS } from '../activities/crypto-units/tke-output';

/**
 * A fake of the IBM Cloud TKE CLI plug-in (no ibmcloud or crypto units on this machine): replays
 * one transcript per call and records the command line and the answers written to its prompts.
 * Only the two stage markers and the 401 text are IBM's words (reference 002, IBM's
 * troubleshooting page); the progress lines around them stand in for the real ones.
 */
class FakeTkeCliRunner implements TkeCommandRunner {
  readonly answersPrompts = true as const;
  readonly calls: { command: string; args: readonly string[]; input: string | undefined }[] = [];
  constructor(private readonly transcripts: (CommandResult | Error)[]) {}
  run(command: string, args: readonly string[], options?: TkeRunOptions): Promise<CommandResult> {
    this.calls.push({ command, args, input: options?.input });
    const next = this.transcripts.shift();
    if (!next) return Promise.reject(new Error('FakeTkeCliRunner: no transcript left'));
    return next instanceof Error ? Promise.reject(next) : Promise.resolve(next);
  }
}

const CRN = 'crn:v1:bluemix:public:hs-crypto:us-south:a/ad5d072102214f4395eab22f03bbb2f9:3395bd87-0814-42e1-9800-3ce199cf769b::';
const ok = (stdout: string): CommandResult => ({ exitCode: 0, stdout, stderr: '' });
const failed = (stdout: string, stderr: string): CommandResult => ({ exitCode: 1, stdout, stderr });

const PROGRESS = {
  precheck: 'Checking the initial state of the crypto units...\n',
  loaded: `Generating a random master key value in a recovery crypto unit...\n${TKE_MARKERS.newMasterKeyLoaded}\n`,
  rewrapped: `Reencrypting key storage...\n${TKE_MARKERS.reencrypted}\n`,
  promoted: 'Promoting the new master key value to the current master key registers...\nOK\n',
};

const TRANSCRIPTS = {
  rotated: ok(PROGRESS.precheck + PROGRESS.loaded + PROGRESS.rewrapped + PROGRESS.promoted),
  resetAfterLoad: failed(PROGRESS.precheck + PROGRESS.loaded + 'Reencrypting key storage...\n', 'FAILED\nread tcp 10.1.2.3:53012->161.156.1.1:443: read: connection reset by peer\n'),
  unreachableBeforeStart: failed('', 'FAILED\nError querying crypto instances.\ndial tcp: lookup tke.us-south.hs-crypto.cloud.ibm.com: no such host\n'),
  tokenExpired: failed(
    '',
    'FAILED\nError querying crypto instances.\nStatus code: 401\nMessage: Unauthorized\nYour access token is invalid, expired, or does not have the necessary permissions to access this instance.\n',
  ),
  notLoggedIn: failed('', "FAILED\nNot logged in. Use 'ibmcloud login' to log in.\n"),
};

const PRE_CHECK_FAILURES: [string, string][] = [
  ['Crypto unit 2 is in imprint mode.', 'one or more crypto units are in imprint mode'],
  ['The signature thresholds on the selected crypto units are not set the same.', 'the signature thresholds of the crypto units are not the same'],
  [
    'A common set of administrators large enough to meet the signature threshold\nis not installed in all crypto units.',
    'a common set of administrators meeting the signature threshold is not installed in all crypto units',
  ],
  [
    'The current master key registers are not all in the Valid state with the same verification pattern.',
    'the current master key registers are not all Valid with the same verification pattern',
  ],
  ['An invalid set of crypto units is selected.', 'an invalid set of crypto units is selected'],
];

const rejection = async (promise: Promise<unknown>) => promise.then(() => assert.fail('expected a rejection'), (e: unknown) => e);

describe('TKE stage markers (reference 002)', () => {
  it('reads the highest stage reached, tolerant of wrapping, case and ellipses', () => {
    const cases: [string, string][] = [
      ['', 'none'],
      [PROGRESS.precheck, 'none'],
      [PROGRESS.loaded, 'new-mk-loaded'],
      [PROGRESS.loaded + PROGRESS.rewrapped, 'reencrypted'],
      [PROGRESS.rewrapped, 'reencrypted'], // the second marker alone still means re-encrypted
      ['Delaying 30 seconds to allow server to\n   discover new master key values...', 'new-mk-loaded'],
      ['KMS CRK rewrap successful, waiting on cryptounit-mk-se\ntimm', 'reencrypted'], // wrapped mid-word
      ['Delaying 30 seconds\u2026', 'new-mk-loaded'],
      ['Delaying 30 seconds to allow server...', 'new-mk-loaded'],
      ['KMS CRK rewrap successful\u2026', 'reencrypted'],
      ['delaying 30 SECONDS TO ALLOW SERVER TO DISCOVER NEW MASTER KEY VALUES', 'new-mk-loaded'],
      ['Delaying 30 seconds before retrying the login', 'none'], // a prefix alone is not the marker
      ['KMS CRK rewrap failed, waiting on cryptounit-mk-setimm', 'none'],
    ];
    for (const [text, expected] of cases) assert.equal(checkpointFromOutput(text), expected, JSON.stringify(text));
  });
});

describe('TKE auto-mk-rotate (fake TKE CLI replaying reference 002 transcripts)', () => {
  it('a full rotation passes both markers and succeeds with checkpoint reencrypted', async () => {
    const runner = new FakeTkeCliRunner([TRANSCRIPTS.rotated]);
    const result = await new TkeCli(runner).autoMkRotate(CRN);
    assert.equal(result.checkpoint, 'reencrypted');
    assert.match(result.output, /KMS CRK rewrap successful/);
    assert.deepEqual(runner.calls, [{ command: 'ibmcloud', args: ['tke', 'auto-mk-rotate', '--crn', CRN], input: '' }]);
  });

  it('a failure after the first marker only carries new-mk-loaded and is never retryable, even for a network error', async () => {
    const err = await rejection(new TkeCli(new FakeTkeCliRunner([TRANSCRIPTS.resetAfterLoad])).autoMkRotate(CRN));
    assert.ok(err instanceof TkeRotationError, String(err));
    assert.deepEqual({ code: err.code, retryable: err.retryable, checkpoint: err.checkpoint }, { code: 'COMMAND_FAILED', retryable: false, checkpoint: 'new-mk-loaded' });
    assert.match(err.message, /after a stage marker \(a crypto unit or the service could not be reached\)/);
    assert.match(err.message, /connection reset by peer; checkpoint reached: new-mk-loaded \(new master key registers loaded/);
  });

  it('a failure before any marker carries none and keeps its transient cause', async () => {
    const err = await rejection(new TkeCli(new FakeTkeCliRunner([TRANSCRIPTS.unreachableBeforeStart])).autoMkRotate(CRN));
    assert.ok(err instanceof TkeRotationError, String(err));
    assert.deepEqual({ code: err.code, retryable: err.retryable, checkpoint: err.checkpoint }, { code: 'UNIT_UNREACHABLE', retryable: true, checkpoint: 'none' });
    assert.match(err.message, /no such host; checkpoint reached: none \(no stage marker seen, nothing changed\)$/);
  });

  it('an expired token or missing login is AUTH_EXPIRED and not retryable', async () => {
    for (const transcript of [TRANSCRIPTS.tokenExpired, TRANSCRIPTS.notLoggedIn]) {
      const err = await rejection(new TkeCli(new FakeTkeCliRunner([transcript])).autoMkRotate(CRN));
      assert.ok(err instanceof TkeRotationError, String(err));
      assert.deepEqual({ code: err.code, retryable: err.retryable, checkpoint: err.checkpoint }, { code: 'AUTH_EXPIRED', retryable: false, checkpoint: 'none' });
      assert.match(err.message, /run ibmcloud login/);
    }
  });

  it('each failed pre-check is PRECONDITION_FAILED naming exactly that condition', async () => {
    for (const [text, name] of PRE_CHECK_FAILURES) {
      const err = await rejection(new TkeCli(new FakeTkeCliRunner([failed(PROGRESS.precheck, `FAILED\n${text}\n`)])).autoMkRotate(CRN));
      assert.ok(err instanceof TkeRotationError, String(err));
      assert.deepEqual({ code: err.code, retryable: err.retryable, checkpoint: err.checkpoint }, { code: 'PRECONDITION_FAILED', retryable: false, checkpoint: 'none' }, name);
      assert.ok(err.message.startsWith(`TKE auto-mk-rotate failed (pre-check failed: ${name}): `), err.message);
    }
  });

  it('pre-check wording after a stage marker is not trusted as "nothing changed"', () => {
    const err = classifyTkeFailure('auto-mk-rotate', failed(PROGRESS.loaded, 'FAILED\nThe current master key registers are not all in the Valid state.\n'));
    assert.deepEqual({ code: err?.code, retryable: err?.retryable }, { code: 'COMMAND_FAILED', retryable: false });
  });

  it('a success without the re-encryption marker, or lost output, is reported with its checkpoint', async () => {
    const quiet = await rejection(new TkeCli(new FakeTkeCliRunner([ok(PROGRESS.loaded + 'OK\n')])).autoMkRotate(CRN));
    assert.ok(quiet instanceof TkeRotationError);
    assert.deepEqual({ code: quiet.code, checkpoint: quiet.checkpoint }, { code: 'COMMAND_FAILED', checkpoint: 'new-mk-loaded' });

    const killed = await rejection(new TkeCli(new FakeTkeCliRunner([new Error('ibmcloud: Command failed: killed (SIGTERM)')])).autoMkRotate(CRN));
    assert.ok(killed instanceof TkeRotationError);
    assert.deepEqual({ code: killed.code, retryable: killed.retryable, checkpoint: killed.checkpoint }, { code: 'COMMAND_FAILED', retryable: false, checkpoint: 'unknown' });
    assert.match(killed.message, /SIGTERM/);
  });
});

/** Register tables in the layout of a recorded TKE session (see parseMasterKeyRegisters). */
const VP_OLD = ['875ee76406167498a2c6474f19a611c9', '5e5bf22ae9b63da133cd8170f620aef4'];
const VP_NEW = ['1f0c3a9be25d4e7781a0c6d2f39e8b40', 'c77d2e915ab04f6d8e3129aa0b5c6d7e'];
const ZEROS = '00000000000000000000000000000000';
const INSTANCE = '3395bd87-0814-42e1-9800-3ce199cf769b';
/** TKE sizes the STATUS column to its longest value plus three spaces; the wrapped half lines up under the pattern. */
const row = (unit: string, status: string, [first, second]: string[], width = 9) =>
  `${unit.padEnd(18)}${status.padEnd(width)}${first}   \n${' '.repeat(18 + width)}${second}   \n`;
const table = (heading: string, rows: string) => `\n${heading}\nSERVICE INSTANCE: ${INSTANCE}\nCRYPTO UNIT NUM   STATUS   VERIFICATION PATTERN   \n${rows}`;
const FOOTNOTE = '\n* Indicates a recovery crypto unit used only to hold a backup master key value.\n';

describe('TKE master key registers (cryptounit-mk)', () => {
  it('one unit: empty new register, valid current with a wrapped verification pattern', () => {
    const text = table('NEW MASTER KEY REGISTER', row('1', 'Empty', [ZEROS, ZEROS])) + table('CURRENT MASTER KEY REGISTER', row('1', 'Valid', VP_OLD));
    assert.deepEqual(parseMasterKeyRegisters(text), [
      {
        unitId: '1',
        unitNumber: 1,
        serviceInstance: INSTANCE,
        recovery: false,
        current: { state: 'valid', verificationPattern: VP_OLD.join(''), status: 'Valid' },
        next: { state: 'empty', status: 'Empty' },
      },
    ]);
  });

  it('two units among the other cryptounit-compare tables, with multi-word statuses', () => {
    const text =
      'SIGNATURE THRESHOLDS\nSERVICE INSTANCE: ' + INSTANCE + '\nCRYPTO UNIT NUM   SIGNATURE THRESHOLD   REVOCATION THRESHOLD   \n1                 2                     2   \n2                 2                     2   \n' +
      '\nCRYPTO UNIT ADMINISTRATORS\nSERVICE INSTANCE: ' + INSTANCE + '\nCRYPTO UNIT NUM   ADMIN NAME   SUBJECT KEY IDENTIFIER   \n1                 admin1       2ce6f22b1d965eb480b1646bdd1886...   \n' +
      table('NEW MASTER KEY REGISTER', row('1', 'Full committed', VP_NEW, 19) + row('2', 'Full uncommitted', VP_NEW, 19)) +
      table('CURRENT MASTER KEY REGISTER', row('1', 'Valid', VP_OLD, 10) + row('2', 'Invalid', VP_OLD, 10)) +
      '\nCONTROL POINTS\nSERVICE INSTANCE: ' + INSTANCE + '\nCRYPTO UNIT NUM   XCP_CPB_ALG_EC_25519   XCP_CPB_BTC   \n1                 Set                    Set   \n';
    const units = parseMasterKeyRegisters(text);
    assert.deepEqual(
      units.map((u) => [u.unitNumber, u.next.state, u.next.verificationPattern, u.next.status, u.current.state, u.current.verificationPattern]),
      [
        [1, 'valid', VP_NEW.join(''), 'Full committed', 'valid', VP_OLD.join('')],
        [2, 'invalid', undefined, 'Full uncommitted', 'invalid', undefined],
      ],
    );
  });

  it('three units, partly promoted: unit 1 already current = new VP with new empty, the others still old', () => {
    const text =
      `SERVICE INSTANCE: ${INSTANCE}\nCRYPTO UNIT NUM   SELECTED   TYPE          LOCATION   \n` +
      '1                 true       OPERATIONAL   [us-south].[AZ1-CS7].[01].[13]   \n2                 true       OPERATIONAL   [us-south].[AZ3-CS9].[01].[39]   \n3                 true       RECOVERY      [us-south].[AZ3-CS9].[01].[38]   \n' +
      table('NEW MASTER KEY REGISTER', row('1', 'Empty', [ZEROS, ZEROS]) + row('2', 'Valid', VP_NEW) + `3*                Valid    ${VP_NEW.join('')}\n`) +
      table('CURRENT MASTER KEY REGISTER', row('1', 'Valid', VP_NEW) + row('2', 'Valid', VP_OLD) + row('3*', 'Valid', VP_OLD)) +
      FOOTNOTE;
    const units = parseMasterKeyRegisters(text);
    assert.deepEqual(
      units.map((u) => ({ n: u.unitNumber, recovery: u.recovery, location: u.location, current: u.current.verificationPattern, next: u.next.state, nextVp: u.next.verificationPattern })),
      [
        { n: 1, recovery: false, location: '[us-south].[AZ1-CS7].[01].[13]', current: VP_NEW.join(''), next: 'empty', nextVp: undefined },
        { n: 2, recovery: false, location: '[us-south].[AZ3-CS9].[01].[39]', current: VP_OLD.join(''), next: 'valid', nextVp: VP_NEW.join('') },
        { n: 3, recovery: true, location: '[us-south].[AZ3-CS9].[01].[38]', current: VP_OLD.join(''), next: 'valid', nextVp: VP_NEW.join('') },
      ],
    );
  });

  it('maps every TKE register status onto the port states', () => {
    const expected = { Empty: 'empty', 'Partially full': 'invalid', 'Full uncommitted': 'invalid', 'Full committed': 'valid', Valid: 'valid', Invalid: 'invalid' };
    for (const [status, state] of Object.entries(expected)) assert.equal(registerStateOf(status), state, status);
  });

  it('refuses output it cannot read completely instead of guessing', () => {
    assert.throws(() => parseMasterKeyRegisters('OK\n'), /no master key register table/);
    const half = table('NEW MASTER KEY REGISTER', row('1', 'Empty', [ZEROS, ZEROS]) + row('2', 'Empty', [ZEROS, ZEROS])) + table('CURRENT MASTER KEY REGISTER', row('1', 'Valid', VP_OLD));
    assert.throws(() => parseMasterKeyRegisters(half), (e: unknown) => e instanceof CryptoUnitError && e.code === 'COMMAND_FAILED' && /unit 2 without a CURRENT/.test(e.message));
  });
});

describe('TKE command lines and prompts', () => {
  it('builds the exact argv and prompt answers of every command', async () => {
    const registers = table('NEW MASTER KEY REGISTER', row('1', 'Empty', [ZEROS, ZEROS])) + table('CURRENT MASTER KEY REGISTER', row('1', 'Valid', VP_NEW));
    const runner = new FakeTkeCliRunner([TRANSCRIPTS.rotated, ok(PROGRESS.rewrapped + PROGRESS.promoted), ok(registers), ok('Do you want to continue? (y/N) > y\nOK\n'), ok('OK\n')]);
    const cli = new TkeCli(runner, '/opt/ibmcloud/bin/ibmcloud');
    await cli.autoMkRotate(CRN);
    assert.equal((await cli.mkRotate()).checkpoint, 'reencrypted');
    assert.equal((await cli.masterKeyRegisters())[0]?.current.verificationPattern, VP_NEW.join(''));
    assert.match((await cli.setImmediate()).output, /OK/);
    await cli.removeUnits([2, 3]);
    assert.deepEqual(runner.calls, [
      { command: '/opt/ibmcloud/bin/ibmcloud', args: ['tke', 'auto-mk-rotate', '--crn', CRN], input: '' },
      { command: '/opt/ibmcloud/bin/ibmcloud', args: ['tke', 'cryptounit-mk-rotate'], input: '' },
      { command: '/opt/ibmcloud/bin/ibmcloud', args: ['tke', 'cryptounit-mk'], input: '' },
      { command: '/opt/ibmcloud/bin/ibmcloud', args: ['tke', 'cryptounit-mk-setimm'], input: 'y\n' },
      { command: '/opt/ibmcloud/bin/ibmcloud', args: ['tke', 'cryptounit-rm'], input: '2 3\n' },
    ]);
  });

  it('a failed command other than a rotation is COMMAND_FAILED with its last output line', async () => {
    const err = await rejection(new TkeCli(new FakeTkeCliRunner([failed('Do you want to continue? (y/N) > y\n', 'FAILED\nCrypto unit 1: the new master key register is empty.\n')])).setImmediate());
    assert.ok(err instanceof CryptoUnitError);
    assert.deepEqual({ code: err.code, retryable: err.retryable }, { code: 'COMMAND_FAILED', retryable: false });
    assert.equal(err.message, 'TKE cryptounit-mk-setimm failed (exit code 1): Crypto unit 1: the new master key register is empty.');
  });

  it('rejects a bad CRN or bad unit numbers before running anything', async () => {
    const runner = new FakeTkeCliRunner([]);
    const cli = new TkeCli(runner);
    const badCrns = ['', 'crn:v1', CRN.replace('hs-crypto', 'kms'), `${CRN} --help`, `${CRN}\nrm -rf /`, `--crn=${CRN}`, CRN.replace('a/ad5d', 'a/;d5d')];
    for (const crn of badCrns) {
      const err = await rejection(cli.autoMkRotate(crn));
      assert.ok(err instanceof CryptoUnitError && err.code === 'PRECONDITION_FAILED', `${JSON.stringify(crn)}: ${String(err)}`);
    }
    const badUnits = [[], [0], [-1], [1.5], [Number.NaN], [Number.MAX_SAFE_INTEGER + 1], ['2'], ['2; rm -rf /']] as unknown as number[][];
    for (const units of badUnits) {
      const err = await rejection(cli.removeUnits(units));
      assert.ok(err instanceof CryptoUnitError && err.code === 'PRECONDITION_FAILED', `${JSON.stringify(units)}: ${String(err)}`);
    }
    assert.equal(runner.calls.length, 0);
  });

  it('the process runner answers a prompt on standard input and then closes it', async () => {
    const result = await new TkeProcessRunner().run('sh', ['-c', 'read answer; echo "answer=$answer"; if read more; then echo more; else echo eof; fi; exit 3'], { input: 'y\n' });
    assert.deepEqual(result, { exitCode: 3, stdout: 'answer=y\neof\n', stderr: '' });
  });
});
