// Typed promise API over the checkpoint engine (build/native/understudy-engine):
// spawns it, sends EngineRequest frames on its stdin, matches EngineReply frames
// from its stdout by id. A request that does not answer in time kills the
// engine (the kernel then detaches it from the app, which keeps running); an
// engine that dies fails every pending request with E_ENGINE_DIED.
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { understudy } from '../gen/proto.js';
import { UnderstudyError } from '../util/errors.js';
import { logger } from '../util/log.js';
import { nativeBinary } from '../util/paths.js';
import { binaryError } from './codes.js';
import { DEFAULT_MAX_FRAME, encodeFrame, FrameDecoder, requireVersion } from './frames.js';

const log = logger('engine');
/** 2: a failed reply's code is the ErrorCode enum (EngineReply.code), no longer a string. */
export const ENGINE_VERSION = 2;

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

/** Where an epoch is written: the image directory, the epoch stream, or both. */
export type EpochSinkName = 'dir' | 'stream' | 'both';

/** The chain position of an epoch, owned by the agent. */
export interface ChainPosition {
  /** 32 hex digits; '' with epoch 0: the engine picks one (CheckpointResult.imageId). */
  imageId: string;
  epoch: number;
  /** epoch - 1 (default). */
  parentEpoch?: number;
}

export interface CheckpointOptions {
  imageDir: string;
  /** The agent's chain position; without it the engine numbers its own chain from 0. */
  chain?: ChainPosition;
  /** Default 'dir'. 'stream' and 'both' need an engine started with `epochStream`. */
  sink?: EpochSinkName;
  /** Directory sink without fsync (criu dump's default). */
  noFsync?: boolean;
  /** Bounds of the writer's queue (0/undefined: the engine's defaults, 64 epochs, 1 GiB of buffers queued). */
  maxEpochsInFlight?: number;
  maxQueuedBytes?: number;
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
  /** CLOCK_MONOTONIC (ns, the trace events' clock) when the barrier began. */
  barrierAtNs: number;
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
  imageId: string;
  parentEpoch: number;
  /** Data and names durable (fsync) before the reply. */
  fsynced: boolean;
  /** Sent on the epoch stream. */
  streamed: boolean;
  /** Of writeNs: time spent waiting behind earlier epochs. */
  queuedNs: number;
  /** Earlier epochs not yet written when this one was captured. */
  epochsInFlight: number;
  /** Of writeNs: page crcs, write(2)s, waits for the disk (write-back, fsync). */
  crcNs: number;
  ioNs: number;
  syncNs: number;
}

export interface StatusResult {
  pids: number[];
  threads: number;
  lastEpoch: number;
  hasEpoch: boolean;
  imageDir: string;
  imageId: string;
  epochsInFlight: number;
  hasWritten: boolean;
  lastWrittenEpoch: number;
}

interface Pending {
  resolve(r: understudy.v1.EngineReply): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
  onProgress?: (stage: string) => void;
}

const SINKS: Record<EpochSinkName, understudy.v1.EpochSink> = {
  dir: understudy.v1.EpochSink.SINK_DIR,
  stream: understudy.v1.EpochSink.SINK_STREAM,
  both: understudy.v1.EpochSink.SINK_DIR_AND_STREAM,
};

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

  /**
   * Starts an engine process. `env`: variables set (a string) or removed
   * (undefined) for the engine only. `epochStream`: give the engine a
   * stream (its fd 3) for the epoch stream sink, read from `epochStream`.
   */
  static start(opts: { binary?: string; timeoutMs?: number; env?: Record<string, string | undefined>; epochStream?: boolean } = {}): EngineClient {
    const bin = opts.binary ?? nativeBinary('engine');
    const env = { ...process.env };
    for (const [k, v] of Object.entries(opts.env ?? {})) {
      if (v === undefined) delete env[k];
      else env[k] = v;
    }
    // its own session: a Ctrl-C at the agent's terminal is for the agent,
    // which finishes its epoch and then tells the engine what to do
    const child = opts.epochStream
      ? spawn(bin, ['--epoch-stream-fd', '3'], { stdio: ['pipe', 'pipe', 'pipe', 'pipe'], detached: true, env })
      : spawn(bin, [], { stdio: ['pipe', 'pipe', 'pipe'], detached: true, env });
    log.debug({ pid: child.pid }, 'engine started');
    const c = new EngineClient(child as ChildProcessByStdio<Writable, Readable, Readable>, opts.timeoutMs ?? 60_000);
    if (opts.epochStream) c.epochStream = child.stdio[3] as Readable;
    return c;
  }

  /** The epoch stream (frames, see src/image/stream.ts) when started with `epochStream`. */
  epochStream: Readable | undefined;

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
      else log.debug({ id, cmd: what, ms, code: rep.code, error: rep.error }, 'engine refused');
    }
    if (!rep.ok) {
      throw binaryError('the checkpoint engine (understudy-engine)', rep.code, rep.error);
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
          chain: o.chain ? { imageId: o.chain.imageId, epoch: o.chain.epoch, parentEpoch: o.chain.parentEpoch ?? Math.max(0, o.chain.epoch - 1) } : null,
          sink: SINKS[o.sink ?? 'dir'],
          noFsync: o.noFsync ?? false,
          maxEpochsInFlight: o.maxEpochsInFlight ?? 0,
          maxQueuedBytes: o.maxQueuedBytes ?? 0,
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
      barrierAtNs: Number(c.barrierAtNs),
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
      imageId: c.imageId,
      parentEpoch: c.parentEpoch,
      fsynced: c.fsynced,
      streamed: c.streamed,
      queuedNs: Number(c.queuedNs),
      epochsInFlight: c.epochsInFlight,
      crcNs: Number(c.crcNs),
      ioNs: Number(c.ioNs),
      syncNs: Number(c.syncNs),
    };
  }

  async status(): Promise<StatusResult> {
    const s = (await this.request({ status: {} })).status as understudy.v1.StatusResult;
    return {
      pids: s.pids.map(Number),
      threads: s.threads,
      lastEpoch: s.lastEpoch,
      hasEpoch: s.hasEpoch,
      imageDir: s.imageDir,
      imageId: s.imageId,
      epochsInFlight: s.epochsInFlight,
      hasWritten: s.hasWritten,
      lastWrittenEpoch: s.lastWrittenEpoch,
    };
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
