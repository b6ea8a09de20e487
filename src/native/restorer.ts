// Typed promise API over the restorer (build/native/understudy-restore
// --serve): RestorerRequest frames in, RestorerReply frames out
// (proto/understudy/v1/restore.proto), on a socket at the restorer's fd 3 so
// that its stdin/stdout/stderr stay what it was given (a terminal passed on
// with tty 'inherit'). One restorer holds one clone: build it (seized and
// stopped), apply further deltas in place, resume it (it then runs detached
// and outlives the restorer) or abort it. A request that does not answer in
// time kills the restorer, and with it (PTRACE_O_EXITKILL, the reaper's
// PDEATHSIG) everything of a clone not yet resumed.
import { spawn, type ChildProcess } from 'node:child_process';
import type { Duplex } from 'node:stream';
import { DEFAULT_MAX_FRAME, encodeFrame, FrameDecoder, requireVersion } from './frames.js';
import { UnderstudyError, type ErrorCode } from '../util/errors.js';
import { logger } from '../util/log.js';
import { nativeBinary } from '../util/paths.js';
import { decodeReply, encodeRequest, ERROR_CODE_NAMES, type ApplyResultMsg, type CloneInfoMsg, type ReplyMsg, type RequestMsg } from './restorer-wire.js';

const log = logger('restorer');
export const RESTORER_VERSION = 1;

export type TtyMode = 'null' | 'inherit';

export interface RestorerStartOptions {
  /**
   * Runs the restorer through a wrapper (another node's namespaces, e.g.
   * `ip netns exec NAME ...`, or `script` for a terminal): gets the
   * restorer's argv, returns the argv to run. The wrapper must pass fd 3 on.
   */
  wrap?: (argv: string[]) => string[];
  /** Per request (default 120 s); the restorer is killed when one runs over. */
  timeoutMs?: number;
}

export interface BuildOptions {
  /** The image directory (holds epoch-NNNNNN/ subdirectories). */
  imageDir: string;
  /** Epoch to build (default: the newest). */
  epoch?: number;
  /** What a terminal fd of the app becomes: /dev/null (default) or the restorer's terminal. */
  tty?: TtyMode;
}

export interface Phases {
  read_ns: number;
  verify_ns: number;
  check_ns: number;
  tree_ns?: number;
  rebuild_ns?: number;
  finish_ns?: number;
  apply_ns?: number;
}

/** A clone as the restorer reports it (build, resume, check). */
export interface CloneInfo {
  epoch: number;
  imageId: string;
  /**
   * Host pids of the clone's processes, root first: the ones checkpointed for
   * an app adopted in the host's PID namespace, new ones for an app that had a
   * namespace of its own (its pids inside are the checkpointed ones). For a
   * check, the image's.
   */
  pids: number[];
  threads: number;
  /** Host pid of pid 1 of the clone's PID namespace (0 for a check). */
  reaper: number;
  /** Who is pid 1 in the new namespace: a reaper the restorer provides, or the app's root. */
  nsPid1: 'reaper' | 'root';
  /** Bytes of page content written into the clone so far. */
  bytes: number;
  /** Build/check: from the restorer's start; resume: the resume itself. */
  totalNs: number;
  phases: Phases;
  /** Build: the restorer's stub region (64 pages) in every process of the held clone; 0 otherwise. */
  stub: number;
}

/** What an in-place apply did (the restorer's ApplyResult message). */
export type ApplyResult = ApplyResultMsg;

/** A refused or failed request; `killed` lists what the restorer had created (all killed again). */
export class RestoreError extends UnderstudyError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly killed: number[],
  ) {
    super(code, message);
  }
}

// the codes a restorer raises; another one (a newer restorer) reads as E_RESTORE
const CODES: readonly ErrorCode[] = [
  'E_USAGE',
  'E_IMAGE_CORRUPT',
  'E_IMAGE_CHAIN',
  'E_FILE_CHANGED',
  'E_PID_TAKEN',
  'E_KERNEL_MISMATCH',
  'E_RESTORE',
  'E_LOCK_HELD',
  'E_NOT_AN_IMAGE',
  'E_VERSION',
  'E_UNSUPPORTED',
  'E_INTERNAL',
  'E_FRAME',
];

function codeName(v: number): ErrorCode {
  const name = ERROR_CODE_NAMES[v] ?? '';
  return (CODES as readonly string[]).includes(name) ? (name as ErrorCode) : 'E_RESTORE';
}

