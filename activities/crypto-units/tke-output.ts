import type { CommandResult } from '../engines/command-runner';
import { CryptoUnitError, type CryptoUnit, type MasterKeyRegister, type RegisterState } from './crypto-unit-set';

/**
 * Reading what the IBM Cloud TKE CLI plug-in prints during a master-key rotation with recovery
 * crypto units (Hyper Protect Crypto Services, reference 002). Pure functions: no I/O, so the
 * recovery decision can be tested on transcripts.
 */

/** The two messages of reference 002, verbatim: how far `auto-mk-rotate` got before an error. */
export const TKE_MARKERS = {
  /** Every new-MK register holds the fresh random value: stage 1 reached. */
  newMasterKeyLoaded: 'Delaying 30 seconds to allow server to discover new master key values',
  /** Key storage is re-encrypted under the new MK: stage 2 reached, only promotion remains. */
  reencrypted: 'KMS CRK rewrap successful, waiting on cryptounit-mk-setimm',
} as const;

/**
 * The shortest forms that still say the stage happened, accepted when followed by an ellipsis
 * ("Delaying 30 seconds…", as DESIGN.md and people abbreviate them). Missing a marker is the
 * dangerous mistake: it would send the caller back to `auto-mk-rotate`, which destroys key storage
 * once stage 1 has been reached.
 */
const ABBREVIATED = { newMasterKeyLoaded: 'Delaying 30 seconds', reencrypted: 'KMS CRK rewrap successful' } as const;

export type TkeCheckpoint = 'none' | 'new-mk-loaded' | 'reencrypted';

/** Spacing, line breaks (terminal wrapping, even mid-word) and case removed; "…" read as "...". */
const squash = (text: string) => text.replace(/\u2026/g, '...').replace(/\s+/g, '').toLowerCase();

function hasMarker(seen: string, marker: keyof typeof TKE_MARKERS): boolean {
  const full = squash(TKE_MARKERS[marker]);
  const shortest = squash(ABBREVIATED[marker]);
  for (let at = seen.indexOf(shortest); at >= 0; at = seen.indexOf(shortest, at + 1)) {
    let n = shortest.length;
    while (n < full.length && seen[at + n] === full[n]) n++;
    if (n === full.length || seen.startsWith('...', at + n)) return true;
  }
  return false;
}

/**
 * The highest stage whose marker the output shows. The second marker alone still means
 * 're-encrypted' (the first may have scrolled out of a truncated log): re-encrypting again at
 * stage 2 is forbidden, so the later evidence wins.
 */
export function checkpointFromOutput(text: string): TkeCheckpoint {
  const seen = squash(text);
  if (hasMarker(seen, 'reencrypted')) return 'reencrypted';
  if (hasMarker(seen, 'newMasterKeyLoaded')) return 'new-mk-loaded';
  return 'none';
}

/** A register as TKE reported it: the port's view plus TKE's own words, for the operator's evidence. */
export interface TkeRegister extends MasterKeyRegister {
  status: string;
}

export interface TkeUnitRegisters extends Pick<CryptoUnit, 'unitId' | 'current' | 'next'> {
  /** TKE's CRYPTO UNIT NUM: the handle `cryptounit-rm` takes. `unitId` is the same number as text. */
  unitNumber: number;
  serviceInstance: string;
  /** Marked `*` (or TYPE RECOVERY): holds a backup of the master key only. */
  recovery: boolean;
  /** From the selected-units table, when the output includes one. */
  location?: string;
  current: TkeRegister;
  next: TkeRegister;
}

/** Valid and "Full committed" hold a usable value; every partial or failed state is 'invalid'. */
export function registerStateOf(status: string): RegisterState {
  const words = status.trim().replace(/\s+/g, ' ').toLowerCase();
  if (words === 'valid' || words === 'full committed') return 'valid';
  if (words === 'empty') return 'empty';
  return 'invalid';
}

interface Row {
  unitNumber: number;
  recovery: boolean;
  serviceInstance: string;
  status: string;
  pattern: string;
}

