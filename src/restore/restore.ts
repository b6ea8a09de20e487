// Restore of an image (epoch 0 + deltas) with the native restorer
// (build/native/understudy-restore): it refuses bad input before creating any
// process, brings the app's process tree back with its PIDs in a new PID
// namespace, and leaves it running detached. This module spawns it and turns
// its one-line JSON report into a typed result or an UnderstudyError.
import { spawn } from 'node:child_process';
import { UnderstudyError, type ErrorCode } from '../util/errors.js';
import { logger } from '../util/log.js';
import { nativeBinary } from '../util/paths.js';

const log = logger('restore');

export type TtyMode = 'null' | 'inherit';

export interface RestoreOptions {
  /** The image directory (holds epoch-NNNNNN/ subdirectories). */
  imageDir: string;
  /** Epoch to restore (default: the newest). */
  epoch?: number;
  /** What a terminal fd of the app becomes: /dev/null (default) or the restorer's terminal. */
  tty?: TtyMode;
  /** Only check the image and this node (nothing is created). */
  checkOnly?: boolean;
  timeoutMs?: number;
  /**
   * Runs the restorer through a wrapper (another node's namespaces, e.g.
   * `ip netns exec NAME ...`): gets the restorer's argv, returns the argv to run.
   */
  wrap?: (argv: string[]) => string[];
}

export interface RestoreResult {
  epoch: number;
  imageId: string;
  checkOnly: boolean;
  /**
   * Host pids of the restored processes, root first: the ones checkpointed for
   * an app adopted in the host's PID namespace, new ones for an app that had a
   * namespace of its own (its pids inside are the checkpointed ones). With
   * checkOnly, the image's.
   */
  pids: number[];
  threads: number;
  /** Host pid of pid 1 of the app's new PID namespace (0 with checkOnly). */
  reaper: number;
  /** Who is pid 1 in the new namespace: a reaper the restorer provides, or the app's root. */
  nsPid1: 'reaper' | 'root';
  /** Bytes of page content written into the restored processes. */
  bytes: number;
  restoreNs: number;
  phases: Record<string, number>;
}

const CODES: readonly ErrorCode[] = [
  'E_USAGE', 'E_IMAGE_CORRUPT', 'E_IMAGE_CHAIN', 'E_FILE_CHANGED', 'E_PID_TAKEN', 'E_KERNEL_MISMATCH', 'E_RESTORE', 'E_LOCK_HELD',
  'E_NOT_AN_IMAGE', 'E_VERSION', 'E_UNSUPPORTED', 'E_INTERNAL',
];

/** A refused or failed restore; `killed` lists what it had created (all killed again). */
export class RestoreError extends UnderstudyError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly killed: number[],
  ) {
    super(code, message);
  }
}

interface RawReport {
  ok: boolean;
  killed?: number[];
  code?: string;
  message?: string;
  epoch?: number;
  image_id?: string;
  check_only?: boolean;
  pids?: number[];
  threads?: number;
  reaper?: number;
  ns_pid_1?: string;
  bytes?: number;
  restore_ns?: number;
  phases?: Record<string, number>;
}

/** The restorer's argv for these options (binary first). */
export function restoreArgv(o: RestoreOptions): string[] {
  const argv = [nativeBinary('restore'), '-D', o.imageDir];
  if (o.epoch !== undefined) argv.push('--epoch', String(o.epoch));
  if (o.tty) argv.push('--tty', o.tty);
  if (o.checkOnly) argv.push('--check');
  return argv;
}

/** Parses the restorer's report; throws the UnderstudyError it describes. */
export function parseRestoreReport(stdout: string, stderr = '', exit: number | null = 0): RestoreResult {
  const line = stdout.trim().split('\n').filter((l) => l.startsWith('{')).pop();
  if (!line) {
    throw new UnderstudyError(
      'E_RESTORE',
      `the restorer ${exit === null ? 'was killed' : `exited with status ${exit}`} without a report${stderr ? `: ${stderr.trim().slice(-500)}` : ''}`,
    );
  }
  let r: RawReport;
  try {
    r = JSON.parse(line) as RawReport;
  } catch {
    throw new UnderstudyError('E_RESTORE', `the restorer printed an unreadable report: ${line.slice(0, 200)}`);
  }
  if (!r.ok) {
    const code = (CODES as readonly string[]).includes(r.code ?? '') ? (r.code as ErrorCode) : 'E_RESTORE';
    const killed = r.killed ?? [];
    const msg = r.message ?? `restore failed (${r.code ?? 'no code'})`;
    throw new RestoreError(
      code,
      killed.length ? `${msg}; the processes it had created (${killed.join(' ')}) were killed` : msg,
      killed,
    );
  }
  return {
    epoch: r.epoch ?? 0,
    imageId: r.image_id ?? '',
    checkOnly: r.check_only ?? false,
    pids: r.pids ?? [],
    threads: r.threads ?? 0,
    reaper: r.reaper ?? 0,
    nsPid1: r.ns_pid_1 === 'root' ? 'root' : 'reaper',
    bytes: r.bytes ?? 0,
    restoreNs: r.restore_ns ?? 0,
    phases: r.phases ?? {},
  };
}

/**
 * Restores the app in `imageDir`. Resolves once the app runs again (detached:
 * it outlives this call and this process); rejects with the restorer's error
 * code (E_IMAGE_CORRUPT, E_IMAGE_CHAIN, E_FILE_CHANGED, E_PID_TAKEN,
 * E_KERNEL_MISMATCH, E_RESTORE, ...) when it refused or failed, in which
 * case nothing of the app is left running.
 */
export async function restore(o: RestoreOptions): Promise<RestoreResult> {
  if (o.epoch !== undefined && (!Number.isInteger(o.epoch) || o.epoch < 0)) {
    throw new UnderstudyError('E_USAGE', `epoch must be a non-negative integer, got ${o.epoch}`);
  }
  let argv = restoreArgv(o);
  if (o.wrap) argv = o.wrap(argv);
  const [cmd, ...args] = argv as [string, ...string[]];
  log.debug({ argv }, 'starting the restorer');
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err = (err + c.toString()).slice(-4000)));
  const timeoutMs = o.timeoutMs ?? 120_000;
  const exit = await new Promise<number | null>((resolve, reject) => {
    const t = setTimeout(() => {
      // The restorer traces what it created with PTRACE_O_EXITKILL: killing
      // it kills the half-restored app with it.
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(t);
      reject(new UnderstudyError('E_RESTORE', `cannot start the restorer ${cmd}: ${e.message}`));
    });
    child.on('close', (code) => {
      clearTimeout(t);
      resolve(code);
    });
  });
  const r = parseRestoreReport(out, err, exit);
  log.info({ pids: r.pids, epoch: r.epoch, ms: r.restoreNs / 1e6 }, 'app restored');
  return r;
}
