// The one list of error codes at the seam: a native binary sends the value of
// `enum ErrorCode` (proto/understudy/v1/errors.proto) and the agent raises an
// UnderstudyError with the same code, 1:1. A value the enum does not list (a
// binary of another version) or E_UNSPECIFIED is the binary's fault, reported
// as such and naming it; it never crashes the agent nor passes for a real code.
import { understudy } from '../gen/proto.js';
import { UnderstudyError, type ErrorCode } from '../util/errors.js';

const BY_VALUE = new Map<number, ErrorCode>();
const BY_NAME = new Map<ErrorCode, understudy.v1.ErrorCode>();
for (const [name, value] of Object.entries(understudy.v1.ErrorCode)) {
  if (typeof value !== 'number' || value === understudy.v1.ErrorCode.E_UNSPECIFIED) continue;
  // the generated object holds exactly the enum's names, which ErrorCode is derived from
  BY_VALUE.set(value, name as ErrorCode);
  BY_NAME.set(name as ErrorCode, value);
}

/** The code named by an enum value; undefined for E_UNSPECIFIED and values the enum does not list. */
export function errorCodeName(value: number): ErrorCode | undefined {
  return BY_VALUE.get(value);
}

/** The enum value of a code, for a message the agent sends. */
export function errorCodeValue(code: ErrorCode): understudy.v1.ErrorCode {
  const v = BY_NAME.get(code);
  if (v === undefined) throw new UnderstudyError('E_INTERNAL', `error code ${code} has no value in errors.proto`);
  return v;
}

/**
 * The error a binary reported in a reply: its code as is (a retryable E_BUSY
 * stays E_BUSY). `binary` names it for a person, e.g. "understudy-engine".
 */
export function binaryError(binary: string, code: number, message: string): UnderstudyError {
  const name = errorCodeName(code);
  if (name) return new UnderstudyError(name, message || `${binary} failed with ${name} and no message`);
  if (code === understudy.v1.ErrorCode.E_UNSPECIFIED) {
    return new UnderstudyError('E_NATIVE', `${binary} reported a failure without an error code${message ? `: ${message}` : ''}`);
  }
  return new UnderstudyError(
    'E_FRAME',
    `${binary} sent error code ${code}, which errors.proto does not list (is it a build of another version?)` + (message ? `: ${message}` : ''),
  );
}