function cloneInfo(c: CloneInfoMsg | undefined): CloneInfo {
  if (!c) throw new UnderstudyError('E_FRAME', 'restorer reply: ok but without its result');
  const p = c.phases;
  const phases: Phases = { read_ns: p.readNs, verify_ns: p.verifyNs, check_ns: p.checkNs };
  if (p.treeNs) phases.tree_ns = p.treeNs;
  if (p.rebuildNs) phases.rebuild_ns = p.rebuildNs;
  if (p.finishNs) phases.finish_ns = p.finishNs;
  if (p.applyNs) phases.apply_ns = p.applyNs;
  return {
    epoch: c.epoch,
    imageId: c.imageId,
    pids: c.pids,
    threads: c.threads,
    reaper: c.reaper,
    nsPid1: c.rootIsInit ? 'root' : 'reaper',
    bytes: c.bytes,
    totalNs: c.totalNs,
    phases,
    stub: c.stub,
  };
}

interface Pending {
  resolve(r: ReplyMsg): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

export class RestorerClient {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly decoder = new FrameDecoder(DEFAULT_MAX_FRAME, 'restorer replies');
  private exited = false;
  private exitInfo = '';
  private stderrTail = '';
  private readonly exitPromise: Promise<void>;

  private constructor(
    private readonly child: ChildProcess,
    private readonly chan: Duplex,
    private readonly timeoutMs: number,
  ) {
    chan.on('data', (c: Buffer) => this.onData(c));
    chan.on('error', () => undefined);
    child.stderr?.on('data', (c: Buffer) => {
      this.stderrTail = (this.stderrTail + c.toString()).slice(-4000);
    });
    this.exitPromise = new Promise((resolve) => {
      const gone = (info: string): void => {
        if (this.exited) return;
        this.exited = true;
        this.exitInfo = info;
        const err = new UnderstudyError(
          'E_RESTORE',
          `the restorer (pid ${child.pid ?? 'none'}) ${info}${this.stderrTail ? `: ${this.stderrTail.trim().slice(-500)}` : ''}; ` +
            'what it had created and not resumed died with it',
        );
        for (const [, p] of this.pending) {
          clearTimeout(p.timer);
          p.reject(err);
        }
        this.pending.clear();
        resolve();
      };
      child.on('close', (code, signal) => gone(signal ? `was killed by ${signal}` : `exited with status ${code}`));
      child.on('error', (e) => {
        if (child.pid === undefined) gone(`could not be started (${e.message})`);
        else log.warn({ err: e, pid: child.pid }, 'restorer process error');
      });
    });
  }

  /** Starts a restorer process (it holds no clone yet). */
  static start(opts: RestorerStartOptions = {}): RestorerClient {
    let argv = [nativeBinary('restore'), '--serve', '--fd', '3'];
    if (opts.wrap) argv = opts.wrap(argv);
    const [cmd, ...args] = argv as [string, ...string[]];
    log.debug({ argv }, 'starting the restorer');
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
    return new RestorerClient(child, child.stdio[3] as Duplex, opts.timeoutMs ?? 120_000);
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  private onData(chunk: Buffer): void {
    let frames: Uint8Array[];
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      log.error({ err: e }, 'bad frame from the restorer; killing it');
      this.child.kill('SIGKILL');
      return;
    }
    for (const f of frames) {
      let rep: ReplyMsg;
      try {
        rep = decodeReply(f);
      } catch (e) {
        log.error({ err: e }, 'undecodable reply from the restorer; killing it');
        this.child.kill('SIGKILL');
        return;
      }
      const p = this.pending.get(Number(rep.id));
      if (!p) {
        log.warn({ id: Number(rep.id) }, 'restorer reply for no pending request');
        continue;
      }
      this.pending.delete(Number(rep.id));
      clearTimeout(p.timer);
      p.resolve(rep);
    }
  }

