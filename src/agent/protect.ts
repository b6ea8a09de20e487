// The protect loop: one app under the agent's care, from attach to stop. It
// owns the app's checkpoint engine, its tracer session and dependency graph,
// and its epoch chain; it takes epoch 0 at start, then an epoch whenever the
// schedule says so or one is requested; it marks the graph at each epoch's
// real barrier; it hands each epoch, in order, to its sinks (where replication
// will ship it), the next barrier not waiting for an earlier epoch's write or
// sinks beyond maxAhead epochs. The loop owns the chain: every checkpoint names
// its image, epoch and parent, so an engine that dies is replaced (restartEngine)
// and the new one continues the same chain. The app's safety comes first:
// whatever fails, the engine is closed or dies, and the kernel releases the app,
// which keeps running; the failure is reported as an UnderstudyError, thrown or
// emitted.
import { EngineClient, type CheckpointResult } from '../native/engine.js';
import type { AppGraph } from '../graph/graph.js';
import { monotonicNs } from '../graph/changes.js';
import type { DirtySet } from '../graph/model.js';
import { readStat } from '../proc/procfs.js';
import type { TraceSession } from '../trace/session.js';
import { isUnderstudyError, UnderstudyError } from '../util/errors.js';
import { logger } from '../util/log.js';
import { EpochChain, type ChainPosition, type EpochRecord, type EpochTrigger } from './chain.js';
import { checkSchedule, nextEpochIn, scheduleDone, type Schedule } from './schedule.js';

const log = logger('agent');

/** A checkpoint the engine refuses as busy (E_BUSY, retryable) is tried this many times in all, this far apart. */
const BUSY_ATTEMPTS = 3;
const BUSY_RETRY_MS = 20;
const DEFAULT_MAX_AHEAD = 4;
/** Engines started in a row, none of which wrote an epoch, before the loop gives up. */
const DEFAULT_MAX_ENGINE_RESTARTS = 3;
/** Pause before the n-th restart in a row: n times this. */
const RESTART_BACKOFF_MS = 100;

/**
 * How the loop keeps the app's dependency graph: 'live' traces the app (eBPF)
 * and marks the graph at every barrier, so each epoch comes with its dirty set;
 * 'seed' reads it once from /proc at start; 'none' keeps none (a plain dump).
 */
export type GraphMode = 'live' | 'seed' | 'none';

export interface ProtectOptions {
  /** The app's root process (adopted, running). */
  pid: number;
  imageDir: string;
  /** The root's descendants are part of the app (default true). */
  includeChildren?: boolean;
  /** Exact dirty-page tracking, needed for delta epochs (default true); false: epoch 0 only. */
  incremental?: boolean;
  graph?: GraphMode;
  schedule?: Schedule;
  /** Each epoch, in order, once written. */
  sinks?: EpochSink[];
  /**
   * Captures may run ahead of the handling of earlier epochs (their write, the
   * graph's mark, the sinks): a capture waits until the epoch this many before
   * it is handled (default 4; 1: each epoch handled before the next barrier).
   * This is the sinks' back-pressure.
   */
  maxAhead?: number;
  engine?: { binary?: string; timeoutMs?: number; env?: Record<string, string | undefined> };
  /**
   * An engine that dies (E_ENGINE_DIED, or killed after a timeout) once the
   * loop runs is replaced: a new engine attaches to the app and continues the
   * same chain, its first epoch full. The epochs the dead engine had not
   * written are lost (stage 'lost'; a requestEpoch() for one rejects with its
   * error). Default: on with incremental (a loop of one epoch has nothing to
   * continue). Off: the loop fails, the app released.
   */
  restartEngine?: boolean;
  /** Restarts in a row with no epoch written in between before the loop fails (default 3). */
  maxEngineRestarts?: number;
  /** Period of the live graph's reconciliation with /proc, ms (default 0: none). */
  reconcileMs?: number;
  /** Test hooks passed with every checkpoint request. */
  debug?: { stallMs?: number; writeDelayMs?: number };
}

/** One epoch, as handed to sinks and listeners. */
export interface EpochTaken {
  record: EpochRecord;
  /** The engine's own figures. */
  result: CheckpointResult;
  /** With a live graph, for a delta: what the graph saw change between the parent's barrier and this one. */
  dirty: DirtySet | undefined;
}

