// A running tracer for one app: the native tracer process that owns the eBPF
// objects (src/native/tracer.ts) and the decoder of its records (records.ts).
// Events reach the listener in the order the kernel produced them.
import { TracerProcess, type TracerProgram, type TracerStatus, type WriteFaultCount } from '../native/tracer.js';
import { descendantsOf } from '../proc/procfs.js';
import { logger } from '../util/log.js';
import { removeLegacyPins, requireTracingSupport, type StaleRemoval } from './loader.js';
import { COUNTER_NAMES, RECORD_SIZES, RecordStream, TR_VERSION, namedCounters, type RefusalCounts, type StatsEvent, type TraceEvent } from './records.js';

export type { TracerProgram, WriteFaultCount };

const log = logger('trace');
const SUBMITTED = COUNTER_NAMES.indexOf('submitted');

export interface TracerOptions {
  /** Names this app in log lines. */
  appId: string;
  /** Called for every decoded event; the tracer's counters arrive as 'stats' events every statsMs. */
  onEvent: (ev: TraceEvent) => void;
  pollMs?: number;
  statsMs?: number;
  /** Age under which pins of an earlier version are left alone (see loader.ts). */
  staleGraceMs?: number;
  /** Tests only: the record sizes the decoder claims to expect, instead of RECORD_SIZES. */
  recordSizes?: Readonly<Record<number, number>>;
}

export interface TracerStats {
  delivered: number;
  decoded: number;
  refused: RefusalCounts;
  /** Records the kernel could not put in the ring buffer. */
  lost: number;
  faultMapFailures: number;
  filterFailures: number;
  submitted: number;
}

export class Tracer {
  private proc!: TracerProcess;
  private readonly decoder = new RecordStream();
  private warnedLost = 0;
  /** Records received from the kernel (decoded or refused). */
  private received = 0;
  private stopping: Promise<TracerStats> | undefined;
  private staleRemovedList: StaleRemoval[] = [];
  private endedUnasked: (status: string) => void = () => {};
  /**
   * Resolves with how the native tracer ended ("was killed by SIGKILL") when
   * it ends without being stopped: the app is no longer traced. Never
   * resolves after a stop().
   */
  readonly lost: Promise<string> = new Promise((res) => (this.endedUnasked = res));

  private constructor(private readonly opts: TracerOptions) {}

  /** Starts the native tracer: loaded, attached, record layouts agreed. The filter is empty. */
  static async start(opts: TracerOptions): Promise<Tracer> {
    requireTracingSupport();
    const t = new Tracer(opts);
    t.staleRemovedList = await removeLegacyPins({ graceMs: opts.staleGraceMs });
    t.proc = await TracerProcess.start({
      recordVersion: TR_VERSION,
      recordSizes: opts.recordSizes ?? RECORD_SIZES,
      pollMs: opts.pollMs,
      statsMs: opts.statsMs,
      onRecords: (batch) => t.onRecords(batch),
      onStats: (s) => t.onStats(s),
      onExit: (status) => {
        if (t.stopping) return;
        log.error({ appId: opts.appId, status }, 'the tracer ended: the app is no longer traced');
        t.endedUnasked(status);
      },
    });
    log.info({ appId: opts.appId, pid: t.proc.pid, programs: t.proc.hello.programs.length }, 'tracer attached');
    return t;
  }

  private emit(ev: TraceEvent): void {
    try {
      this.opts.onEvent(ev);
    } catch (e) {
      log.error({ err: e }, 'event listener failed');
    }
  }

  private onRecords(batch: Buffer): void {
    this.received += this.decoder.pushBatch(batch, (ev) => this.emit(ev));
  }

  private onStats(s: TracerStatus): void {
    const ev: StatsEvent = {
      type: 'stats',
      ts: Number(process.hrtime.bigint()),
      tgid: this.proc?.pid ?? 0,
      tid: this.proc?.pid ?? 0,
      delivered: s.delivered,
      counters: namedCounters(s.counters),
    };
    const lost = ev.counters.ringbufReserveFailures;
    if (lost > this.warnedLost) {
      log.warn({ lost, new: lost - this.warnedLost }, 'ring buffer losses: records dropped in the kernel');
      this.warnedLost = lost;
    }
    this.emit(ev);
  }

