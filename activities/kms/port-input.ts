import type { RotationPolicy } from './key-management-service';
import { KmsError } from './kms-error';
import { DEK_LENGTH } from './wdek-format';

/**
 * The checks every KMS adapter makes of what reaches it through the port, before any request:
 * one wording for the operator, whichever KMS holds the key.
 */

// eslint-disable-next-line no-control-regex -- control characters are what it finds
export const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f]/;
export const MAX_REQUEST_ID = 256;

/** A value for an error message: strings quoted and cut at 80 characters, anything else named by its type. */
export function quote(value: unknown): string {
  if (typeof value !== 'string') return `a ${value === null ? 'null' : typeof value}`;
  return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value);
}

export function checkName(name: unknown): string {
  if (typeof name !== 'string' || name.length < 2 || name.length > 90 || CONTROL_CHARS.test(name)) {
    throw new KmsError('INVALID_INPUT', `key name ${quote(name)} must be 2 to 90 characters without control characters`);
  }
  return name;
}

export function checkRequestId(requestId: unknown, keyId: string): string {
  if (typeof requestId !== 'string' || requestId.length === 0 || requestId.length > MAX_REQUEST_ID || CONTROL_CHARS.test(requestId)) {
    throw new KmsError('INVALID_INPUT', `rotation request id ${quote(requestId)} must be 1 to ${MAX_REQUEST_ID} characters without control characters`, keyId);
  }
  return requestId;
}

export function checkDek(dek: unknown, keyId: string): void {
  if (!(dek instanceof Uint8Array) || dek.length !== DEK_LENGTH) throw new KmsError('INVALID_INPUT', `a DEK must be ${DEK_LENGTH} bytes`, keyId);
}

export function checkBatch(wdeks: unknown, keyId: string): void {
  if (!Array.isArray(wdeks)) throw new KmsError('INVALID_INPUT', 'a batch of WDEKs must be an array', keyId);
}

/** A policy's months (Key Protect's 1 to 12); the adapter maps them onto its KMS. */
export function checkPolicyMonths(policy: unknown, keyId: string): RotationPolicy['intervalMonths'] {
  const months: unknown = typeof policy === 'object' && policy !== null ? Reflect.get(policy, 'intervalMonths') : undefined;
  if (typeof months !== 'number' || !Number.isInteger(months) || months < 1 || months > 12) {
    throw new KmsError('INVALID_INPUT', `a rotation policy needs intervalMonths, an integer from 1 to 12 (got ${String(months)})`, keyId);
  }
  return months;
}
