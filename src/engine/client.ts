// Typed promise API over the checkpoint engine (build/native/understudy-engine):
// spawns it, sends EngineRequest frames on its stdin, matches EngineReply frames
// from its stdout by id. A request that does not answer in time kills the
// engine (the kernel then detaches it from the app, which keeps running); an
// engine that dies fails every pending request with E_ENGINE_DIED.
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { understudy } from '../gen/proto.js';
import { UnderstudyError, type ErrorCode } from '../util/errors.js';
import { logger } from '../util/log.js';
import { nativeBinary } from '../util/paths.js';
import { DEFAULT_MAX_FRAME, encodeFrame, FrameDecoder, requireVersion } from './frames.js';

const log = logger('engine');
export const ENGINE_VERSION = 1;

export interface AttachOptions {
  includeChildren?: boolean;
  /** userfaultfd write-protect tracking: needed for incremental checkpoints. */
  trackDirty?: boolean;
}

export interface AttachResult {
  pids: number[];
  threads: number;
  uffdFeatures: number;
  seizeNs: number;
}

export interface CheckpointOptions {
  imageDir: string;
  full?: boolean;
  verifyFullDir?: string;
  killAfter?: boolean;
  debugStallMs?: number;
  dryRun?: boolean;
  /** Test hook: the engine's writer waits this long before writing. */
  debugWriteDelayMs?: number;
  timeoutMs?: number;
  onProgress?: (stage: string) => void;
}

export interface CheckpointResult {
  epoch: number;
  full: boolean;
  epochDir: string;
  verifyFullEpochDir: string;
  pauseNs: number;
  barrierNs: number;
  stateNs: number;
  scanNs: number;
  copyNs: number;
  writeNs: number;
  pages: number;
  bytes: number;
  processes: number;
  threads: number;
  perProcess: { pid: number; pages: number; newRegions: number }[];
}

export interface StatusResult {
  pids: number[];
  threads: number;
  lastEpoch: number;
  hasEpoch: boolean;
  imageDir: string;
}

interface Pending {
  resolve(r: understudy.v1.EngineReply): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
  onProgress?: (stage: string) => void;
}

const KNOWN_CODES: readonly ErrorCode[] = [
  'E_USAGE', 'E_NO_SUCH_PROCESS', 'E_NOT_OURS', 'E_UNSUPPORTED', 'E_NATIVE', 'E_IMAGE_WRITE', 'E_IMAGE_EXISTS',
  'E_VERSION', 'E_FRAME', 'E_BARRIER', 'E_KERNEL_FEATURE', 'E_INTERNAL',
];

function toCode(c: string): ErrorCode {
  return (KNOWN_CODES as readonly string[]).includes(c) ? (c as ErrorCode) : 'E_NATIVE';
}

export class EngineClient {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly decoder = new FrameDecoder(DEFAULT_MAX_FRAME, 'engine stdout');
  private exited = false;
  private exitInfo = '';
  private stderrTail = '';
  private readonly exitPromise: Promise<void>;

  private constructor(
    private readonly child: ChildProcessByStdio<Writable, Readable, Readable>,
    private readonly defaultTimeoutMs: number,
  ) {
    child.stdout.on('data', (chunk: Buffer) => this.onData(chunk));
    child.stderr.on('data', (chunk: Buffer) => {
      this.stderrTail = (this.stderrTail + chunk.toString()).slice(-2000);
    });
    child.stdin.on('error', () => undefined);
    this.exitPromise = new Promise((resolve) => {
      const gone = (info: string, released: boolean): void => {
        if (this.exited) return;
        this.exited = true;
        this.exitInfo = info;
        const err = new UnderstudyError(
          'E_ENGINE_DIED',
          `the checkpoint engine (pid ${child.pid ?? 'none'}) ${info}${this.stderrTail ? `: ${this.stderrTail.trim()}` : ''}; ` +
            (released ? 'the app was released by the kernel and keeps running' : 'the app was never touched'),
        );
        for (const [, p] of this.pending) {
          clearTimeout(p.timer);
          p.reject(err);
        }
        this.pending.clear();
        resolve();
      };
      child.on('exit', (code, signal) => gone(signal ? `killed by ${signal}` : `exited with status ${code}`, true));
      // spawn itself failed (ENOENT, EACCES, EAGAIN, ENOMEM): no process and no
      // 'exit' event; unhandled, this 'error' would crash the agent, and the
      // request already sent would wait for its whole timeout
      child.on('error', (e) => {
        if (child.pid === undefined) gone(`could not be started (${e.message})`, false);
        else log.warn({ err: e, pid: child.pid }, 'engine process error');
      });
    });
  }

  /** Starts an engine process. */
  /** `env`: variables set (a string) or removed (undefined) for the engine only. */
  static start(opts: { binary?: string; timeoutMs?: number; env?: Record<string, string | undefined> } = {}): EngineClient {
    const bin = opts.binary ?? nativeBinary('engine');
    const env = { ...process.env };
    for (const [k, v] of Object.entries(opts.env ?? {})) {
      if (v === undefined) delete env[k];
      else env[k] = v;
    }
    // its own session: a Ctrl-C at the agent's terminal is for the agent,
    // which finishes its epoch and then tells the engine what to do
    const child = spawn(bin, [], { stdio: ['pipe', 'pipe', 'pipe'], detached: true, env });
    log.debug({ pid: child.pid }, 'engine started');
    return new EngineClient(child, opts.timeoutMs ?? 60_000);
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get alive(): boolean {
    return !this.exited;
  }

  private onData(chunk: Buffer): void {
    let frames: Uint8Array[];
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      log.error({ err: e }, 'bad frame from engine; killing it');
      this.child.kill('SIGKILL');
      return;
    }
    for (const f of frames) {
      let rep: understudy.v1.EngineReply;
      try {
        rep = understudy.v1.EngineReply.decode(f);
      } catch (e) {
        // a reply that does not decode: the engine is not to be trusted further
        log.error({ err: e }, 'undecodable reply from engine; killing it');
        this.child.kill('SIGKILL');
        return;
      }
      const p = this.pending.get(Number(rep.id));
      if (!p) {
        log.warn({ id: Number(rep.id) }, 'engine reply for no pending request');
        continue;
      }
      if (rep.progress) {
        p.onProgress?.(rep.stage);
        continue;
      }
      this.pending.delete(Number(rep.id));
      clearTimeout(p.timer);
      p.resolve(rep);
    }
  }