  private async request(cmd: Omit<RequestMsg, 'version' | 'id'>): Promise<ReplyMsg> {
    if (this.exited) throw new UnderstudyError('E_RESTORE', `the restorer ${this.exitInfo}`);
    const id = this.nextId++;
    const msg = encodeRequest({ version: RESTORER_VERSION, id, ...cmd });
    const rep = await new Promise<ReplyMsg>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        // traced with PTRACE_O_EXITKILL: killing the restorer kills a half-built clone
        this.child.kill('SIGKILL');
        reject(new UnderstudyError('E_TIMEOUT', `the restorer did not answer within ${this.timeoutMs} ms; it was killed, and what it had created with it`));
      }, this.timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.chan.write(encodeFrame(msg));
    });
    requireVersion('restorer reply', rep.version, RESTORER_VERSION);
    if (!rep.ok) {
      const killed = rep.killed;
      const m = rep.error || `restore failed (error code ${rep.errorCode})`;
      throw new RestoreError(codeName(rep.errorCode), killed.length ? `${m}; the processes it had created (${killed.join(' ')}) were killed` : m, killed);
    }
    return rep;
  }

  /** Creates and rebuilds the clone at an epoch; it stays seized and stopped. */
  async build(o: BuildOptions): Promise<CloneInfo> {
    checkEpoch(o.epoch);
    const rep = await this.request({ build: { imageDir: o.imageDir, epoch: o.epoch ?? -1, tty: o.tty === 'inherit' ? 1 : 0 } });
    return cloneInfo(rep.build);
  }

  /** Applies epoch (the clone's + 1) of the same image in place to the stopped clone. */
  async apply(epoch: number): Promise<ApplyResult> {
    checkEpoch(epoch);
    const a = (await this.request({ apply: { epoch } })).apply;
    if (!a) throw new UnderstudyError('E_FRAME', 'restorer reply: ok but without its result');
    return { ...a };
  }

  /** Lets the clone run (detached: it outlives the restorer). */
  async resume(): Promise<CloneInfo> {
    return cloneInfo((await this.request({ resume: {} })).resume);
  }

  /** Checks an image and this node; creates nothing. */
  async check(o: { imageDir: string; epoch?: number }): Promise<CloneInfo> {
    checkEpoch(o.epoch);
    return cloneInfo((await this.request({ check: { imageDir: o.imageDir, epoch: o.epoch ?? -1 } })).check);
  }

  /** Kills the clone held (if any); the host pids killed. */
  async abort(): Promise<number[]> {
    return (await this.request({ abort: {} })).abort?.killed ?? [];
  }

  /** Ends the request stream: the restorer aborts a clone it still holds, and exits. */
  async close(timeoutMs = 10_000): Promise<void> {
    if (this.exited) return;
    this.chan.end();
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    await this.exitPromise;
    clearTimeout(t);
  }

  /** For tests and emergencies: signal the restorer process itself. */
  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.child.kill(signal);
  }
}

function checkEpoch(epoch: number | undefined): void {
  if (epoch !== undefined && (!Number.isInteger(epoch) || epoch < 0)) {
    throw new UnderstudyError('E_USAGE', `epoch must be a non-negative integer, got ${epoch}`);
  }
}

export interface RestoreOptions extends BuildOptions {
  /** Only check the image and this node (nothing is created). */
  checkOnly?: boolean;
  timeoutMs?: number;
  wrap?: (argv: string[]) => string[];
}

export interface RestoreResult extends CloneInfo {
  checkOnly: boolean;
  /** From the restorer's start to the app running again. */
  restoreNs: number;
}

/**
 * Restores the app in `imageDir` (build + resume). Resolves once the app runs
 * again (detached: it outlives this call and this process); rejects with a
 * RestoreError (E_IMAGE_CORRUPT, E_IMAGE_CHAIN, E_FILE_CHANGED, E_PID_TAKEN,
 * E_KERNEL_MISMATCH, E_RESTORE, ...) when the restorer refused or failed, in
 * which case nothing of the app is left running.
 */
export async function restore(o: RestoreOptions): Promise<RestoreResult> {
  checkEpoch(o.epoch);
  const r = RestorerClient.start({ wrap: o.wrap, timeoutMs: o.timeoutMs });
  try {
    if (o.checkOnly) {
      const c = await r.check(o);
      return { ...c, checkOnly: true, restoreNs: c.totalNs };
    }
    const b = await r.build(o);
    const f = await r.resume();
    const res: RestoreResult = {
      ...b,
      checkOnly: false,
      bytes: f.bytes,
      restoreNs: b.totalNs + f.totalNs,
      phases: { ...b.phases, finish_ns: f.phases.finish_ns ?? 0 },
      stub: 0, // unmapped by the resume
    };
    log.info({ pids: res.pids, epoch: res.epoch, ms: res.restoreNs / 1e6 }, 'app restored');
    return res;
  } finally {
    await r.close();
  }
}
