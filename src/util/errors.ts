// Errors are values with a code and a message a person can act on. The CLI
// prints the message and exits non-zero; the stack only with --debug.

// The codes are the values of `enum ErrorCode` in proto/understudy/v1/errors.proto,
// the list the native binaries use too: a code not listed there does not
// type-check. Only the type is imported, so this module loads no protobuf code;
// src/native/ turns a binary's enum value into this name (errorCodeName).
import type { understudy } from '../gen/proto.js';

/** Every code but E_UNSPECIFIED, which never names a real error. */
export type ErrorCode = Exclude<keyof typeof understudy.v1.ErrorCode, 'E_UNSPECIFIED'>;

export class UnderstudyError extends Error {
  readonly code: ErrorCode;
  /** Exit status the CLI uses for this error (2 for usage, 1 otherwise). */
  readonly exitCode: number;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; exitCode?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'UnderstudyError';
    this.code = code;
    this.exitCode = options?.exitCode ?? (code === 'E_USAGE' ? 2 : 1);
  }
}

export function isUnderstudyError(e: unknown): e is UnderstudyError {
  return e instanceof UnderstudyError;
}