  private async request(
    cmd: Omit<understudy.v1.IEngineRequest, 'version' | 'id'>,
    timeoutMs = this.defaultTimeoutMs,
    onProgress?: (stage: string) => void,
  ): Promise<understudy.v1.EngineReply> {
    if (this.exited) {
      throw new UnderstudyError('E_ENGINE_DIED', `the checkpoint engine ${this.exitInfo}`);
    }
    const id = this.nextId++;
    const what = Object.keys(cmd)[0];
    const msg = understudy.v1.EngineRequest.encode({ version: ENGINE_VERSION, id, ...cmd }).finish();
    const t0 = process.hrtime.bigint();
    log.debug({ id, cmd: what, request: cmd }, 'engine request');
    const rep = await new Promise<understudy.v1.EngineReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        // A stuck engine may hold the app stopped: killing it makes the
        // kernel detach and resume every thread.
        this.child.kill('SIGKILL');
        reject(new UnderstudyError('E_TIMEOUT', `the checkpoint engine did not answer within ${timeoutMs} ms; it was killed and the app released`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer, onProgress });
      this.child.stdin.write(encodeFrame(msg));
    });
    requireVersion('engine reply', rep.version, ENGINE_VERSION);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (log.isLevelEnabled('debug')) {
      // with defaults: epoch 0 and other zero fields are shown, not left out
      const o = understudy.v1.EngineReply.toObject(rep, { defaults: true });
      if (rep.ok) log.debug({ id, cmd: what, ms, result: rep.result ? o[rep.result] : undefined }, 'engine reply');
      else log.debug({ id, cmd: what, ms, errorCode: rep.errorCode, error: rep.error }, 'engine refused');
    }
    if (!rep.ok) {
      throw new UnderstudyError(toCode(rep.errorCode), rep.error || `engine error ${rep.errorCode}`);
    }
    return rep;
  }

  async attach(pid: number, opts: AttachOptions = {}): Promise<AttachResult> {
    const rep = await this.request({
      attach: { pid, includeChildren: opts.includeChildren ?? true, trackDirty: opts.trackDirty ?? true },
    });
    const a = rep.attach as understudy.v1.AttachResult;
    return { pids: a.pids.map(Number), threads: a.threads, uffdFeatures: Number(a.uffdFeatures), seizeNs: Number(a.seizeNs) };
  }

  async checkpoint(o: CheckpointOptions): Promise<CheckpointResult> {
    const rep = await this.request(
      {
        checkpoint: {
          imageDir: o.imageDir,
          full: o.full ?? false,
          verifyFullDir: o.verifyFullDir ?? '',
          killAfter: o.killAfter ?? false,
          debugStallMs: o.debugStallMs ?? 0,
          dryRun: o.dryRun ?? false,
          debugWriteDelayMs: o.debugWriteDelayMs ?? 0,
        },
      },
      o.timeoutMs,
      o.onProgress,
    );
    const c = rep.checkpoint as understudy.v1.CheckpointResult;
    return {
      epoch: c.epoch,
      full: c.full,
      epochDir: c.epochDir,
      verifyFullEpochDir: c.verifyFullEpochDir,
      pauseNs: Number(c.pauseNs),
      barrierNs: Number(c.barrierNs),
      stateNs: Number(c.stateNs),
      scanNs: Number(c.scanNs),
      copyNs: Number(c.copyNs),
      writeNs: Number(c.writeNs),
      pages: Number(c.pages),
      bytes: Number(c.bytes),
      processes: c.processes,
      threads: c.threads,
      perProcess: (c.perProcess as understudy.v1.ProcessPages[]).map((p) => ({ pid: p.pid, pages: Number(p.pages), newRegions: p.newRegions })),
    };
  }

  async status(): Promise<StatusResult> {
    const s = (await this.request({ status: {} })).status as understudy.v1.StatusResult;
    return { pids: s.pids.map(Number), threads: s.threads, lastEpoch: s.lastEpoch, hasEpoch: s.hasEpoch, imageDir: s.imageDir };
  }

  /** Releases the app: untraced, no tracking state left, running. */
  async detach(): Promise<void> {
    await this.request({ detach: {} });
  }

  /** SIGKILLs every app process (CRIU's default after a dump). */
  async killApp(): Promise<void> {
    await this.request({ killApp: {} });
  }

  /** Closes the pipe: the engine detaches (app keeps running) and exits. */
  async close(timeoutMs = 10_000): Promise<void> {
    if (this.exited) return;
    this.child.stdin.end();
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    await this.exitPromise;
    clearTimeout(t);
  }

  /** For tests and emergencies: signal the engine process itself. */
  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.child.kill(signal);
  }

  waitExit(): Promise<void> {
    return this.exitPromise;
  }
}