const REGISTER_SECTIONS: Record<string, 'next' | 'current'> = { 'NEW MASTER KEY REGISTER': 'next', 'CURRENT MASTER KEY REGISTER': 'current' };

/**
 * Parses `ibmcloud tke cryptounit-mk` output (also the register tables of `cryptounit-compare`).
 * The layout follows IBM's documented fields and a recorded public TKE session
 * (slzone/terraform-ibm-hpcs-initialization README): a "NEW MASTER KEY REGISTER" and a
 * "CURRENT MASTER KEY REGISTER" table, each per "SERVICE INSTANCE: <guid>", with columns
 * CRYPTO UNIT NUM (`*` = recovery unit), STATUS (Empty / Partially full / Full uncommitted /
 * Full committed / Valid / Invalid) and VERIFICATION PATTERN, 64 hex digits wrapped as two lines
 * of 32. An optional "CRYPTO UNIT NUM SELECTED [TYPE] LOCATION" table gives locations. The exact
 * layout of every plug-in version is not available offline, so anything unexpected throws rather
 * than guessing: a wrong register reading could pick a destructive recovery.
 */
export function parseMasterKeyRegisters(text: string): TkeUnitRegisters[] {
  const rows = { next: new Map<number, Row>(), current: new Map<number, Row>() };
  const locations = new Map<number, { location: string; recovery: boolean }>();
  let section: 'next' | 'current' | 'units' | 'other' = 'other';
  let instance = '';
  let last: Row | undefined;
  for (const line of text.split(/\r?\n/).map((l) => l.trimEnd())) {
    const trimmed = line.trim();
    const heading = REGISTER_SECTIONS[trimmed];
    const serviceInstance = /^SERVICE INSTANCE:\s*(\S+)/.exec(trimmed)?.[1];
    let m: RegExpExecArray | null;
    if (heading) section = heading;
    else if (serviceInstance) instance = serviceInstance;
    else if (trimmed.startsWith('CRYPTO UNIT NUM')) section = /\bSELECTED\b/.test(trimmed) ? 'units' : section;
    // Any other capitalised heading (SIGNATURE THRESHOLDS, CRYPTO UNIT ADMINISTRATORS, ...) ends the table.
    else if (/^[A-Z][A-Z ]+$/.test(trimmed)) section = 'other';
    else if (section === 'units' && (m = /^(\d+)(\*?)\s+(?:true|false)\s+(?:(OPERATIONAL|RECOVERY)\s+)?(\S+)$/i.exec(line))) {
      locations.set(Number(m[1]), { location: m[4]!, recovery: m[2] === '*' || m[3]?.toUpperCase() === 'RECOVERY' });
    } else if ((section === 'next' || section === 'current') && (m = /^(\d+)(\*?)\s+(.+?)(?:\s+([0-9a-fA-F]{8,}))?$/.exec(line))) {
      last = { unitNumber: Number(m[1]), recovery: m[2] === '*', serviceInstance: instance, status: m[3]!.replace(/\s+/g, ' '), pattern: m[4] ?? '' };
      rows[section].set(last.unitNumber, last);
      continue;
    } else if (last && (section === 'next' || section === 'current') && (m = /^\s+([0-9a-fA-F]{8,})$/.exec(line))) {
      last.pattern += m[1]; // the second half of a wrapped verification pattern
      continue;
    }
    last = undefined;
  }

  const numbers = [...new Set([...rows.next.keys(), ...rows.current.keys()])].sort((a, b) => a - b);
  if (numbers.length === 0) throw new CryptoUnitError('COMMAND_FAILED', 'TKE output has no master key register table (NEW / CURRENT MASTER KEY REGISTER)');
  return numbers.map((unitNumber) => {
    const next = rows.next.get(unitNumber);
    const current = rows.current.get(unitNumber);
    if (!next || !current) {
      const missing = next ? 'CURRENT' : 'NEW';
      throw new CryptoUnitError('COMMAND_FAILED', `TKE output lists crypto unit ${unitNumber} without a ${missing} MASTER KEY REGISTER row`, [String(unitNumber)]);
    }
    const where = locations.get(unitNumber);
    return {
      unitId: String(unitNumber),
      unitNumber,
      serviceInstance: current.serviceInstance,
      recovery: current.recovery || next.recovery || (where?.recovery ?? false),
      ...(where ? { location: where.location } : {}),
      current: register(current),
      next: register(next),
    };
  });
}