/**
 * Where an epoch goes after it is written: the seam replication plugs into
 * ("ship the epoch"). Called once per epoch, in order; a slow sink holds the
 * captures back once maxAhead epochs wait for it (back-pressure). A throw
 * fails the loop (the app is released).
 */
export interface EpochSink {
  readonly name: string;
  epoch(e: EpochTaken): Promise<void> | void;
}

export type LoopState = 'new' | 'starting' | 'running' | 'stopping' | 'stopped' | 'failed';

/** How the loop ended: stop() was called, the app exited, or something failed (the app was released). */
export interface LoopEnd {
  reason: 'stopped' | 'app-exited' | 'failed';
  error?: UnderstudyError;
  epochs: number;
}

interface LoopEvents {
  /**
   * A stage of the epoch under way, as the engine reports it ('released': the
   * app runs again, the write is under way); 'retry' (the engine was busy, it is
   * asked again), 'skipped' (still busy: no epoch this time), 'lost' (the
   * engine died before writing it; restartEngine) and 'recovered' (it died
   * after putting it in place, before its reply: the epoch is taken from the
   * image directory) are the loop's.
   */
  stage: { epoch: number; stage: string };
  epoch: EpochTaken;
  /** A new engine is attached to the app after the one before died; the chain continues at `nextEpoch` (full). */
  restarted: { enginePid: number; attempt: number; nextEpoch: number; error: UnderstudyError };
  failed: UnderstudyError;
  ended: LoopEnd;
}

