// One traced app: the tracer feeding the dependency graph. Starts a command
// under the tracer (traced from its first instruction) or adopts a running
// process tree; keeps the graph current; reconciles it with /proc periodically.
import { AppGraph, type ReconcileReport } from '../graph/graph.js';
import type { DirtySet } from '../graph/model.js';
import { descendantsOf, isLive, readStat, requireProcess } from '../proc/procfs.js';
import { UnderstudyError } from '../util/errors.js';
import { logger } from '../util/log.js';
import type { TraceEvent } from './records.js';
import { spawnHeld, type HeldProcess } from './spawn.js';
import { Tracer, type TracerStats } from './tracer.js';

const log = logger('trace');

export interface SessionOptions {
  appId?: string;
  /** Start this command traced... */
  command?: string[];
  /** ...or adopt this running process and its descendants. */
  pid?: number;
  stdio?: 'inherit' | 'ignore' | 'pipe';
  onEvent?: (ev: TraceEvent) => void;
  /** Period of the reconciliation with /proc; 0 disables it. */
  reconcileMs?: number;
  staleGraceMs?: number;
  /** false: nobody will ask for dirty sets, keep no change log (see AppGraph). */
  changeLog?: boolean;
}

let seq = 0;
/** How long exited tgids are gathered before their write-fault entries are removed in one call. */
const FORGET_MS = 500;

export class TraceSession {
  readonly graph: AppGraph;
  rootPid = 0;
  held: HeldProcess | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly exited = new Set<number>();
  private forgetTimer: NodeJS.Timeout | undefined;
  private forgetting: Promise<void> | undefined;
  private stopping = false;
  private rootGone: () => void = () => {};
  /** Resolves when the root process has exited (traced exit event or reconciliation). */
  readonly rootExited: Promise<void>;
  events = 0;

  private constructor(
    readonly tracer: Tracer,
    private readonly opts: SessionOptions,
  ) {
    this.graph = new AppGraph({ changeLog: opts.changeLog });
    this.rootExited = new Promise((res) => (this.rootGone = res));
  }

  static async start(opts: SessionOptions): Promise<TraceSession> {
    if ((opts.command === undefined) === (opts.pid === undefined)) {
      throw new UnderstudyError('E_USAGE', 'give either a command to run or --pid PID');
    }
    if (opts.pid !== undefined) requireProcess(opts.pid);
    const appId = opts.appId ?? `trace-${process.pid}-${++seq}`;
    let session: TraceSession | undefined;
    const tracer = await Tracer.start({
      appId,
      staleGraceMs: opts.staleGraceMs,
      onEvent: (ev) => session?.onEvent(ev),
    });
    session = new TraceSession(tracer, opts);
    try {
      if (opts.command !== undefined) {
        const held = spawnHeld(opts.command, opts.stdio ?? 'inherit');
        session.held = held;
        session.rootPid = held.pid;
        await tracer.addProcesses([held.pid]);
        session.graph.seedFromProc([held.pid]);
        held.release();
        void held.exited.then(() => session!.rootGone());
      } else {
        session.rootPid = opts.pid!;
        const all = await tracer.addProcesses([opts.pid!], { descendants: true });
        session.graph.seedFromProc(all);
      }
    } catch (e) {
      session.held?.child.kill('SIGKILL');
      await tracer.stop();
      throw e;
    }
    const every = opts.reconcileMs ?? 0;
    if (every > 0) {
      session.timer = setInterval(() => {
        try {
          session!.reconcile();
        } catch (e) {
          log.error({ err: e }, 'reconciliation failed');
        }
      }, every);
      session.timer.unref();
    }
    return session;
  }

  private onEvent(ev: TraceEvent): void {
    this.events++;
    try {
      this.graph.apply(ev);
    } catch (e) {
      log.error({ err: e, ev: ev.type }, 'graph update failed');
    }
    if (ev.type === 'exit' && ev.groupDead) {
      if (ev.tgid === this.rootPid) this.rootGone();
      this.forgetFaultsOf(ev.tgid);
    }
    this.opts.onEvent?.(ev);
  }

  /**
   * The kernel's write-fault map keeps an entry per written region of every app
   * process and never drops one: the entries of exited processes are removed
   * here, a batch at most every FORGET_MS, so that an app that forks many
   * short-lived processes does not fill it.
   */
  private forgetFaultsOf(tgid: number): void {
    this.exited.add(tgid);
    if (this.forgetTimer || this.stopping) return;
    this.forgetTimer = setTimeout(() => {
      this.forgetTimer = undefined;
      this.forgetting = this.flushForgotten();
    }, FORGET_MS);
    this.forgetTimer.unref();
  }

  private async flushForgotten(): Promise<void> {
    // a pid already reused by a live process keeps its entries (a count too many, never one too few)
    const gone = [...this.exited].filter((t) => !isLive(t));
    this.exited.clear();
    if (gone.length === 0) return;
    try {
      const removed = await this.tracer.forgetWriteFaults(gone);
      log.debug({ tgids: gone.length, removed }, 'write-fault entries of exited processes removed');
    } catch (e) {
      log.warn({ err: e, tgids: gone }, 'could not remove the write-fault entries of exited processes; the map may fill (faultMapFailures)');
    }
  }

  reconcile(): ReconcileReport {
    const r = this.graph.reconcile();
    if (readStat(this.rootPid) === undefined) this.rootGone();
    return r;
  }

  /** Notices a root that is gone without reconciling the whole graph. */
  reconcileRootOnly(): void {
    if (!isLive(this.rootPid)) this.rootGone();
  }

  /** Pulls the kernel's write-fault counts into the graph. */
  async refreshWriteFaults(): Promise<void> {
    this.graph.applyWriteFaults(await this.tracer.writeFaults());
  }

  async dirtySince(n: number): Promise<DirtySet> {
    await this.refreshWriteFaults();
    return this.graph.dirtySince(n);
  }

  /** Waits until `pred` holds (checked every 20 ms) or throws after timeoutMs. */
  async waitFor(what: string, pred: () => boolean, timeoutMs = 10_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!pred()) {
      if (Date.now() > end) throw new UnderstudyError('E_INTERNAL', `timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Waits until the graph has every event the kernel produced so far. */
  async sync(timeoutMs?: number): Promise<boolean> {
    return this.tracer.sync(timeoutMs);
  }

  stats(): TracerStats {
    return this.tracer.stats();
  }

  /** Stops tracing; with `kill`, kills the command it started and all its descendants. */
  async stop(opts: { kill?: boolean } = {}): Promise<TracerStats> {
    if (this.timer) clearInterval(this.timer);
    this.stopping = true;
    if (this.forgetTimer) clearTimeout(this.forgetTimer);
    await this.forgetting;
    if (opts.kill && this.held) {
      // the command started here, and everything it started
      for (const pid of new Set([...descendantsOf([this.held.pid]), ...this.graph.pids()])) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    return this.tracer.stop();
  }
}
