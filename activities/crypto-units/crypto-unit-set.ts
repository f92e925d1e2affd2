/**
 * The HSM crypto units behind a key storage (Hyper Protect Crypto Services style, reference 002):
 * each unit has a current and a new master-key (MK) register; key storage is encrypted under
 * the current MK. Registers are seen only as a state and a verification pattern (VP), never as
 * key material.
 */

export type RegisterState = 'empty' | 'valid' | 'invalid';

export interface MasterKeyRegister {
  state: RegisterState;
  /** Identifies the value without revealing it; present when the register is `valid`. */
  verificationPattern?: string;
}

export interface CryptoUnit {
  unitId: string;
  /** Whether commands act on the unit (TKE's selection; `cryptounit-rm` takes it out). */
  selected: boolean;
  imprintMode: boolean;
  signatureThreshold: number;
  administrators: string[];
  current: MasterKeyRegister;
  /** The new-MK register. */
  next: MasterKeyRegister;
}

export type CryptoUnitErrorCode =
  /** The login or token expired: log in again (nothing was changed). */
  | 'AUTH_EXPIRED'
  /** A unit did not answer: transient. */
  | 'UNIT_UNREACHABLE'
  /** The operation's conditions do not hold (e.g. set-immediate on a unit whose new register is empty). */
  | 'PRECONDITION_FAILED'
  /** An entry of key storage is encrypted under a value no register holds. */
  | 'KEY_STORAGE_UNUSABLE'
  | 'COMMAND_FAILED';

const RETRYABLE: ReadonlySet<CryptoUnitErrorCode> = new Set(['UNIT_UNREACHABLE']);

export class CryptoUnitError extends Error {
  readonly retryable: boolean;

  constructor(
    readonly code: CryptoUnitErrorCode,
    message: string,
    /** Units the error concerns, for the evidence shown to an operator. */
    readonly unitIds: string[] = [],
  ) {
    super(message);
    this.name = 'CryptoUnitError';
    this.retryable = RETRYABLE.has(code);
  }
}

/** What a check of key storage found: how many entries the current MK of the selected units opens. */
export interface KeyStorageCheck {
  entries: number;
  readable: number;
  /** The VP every readable entry is under (the current MK's). */
  verificationPattern: string | undefined;
}

export type Progress = (done: number, total: number) => void;

/** The operations of a staged MK rotation; each acts on the selected units. */
export interface CryptoUnitSet {
  readonly id: string;
  /** Every unit of the set, selected or not, with its registers. */
  listUnits(): Promise<CryptoUnit[]>;
  /** Fails with AUTH_EXPIRED when the administrator's login is no longer valid. */
  checkAuthentication(): Promise<void>;
  /** Stage 1: one fresh random value into the new-MK register of every selected unit (overwrites). */
  loadNewMasterKey(): Promise<{ verificationPattern: string }>;
  /** Stage 2: key storage re-encrypted from the current to the new MK; resumable. */
  reencryptKeyStorage(progress?: Progress): Promise<{ entries: number }>;
  /** Stage 3: new MK promoted to current on every selected unit, new registers cleared. */
  promoteNewMasterKey(): Promise<void>;
  removeFromSelection(unitIds: string[]): Promise<void>;
  addToSelection(unitIds: string[]): Promise<void>;
  /** Opens every entry of key storage with the current MK of the selected units. */
  checkKeyStorage(): Promise<KeyStorageCheck>;
}