  /** Pins of an earlier version removed at start. */
  get staleRemoved(): StaleRemoval[] {
    return this.staleRemovedList;
  }

  /** The native tracer's pid. */
  get pid(): number {
    return this.proc.pid;
  }

  /** Resolves when the native tracer has exited (after stop(), once it has detached every program). */
  waitExit(): Promise<void> {
    return this.proc.waitExit();
  }

  /** The programs the tracer attached, as it reported them at start. */
  get attachedPrograms(): TracerProgram[] {
    return this.proc.hello.programs;
  }

  /** Adds processes (and, with descendants, their current children) to the in-kernel filter. */
  async addProcesses(pids: number[], opts: { descendants?: boolean } = {}): Promise<number[]> {
    await this.proc.addTgids(pids);
    if (!opts.descendants) {
      log.debug({ appId: this.opts.appId, tgids: pids }, 'processes added to the filter');
      return pids;
    }
    // Children forked from now on join in the kernel; those already there are found in /proc.
    const all = descendantsOf(pids);
    await this.proc.addTgids(all.filter((p) => !pids.includes(p)));
    log.debug({ appId: this.opts.appId, pids, tgids: all }, 'processes added to the filter');
    return all;
  }

  /** The tgids in the in-kernel filter (its listing, app_tgids). */
  async filterTgids(): Promise<number[]> {
    return (await this.proc.status({ filter: true })).filterTgids;
  }

  /** The kernel-side counters (losses included), summed over CPUs. */
  async counters(): Promise<Record<(typeof COUNTER_NAMES)[number], number>> {
    return namedCounters((await this.proc.status()).counters);
  }

  /** The programs with the kernel's run statistics (kernel.bpf_stats_enabled). */
  async programs(): Promise<TracerProgram[]> {
    return (await this.proc.status({ programs: true })).programs;
  }

  /** Write-fault counts per (tgid, VMA) aggregated in the kernel: of these tgids, or all. */
  async writeFaults(tgids?: number[]): Promise<WriteFaultCount[]> {
    return this.proc.readWriteFaults(tgids);
  }

  /** Removes the write-fault counts of exited processes from the kernel's map; returns how many entries went. */
  async forgetWriteFaults(tgids: number[]): Promise<number> {
    return this.proc.forget(tgids);
  }

  /**
   * Waits until every record the kernel had submitted when called has been
   * decoded and handed to the listener (a read barrier for tests and for the
   * checkpoint barrier). Resolves false on timeout.
   */
  async sync(timeoutMs = 5000): Promise<boolean> {
    const end = Date.now() + timeoutMs;
    // the tracer drains the ring buffer before it replies, so the records
    // counted here have all arrived with the reply — but one still being
    // written by a program when the tracer drained arrives with a later one
    const target = (await this.proc.status()).counters[SUBMITTED] ?? 0;
    while (this.received < target) {
      if (Date.now() > end) return false;
      await new Promise((r) => setTimeout(r, 5));
      await this.proc.status();
    }
    return true;
  }

  stats(): TracerStats {
    const s = this.proc.lastStats;
    const c = namedCounters(s?.counters ?? []);
    return {
      delivered: s?.delivered ?? 0,
      decoded: this.decoder.decoded,
      refused: { ...this.decoder.refused },
      lost: c.ringbufReserveFailures,
      faultMapFailures: c.faultMapFailures,
      filterFailures: c.filterFailures,
      submitted: c.submitted,
    };
  }

  /**
   * Stops: the tracer drains the last records and ends its stream, then
   * detaches on its own (a grace period a program; see waitExit).
   */
  stop(): Promise<TracerStats> {
    this.stopping ??= (async () => {
      try {
        await this.proc.stop();
      } catch (e) {
        log.warn({ err: e }, 'the tracer could not be stopped in order; the last records may be missing');
        this.proc.kill();
      }
      const s = this.stats();
      log.info(s, 'tracer stopped');
      return s;
    })();
    return this.stopping;
  }
}