/** The port promises a verification pattern only for a valid register; TKE prints zeros for an empty one. */
function register(row: Row): TkeRegister {
  const state = registerStateOf(row.status);
  const pattern = row.pattern.toLowerCase();
  return state === 'valid' && /[1-9a-f]/.test(pattern) ? { state, verificationPattern: pattern, status: row.status } : { state, status: row.status };
}

const AUTH_EXPIRED = [
  /token (is|has) expired/i,
  /access token is invalid, expired/i, // IBM's documented 401 text for TKE commands
  /not logged in/i,
  /\bibmcloud login\b/i,
  /status code:\s*401\b/i,
];

const UNREACHABLE = [
  /\b(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN)\b/,
  /connection (refused|reset|timed out)/i,
  /i\/o timeout|TLS handshake timeout|no such host|network is unreachable/i,
  /(could not|unable to|cannot) (connect|reach)/i,
  /crypto units?\b.{0,60}\b(did not respond|not responding|unreachable|unavailable)/i,
  /status code:\s*50[234]\b|service unavailable/i,
];

/** The initial conditions `auto-mk-rotate` checks before it changes anything (reference 002). */
const PRE_CHECKS: [RegExp, string][] = [
  [/invalid set of crypto units/i, 'an invalid set of crypto units is selected'],
  [/imprint mode/i, 'one or more crypto units are in imprint mode'],
  [/signature thresholds?\b.{0,80}\b(not (set )?the same|differ|not equal|do not match)/i, 'the signature thresholds of the crypto units are not the same'],
  [/common set of administrators|administrators?\b.{0,80}\bnot (installed|selected)/i, 'a common set of administrators meeting the signature threshold is not installed in all crypto units'],
  [/current master key registers?\b.{0,80}\b(not all|not in the valid)/i, 'the current master key registers are not all Valid with the same verification pattern'],
  [/new master key registers?\b.{0,80}\b(not all|not in the valid)/i, 'the new master key registers are not all Valid with the same verification pattern'],
];

/**
 * The error a failed TKE command means; undefined when it exited 0. Once a stage marker has
 * been printed, nothing is "just retry" or "nothing changed" any more: the code becomes a
 * non-retryable COMMAND_FAILED naming the cause, and the caller decides from the checkpoint.
 */
export function classifyTkeFailure(command: string, result: CommandResult): CryptoUnitError | undefined {
  if (result.exitCode === 0) return undefined;
  const output = `${result.stdout}\n${result.stderr}`;
  const flat = output.replace(/\s+/g, ' ');
  const lastLine = output.split('\n').map((l) => l.trim()).filter(Boolean).at(-1) ?? `exit code ${result.exitCode}`;
  const started = checkpointFromOutput(output) !== 'none';
  const preChecks = started ? [] : PRE_CHECKS.filter(([pattern]) => pattern.test(flat)).map(([, name]) => name);

  let code: CryptoUnitError['code'];
  let cause: string;
  if (AUTH_EXPIRED.some((p) => p.test(flat))) [code, cause] = ['AUTH_EXPIRED', 'the IBM Cloud login or token expired: run ibmcloud login'];
  else if (preChecks.length > 0) [code, cause] = ['PRECONDITION_FAILED', `pre-check failed: ${preChecks.join('; ')}`];
  else if (UNREACHABLE.some((p) => p.test(flat))) [code, cause] = ['UNIT_UNREACHABLE', 'a crypto unit or the service could not be reached'];
  else [code, cause] = ['COMMAND_FAILED', `exit code ${result.exitCode}`];

  if (started) return new CryptoUnitError('COMMAND_FAILED', `TKE ${command} failed after a stage marker (${cause}): ${lastLine}`);
  return new CryptoUnitError(code, `TKE ${command} failed (${cause}): ${lastLine}`);
}
