// Errors are values with a code and a message a person can act on. The CLI
// prints the message and exits non-zero; the stack only with --debug.

export type ErrorCode =
  | 'E_USAGE'
  | 'E_NOT_ROOT'
  | 'E_CONFIG'
  | 'E_KERNEL_FEATURE'
  | 'E_NOT_BUILT'
  | 'E_FRAME'
  | 'E_VERSION'
  | 'E_NATIVE'
  | 'E_NO_SUCH_PROCESS'
  | 'E_IMAGE_CORRUPT'
  | 'E_IMAGE_CHAIN'
  | 'E_FILE_CHANGED'
  | 'E_PID_TAKEN'
  | 'E_KERNEL_MISMATCH'
  | 'E_RESTORE'
  | 'E_LOCK_HELD'
  | 'E_NOT_AN_IMAGE'
  | 'E_IMAGE_EXISTS'
  | 'E_IMAGE_WRITE'
  | 'E_NOT_OURS'
  | 'E_UNSUPPORTED'
  | 'E_BARRIER'
  | 'E_ENGINE_DIED'
  | 'E_TIMEOUT'
  | 'E_INTERNAL'
  | 'E_TRACER';

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