function asUnderstudyError(e: unknown): UnderstudyError {
  if (isUnderstudyError(e)) return e;
  return new UnderstudyError('E_INTERNAL', `protect loop: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
}

export class ProtectLoop {
  readonly chain: EpochChain;
  private engineClient: EngineClient | undefined;
  private session: TraceSession | undefined;
  private graphOf: AppGraph | undefined;
  private st: LoopState = 'new';
  private timer: NodeJS.Timeout | undefined;
  /** Resolves when the last capture begun has released the app (or ended): captures are taken one at a time. */
  private captureTail: Promise<void> = Promise.resolve();
  /** Resolves when every epoch begun is handled (recorded, marked, shipped) or failed; epochs are handled in order. */
  private doneTail: Promise<void> = Promise.resolve();
  /** When each of the last maxAhead epochs begun is handled, oldest first. */
  private handledTails: Promise<void>[] = [];
  private failure: UnderstudyError | undefined;
  private readonly listeners: { [K in keyof LoopEvents]: ((v: LoopEvents[K]) => void)[] } = { stage: [], epoch: [], restarted: [], failed: [], ended: [] };
  private endWith: (e: LoopEnd) => void = () => {};
  private scheduleDoneWith: () => void = () => {};
  /** The app's root exited: the loop is ending, an epoch that fails now does not fail the loop. */
  private exiting = false;
  private tearingDown: Promise<UnderstudyError | undefined> | undefined;
  /** A restart of the engine under way. */
  private restarting: Promise<void> | undefined;
  /** Engines started since the last epoch written. */
  private restartsInRow = 0;
  /** Resolves when the loop has ended (stopped, app exited, or failed); never rejects. */
  readonly ended: Promise<LoopEnd>;
  /** Resolves when the schedule has taken its maxDeltas, or the loop ended. */
  readonly scheduleDone: Promise<void>;
  private readonly opts: Required<Pick<ProtectOptions, 'includeChildren' | 'incremental' | 'graph' | 'reconcileMs' | 'restartEngine' | 'maxEngineRestarts'>> &
    ProtectOptions;

  constructor(opts: ProtectOptions) {
    const incremental = opts.incremental ?? true;
    this.opts = {
      includeChildren: true,
      incremental,
      graph: 'live',
      reconcileMs: 0,
      restartEngine: incremental,
      maxEngineRestarts: DEFAULT_MAX_ENGINE_RESTARTS,
      ...opts,
    };
    if (!(Number.isInteger(this.opts.maxEngineRestarts) && this.opts.maxEngineRestarts >= 0)) {
      throw new UnderstudyError('E_USAGE', `maxEngineRestarts must be a non-negative integer, got ${this.opts.maxEngineRestarts}`);
    }
    this.opts.schedule = checkSchedule(opts.schedule ?? {});
    if (opts.maxAhead !== undefined && !(Number.isInteger(opts.maxAhead) && opts.maxAhead >= 1)) {
      throw new UnderstudyError('E_USAGE', `maxAhead must be an integer of at least 1, got ${opts.maxAhead}`);
    }
    if (this.opts.incremental === false && (this.opts.schedule.intervalMs !== undefined || (this.opts.schedule.maxDeltas ?? 0) > 0)) {
      throw new UnderstudyError('E_USAGE', 'delta epochs need dirty tracking: a schedule of deltas with incremental: false');
    }
    if (this.opts.graph === 'live' && !this.opts.includeChildren) {
      throw new UnderstudyError('E_USAGE', "a live graph traces the app's whole process tree: includeChildren: false needs graph 'seed' or 'none'");
    }
    this.chain = new EpochChain(opts.imageDir);
    this.ended = new Promise((res) => (this.endWith = res));
    this.scheduleDone = new Promise((res) => (this.scheduleDoneWith = res));
    void this.ended.then(() => this.scheduleDoneWith());
  }

  get state(): LoopState {
    return this.st;
  }

  get pid(): number {
    return this.opts.pid;
  }

  /** The app's dependency graph (undefined with graph 'none', or before start). */
  get graph(): AppGraph | undefined {
    return this.graphOf;
  }

  /** The engine process's pid (tests, diagnostics). */
  get enginePid(): number | undefined {
    return this.engineClient?.pid;
  }

  /** The tracer's native process of a live graph (tests, diagnostics). */
  get tracerPid(): number | undefined {
    return this.session?.tracer.pid;
  }

  /** The tracer session of a live graph (tests, diagnostics). */
  get tracer(): TraceSession | undefined {
    return this.session;
  }

  /** What made the loop fail, if it did. */
  get error(): UnderstudyError | undefined {
    return this.failure;
  }

  get epochs(): readonly EpochRecord[] {
    return this.chain.epochs;
  }

  /** Listens for an event; returns the function that stops listening. A listener that throws is logged, never fatal. */
  on<K extends keyof LoopEvents>(event: K, fn: (v: LoopEvents[K]) => void): () => void {
    const list = this.listeners[event] as ((v: LoopEvents[K]) => void)[];
    list.push(fn);
    return () => {
      const i = list.indexOf(fn);
      if (i >= 0) list.splice(i, 1);
    };
  }

  private emit<K extends keyof LoopEvents>(event: K, v: LoopEvents[K]): void {
    for (const fn of [...(this.listeners[event] as ((v: LoopEvents[K]) => void)[])]) {
      try {
        fn(v);
      } catch (e) {
        log.error({ err: e, event }, 'protect loop listener failed');
      }
    }
  }

  /**
   * Attaches without taking an epoch yet: the tracer (live graph) first, so
   * that nothing the app does from the seed on is missed, then the engine.
   * start() does it when not done. On failure everything started is stopped
   * (the app released) and the error thrown.
   */
  async attach(): Promise<void> {
    if (this.st !== 'new') throw new UnderstudyError('E_INTERNAL', `protect loop for ${this.opts.pid}: attach() called when ${this.st}`);
    this.st = 'starting';
    const { pid } = this.opts;
    try {
      // (with no graph, the engine's attach says best what is wrong with the pid)
      if (this.opts.graph === 'live') {
        // loaded only for a live graph: a plain dump never loads the tracer
        const { TraceSession } = await import('../trace/session.js');
        this.session = await TraceSession.start({ pid, reconcileMs: this.opts.reconcileMs });
        this.graphOf = this.session.graph;
        void this.session.rootExited.then(() => this.appExited());
      } else if (this.opts.graph === 'seed') {
        const { seedAppGraph } = await import('./seed.js');
        this.graphOf = seedAppGraph(pid, { includeChildren: this.opts.includeChildren });
      }
      const engine = this.startEngine();
      const a = await engine.attach(pid, { includeChildren: this.opts.includeChildren, trackDirty: this.opts.incremental });
      log.info({ app: pid, pids: a.pids, threads: a.threads, seizeMs: a.seizeNs / 1e6, graph: this.opts.graph }, 'app attached');
    } catch (e) {
      const err = this.failure ?? asUnderstudyError(e);
      this.fail(err);
      await this.tearingDown;
      throw err;
    }
  }

  /** Starts an engine and watches it: its death restarts it (restartEngine, once running) or fails the loop. */
  private startEngine(): EngineClient {
    const engine = EngineClient.start(this.opts.engine ?? {});
    this.engineClient = engine;
    void engine.waitExit().then(() => {
      // an engine closed by the loop, or one already replaced
      if (engine !== this.engineClient || (this.st !== 'starting' && this.st !== 'running')) return;
      const err = new UnderstudyError(
        'E_ENGINE_DIED',
        `the checkpoint engine (pid ${engine.pid}) exited while protecting app ${this.opts.pid}; the kernel released the app, which keeps running`,
      );
      if (this.st === 'running' && this.opts.restartEngine) void this.restartEngine(engine, err);
      else this.fail(err);
    });
    return engine;
  }

  /**
   * The engine died while the loop runs: a new one attaches to the app (which
   * the kernel released and which kept running) and the chain goes on from
   * the newest epoch written, its next epoch full. Gives up, failing the loop
   * with E_ENGINE_DIED, after maxEngineRestarts engines in a row that wrote
   * no epoch. Once per dead engine; captures wait for it.
   */
  private restartEngine(dead: EngineClient, why: UnderstudyError): Promise<void> {
    if (dead !== this.engineClient) return this.restarting ?? Promise.resolve();
    this.restarting ??= (async () => {
      // one that was killed after a timeout may not be gone yet: the app is ours again only once it is
      if (dead.alive) dead.kill('SIGKILL');
      await dead.waitExit();
      let last = why;
      while (this.st === 'running') {
        if (this.restartsInRow >= this.opts.maxEngineRestarts) {
          const newest = this.chain.newestWritten;
          this.fail(
            new UnderstudyError(
              'E_ENGINE_DIED',
              `the checkpoint engine died ${this.restartsInRow + 1} times in a row while protecting app ${this.opts.pid}, ` +
                `${this.restartsInRow} restart(s) writing no epoch; the agent gave up (the limit is ${this.opts.maxEngineRestarts}): ` +
                `the app is released and keeps running, the chain in ${this.opts.imageDir} ends at epoch ${newest < 0 ? 'none' : newest}. Last: ${last.message}`,
              { cause: last },
            ),
          );
          return;
        }
        this.restartsInRow++;
        const attempt = this.restartsInRow;
        log.warn({ app: this.opts.pid, attempt, err: last.message }, 'the checkpoint engine died; starting a new one');
        await new Promise((r) => setTimeout(r, RESTART_BACKOFF_MS * (attempt - 1)));
        if (this.st !== 'running') return;
        const engine = this.startEngine();
        try {
          await engine.attach(this.opts.pid, { includeChildren: this.opts.includeChildren, trackDirty: this.opts.incremental });
        } catch (e) {
          const err = asUnderstudyError(e);
          if (this.st !== 'running') return;
          if (this.rootGone()) return this.appExited();
          // the new engine died too (or hung and was killed): once more, within the bound
          if ((err.code === 'E_ENGINE_DIED' || err.code === 'E_TIMEOUT') && !engine.alive) {
            last = err;
            continue;
          }
          await engine.close().catch(() => undefined);
          return this.fail(err);
        }
        if (this.st !== 'running' || engine !== this.engineClient) return;
        // what the dead engine captured and had not written is lost: the chain goes on after the newest written
        this.chain.rewind();
        const nextEpoch = this.chain.next().epoch;
        log.info({ app: this.opts.pid, engine: engine.pid, attempt, nextEpoch }, 'a new checkpoint engine continues the chain');
        this.emit('restarted', { enginePid: engine.pid, attempt, nextEpoch, error: last });
        return;
      }
    })().finally(() => (this.restarting = undefined));
    return this.restarting;
  }

  /** Attaches (unless attach() did), takes epoch 0 and arms the schedule; on failure the app is released and the error thrown. */
  async start(): Promise<EpochTaken> {
    if (this.st === 'new') await this.attach();
    if (this.st !== 'starting' || this.chain.epochs.length > 0) {
      throw this.failure ?? new UnderstudyError('E_INTERNAL', `protect loop for ${this.opts.pid}: start() called when ${this.st}`);
    }
    try {
      const first = await this.epoch('start').done;
      if (this.st === 'starting') this.st = 'running';
      this.arm();
      return first;
    } catch (e) {
      const err = this.failure ?? asUnderstudyError(e);
      this.fail(err);
      await this.tearingDown;
      throw err;
    }
  }

  /** Takes an epoch now (after the one under way, if any); the schedule's next epoch counts from its end. */
  async requestEpoch(): Promise<EpochTaken> {
    if (this.st !== 'running') {
      throw this.failure ?? new UnderstudyError('E_USAGE', `app ${this.opts.pid} is not being protected (the protect loop is ${this.st})`);
    }
    if (!this.opts.incremental) throw new UnderstudyError('E_USAGE', `app ${this.opts.pid} is protected without dirty tracking: no delta epochs`);
    this.disarm();
    const e = this.epoch('request');
    void e.released.then(() => this.arm());
    return e.done;
  }

  /** Deltas recorded (epoch 0 not counted). */
  private deltas(): number {
    return Math.max(0, this.chain.epochs.length - 1);
  }

  private disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private arm(): void {
    this.disarm();
    if (this.st !== 'running') return;
    // counted from the captures begun: the next one may come while the engine still writes the last
    const ms = this.opts.incremental ? nextEpochIn(this.opts.schedule!, this.chain.reservedDeltas) : undefined;
    if (ms === undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const e = this.epoch('interval');
      e.done.catch(() => undefined); // reported by fail(), or skipped
      void e.released.then(() => this.arm());
    }, ms);
  }

  /**
   * One epoch: its capture (barrier, capture, release) after the capture
   * before it has released the app; its handling (record, graph mark, sinks,
   * listeners) after the epoch before it is handled. So the next barrier
   * never waits for an earlier epoch's write, and epochs are still recorded
   * and shipped in order. `released` resolves when this capture is over
   * (the app released, or the capture failed).
   */
  private epoch(trigger: EpochTrigger): { released: Promise<void>; done: Promise<EpochTaken> } {
    let releasedNow: () => void = () => {};
    const released = new Promise<void>((res) => (releasedNow = res));
    const before = this.doneTail;
    const ahead = this.opts.maxAhead ?? DEFAULT_MAX_AHEAD;
    // back-pressure: the epoch maxAhead before this one must be handled first
    const gate = this.handledTails.length >= ahead ? this.handledTails[this.handledTails.length - ahead]! : Promise.resolve();
    const done = Promise.all([this.captureTail, gate]).then(() => this.epochNow(trigger, releasedNow, before));
    const settled = done.then(
      () => undefined,
      () => undefined,
    );
    this.captureTail = Promise.race([released, settled]);
    this.doneTail = Promise.all([before, settled]).then(() => undefined);
    this.handledTails.push(this.doneTail);
    if (this.handledTails.length > ahead) this.handledTails.splice(0, this.handledTails.length - ahead);
    void settled.then(releasedNow);
    return { released, done };
  }

  private async epochNow(trigger: EpochTrigger, released: () => void, before: Promise<void>): Promise<EpochTaken> {
    // a new engine is being attached: this capture goes to it
    if (this.restarting) await this.restarting;
    const engine = this.engineClient;
    if (!engine || (this.st !== 'running' && this.st !== 'starting')) {
      throw this.failure ?? new UnderstudyError('E_USAGE', `app ${this.opts.pid}: no epoch, the protect loop is ${this.st}`);
    }
    let pos: ChainPosition | undefined;
    let captured = false;
    try {
      // the write faults counted until now belong to the epoch this barrier closes
      if (this.session) await this.session.refreshWriteFaults().catch((e: unknown) => log.warn({ err: e }, 'write-fault counts not read'));
      const at = this.chain.reserve();
      pos = at;
      const next = at.epoch;
      const checkpoint = (): Promise<CheckpointResult> =>
        engine.checkpoint({
          imageDir: at.imageDir,
          // the agent's chain: a new engine continues it; '' only for epoch 0 of a new image
          chain: { imageId: at.imageId ?? '', epoch: at.epoch, parentEpoch: at.parentEpoch },
          debugStallMs: this.opts.debug?.stallMs,
          debugWriteDelayMs: this.opts.debug?.writeDelayMs,
          onProgress: (stage) => {
            if (stage === 'released') released();
            this.emit('stage', { epoch: next, stage });
          },
        });
      let result: CheckpointResult | undefined;
      for (let attempt = 1; !result; attempt++) {
        try {
          result = await checkpoint();
        } catch (e) {
          // the engine died after it put this epoch in place, before its reply: the epoch is taken
          // (checked here, before a new engine's attach rewinds the chain: that waits for I/O)
          if (this.opts.restartEngine && !engine.alive && this.st === 'running' && isUnderstudyError(e)) {
            result = this.chain.writtenWithoutReply(at);
            if (result) {
              log.warn({ app: this.opts.pid, epoch: next, err: e.message }, 'the engine died before its reply; the epoch is in place and taken');
              this.emit('stage', { epoch: next, stage: 'recovered' });
              break;
            }
          }
          // E_BUSY: the engine gave up this capture (the app was released) and says to try again
          if (!isUnderstudyError(e) || e.code !== 'E_BUSY' || attempt >= BUSY_ATTEMPTS || !engine.alive) throw e;
          log.warn({ app: this.opts.pid, epoch: next, attempt, err: e.message }, 'checkpoint busy; trying again');
          this.emit('stage', { epoch: next, stage: 'retry' });
          await new Promise((r) => setTimeout(r, BUSY_RETRY_MS));
        }
      }
      released();
      captured = true;
      // checked against what was asked before anything else: an epoch the chain cannot take fails the loop
      this.chain.written(result, at);
      this.restartsInRow = 0;
      // the epochs before this one are recorded and shipped first
      await before;
      if (this.failure) throw this.failure;
      const record = this.chain.append(result, trigger);
      let dirty: DirtySet | undefined;
      if (this.session && this.graphOf) dirty = await this.markGraph(this.session, this.graphOf, record);
      const taken: EpochTaken = { record, result, dirty };
      log.debug({ epoch: record.epoch, full: record.full, trigger, pauseMs: record.pauseNs / 1e6, pages: record.pages, bytes: record.bytes }, 'epoch taken');
      for (const sink of this.opts.sinks ?? []) {
        try {
          await sink.epoch(taken);
        } catch (e) {
          throw new UnderstudyError(
            isUnderstudyError(e) ? e.code : 'E_INTERNAL',
            `epoch ${record.epoch}: the ${sink.name} sink failed: ${(e as Error).message}`,
            { cause: e },
          );
        }
      }
      // its changes are handed on: the log keeps what happened since this barrier
      // (with replication, this follows the commit instead)
      if (this.session && this.graphOf && this.graphOf.epoch === record.epoch) this.graphOf.forget(record.epoch);
      this.emit('epoch', taken);
      if (scheduleDone(this.opts.schedule!, this.deltas())) this.scheduleDoneWith();
      return taken;
    } catch (e) {
      released();
      // nothing of it was written: its position goes to the next capture
      // (an engine that died loses every capture it had not written: the restart rewinds the chain)
      if (pos && !captured && engine.alive) this.chain.unreserve(pos);
      const err = this.failure ?? asUnderstudyError(e);
      // an app that exited during the epoch ends the loop; it did not fail it
      if (!this.failure && (this.exiting || (this.st === 'running' && this.rootGone()))) this.appExited();
      // the engine died with it (killed after a timeout, or on its own): the epoch is lost, a new
      // engine continues the chain from the newest epoch written
      else if (!this.failure && this.st === 'running' && this.opts.restartEngine && !captured && (err.code === 'E_ENGINE_DIED' || err.code === 'E_TIMEOUT')) {
        log.warn({ app: this.opts.pid, epoch: pos?.epoch, err: err.message }, 'epoch lost with its engine');
        this.emit('stage', { epoch: pos?.epoch ?? this.chain.next().epoch, stage: 'lost' });
        void this.restartEngine(engine, err);
      }
      // still busy after the retries: this epoch is skipped (nothing was written, the app runs,
      // its writes stay tracked), the schedule goes on; epoch 0 is not skipped, start() fails
      else if (!this.failure && err.code === 'E_BUSY' && this.st === 'running' && engine.alive) {
        log.warn({ app: this.opts.pid, err: err.message }, 'epoch skipped: the engine stayed busy');
        this.emit('stage', { epoch: this.chain.epochs.length, stage: 'skipped' });
      } else this.fail(err);
      throw err;
    }
  }

  /**
   * Marks the epoch in the graph at its barrier and returns the delta's dirty
   * set. The epoch on disk is exact whatever the graph says, so a graph that
   * cannot follow is reported, never fatal (the dirty set is then undefined).
   */
  private async markGraph(session: TraceSession, graph: AppGraph, record: EpochRecord): Promise<DirtySet | undefined> {
    try {
      // an engine that does not report its barrier's time: the reply's time, a little late
      graph.markEpoch(record.epoch, record.barrierAtNs > 0 ? record.barrierAtNs : monotonicNs());
      // every event stamped before the barrier has been submitted (the app was stopped at it): wait until the graph has them
      if (!(await session.sync(5_000)))
        log.warn({ epoch: record.epoch }, 'the tracer did not deliver every record before the barrier in 5 s: the dirty set may lack some');
      return record.parent === undefined ? undefined : graph.dirtySince(record.parent, record.epoch);
    } catch (e) {
      log.error({ err: e, epoch: record.epoch }, 'the graph could not follow this epoch: no dirty set for it');
      return undefined;
    }
  }

  private rootGone(): boolean {
    const st = readStat(this.opts.pid);
    return st === undefined || st.state === 'Z' || st.state === 'X';
  }

  /** The app's root is gone: nothing left to protect. */
  private appExited(): void {
    if (this.st !== 'running' && this.st !== 'starting') return;
    log.info({ app: this.opts.pid }, 'the app exited; protect loop ends');
    this.st = 'stopping';
    this.exiting = true;
    this.disarm();
    void this.doneTail.then(() => this.teardown('leave')).then(() => this.finish({ reason: 'app-exited', epochs: this.chain.epochs.length }, 'stopped'));
  }

  /** Records a failure once, releases the app (engine closed), stops the tracer. */
  private fail(err: UnderstudyError): void {
    if (this.failure || this.st === 'stopped' || this.st === 'failed') return;
    const wasStopping = this.st === 'stopping';
    this.failure = err;
    this.disarm();
    log.error({ app: this.opts.pid, code: err.code, err: err.message }, 'protect loop failed; the app is released and keeps running');
    this.emit('failed', err);
    if (wasStopping) return; // stop() finishes the teardown and reports the error
    this.st = 'failed';
    void this.teardown('leave').then(() => this.finish({ reason: 'failed', error: err, epochs: this.chain.epochs.length }, 'failed'));
  }

  private finish(end: LoopEnd, state: LoopState): void {
    this.st = state;
    this.emit('ended', end);
    this.endWith(end);
  }

  /** Releases or kills the app through the engine, closes it, stops the tracer; once; never throws (returns what failed). */
  private teardown(app: 'leave' | 'kill'): Promise<UnderstudyError | undefined> {
    this.tearingDown ??= (async () => {
      const engine = this.engineClient;
      let err: UnderstudyError | undefined;
      if (engine?.alive && !this.failure) {
        try {
          if (app === 'kill') await engine.killApp();
          else await engine.detach();
        } catch (e) {
          err = asUnderstudyError(e);
        }
      }
      // closing the engine's pipe detaches it from the app, whatever happened before
      await engine?.close().catch((e: unknown) => log.warn({ err: e }, 'engine close'));
      await this.session?.stop().catch((e: unknown) => log.warn({ err: e }, 'tracer stop'));
      return err;
    })();
    return this.tearingDown;
  }

  /**
   * Stops protecting: the schedule stops, the epoch under way finishes, then
   * the engine detaches (app 'leave', the default: it keeps running, untraced)
   * or kills the app ('kill', CRIU's default after a dump), and the tracer
   * stops. Throws the loop's failure if it failed (the app was released then).
   */
  async stop(opts: { app?: 'leave' | 'kill' } = {}): Promise<LoopEnd> {
    if (this.st === 'new') {
      this.finish({ reason: 'stopped', epochs: 0 }, 'stopped');
      return this.ended;
    }
    if (this.st === 'starting' || this.st === 'running') {
      this.st = 'stopping';
      this.disarm();
      await this.doneTail;
      await this.restarting;
      const err = await this.teardown(this.failure ? 'leave' : (opts.app ?? 'leave'));
      this.failure ??= err;
      this.finish(
        this.failure ? { reason: 'failed', error: this.failure, epochs: this.chain.epochs.length } : { reason: 'stopped', epochs: this.chain.epochs.length },
        this.failure ? 'failed' : 'stopped',
      );
    }
    const end = await this.ended;
    if (end.error) throw end.error;
    return end;
  }
}
