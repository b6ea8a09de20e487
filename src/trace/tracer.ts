// A running tracer for one app: the pinned programs (loader.ts), the native
// streamer that attaches them and reads the ring buffer (native/tracer), and
// the decoder. Events reach the listener in the order the kernel produced them.
import type { Writable } from 'node:stream';
import { execa, type ResultPromise } from 'execa';
import { listPids, readStat } from '../graph/procfs.js';
import { UnderstudyError } from '../util/errors.js';
import { logger } from '../util/log.js';
import { nativeBinary } from '../util/paths.js';
import { PinnedTracer } from './loader.js';
import { RecordStream, type RefusalCounts, type StatsEvent, type TraceEvent } from './records.js';

const log = logger('trace');

export interface TracerOptions {
  appId: string;
  /** Called for every decoded event, stats records included. */
  onEvent: (ev: TraceEvent) => void;
  pollMs?: number;
  statsMs?: number;
  staleGraceMs?: number;
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
  private helper: ResultPromise<{ stdin: 'pipe'; stdout: 'pipe'; stderr: 'pipe'; encoding: 'buffer'; reject: false; buffer: false }> | undefined;
  private readonly stream = new RecordStream();
  private lastStats: StatsEvent | undefined;
  private stderr = '';
  private stopped = false;
  private warnedLost = 0;
  /** Records from the kernel decoded so far (stats records excluded). */
  private kernelRecords = 0;
  private exited: Promise<void> | undefined;
  private streamEnded: Promise<void> | undefined;

  private constructor(
    readonly pins: PinnedTracer,
    private readonly opts: TracerOptions,
  ) {}

  /** Loads, pins, attaches and starts streaming; resolves once every program is attached. */
  static async start(opts: TracerOptions): Promise<Tracer> {
    const pins = await PinnedTracer.load(opts.appId, { staleGraceMs: opts.staleGraceMs });
    const t = new Tracer(pins, opts);
    try {
      await t.spawnHelper();
    } catch (e) {
      pins.unload();
      throw e;
    }
    return t;
  }

  private async spawnHelper(): Promise<void> {
    const args = ['--pins', this.pins.dir, '--poll-ms', String(this.opts.pollMs ?? 10), '--stats-ms', String(this.opts.statsMs ?? 1000)];
    const child = execa(nativeBinary('tracer'), args, {
      stdin: 'pipe',
      stdout: 'pipe',
      stderr: 'pipe',
      encoding: 'buffer',
      reject: false,
      buffer: false,
    });
    this.helper = child;
    log.debug({ pid: child.pid, args }, 'streamer started');
    let ready: () => void = () => {};
    const readyP = new Promise<void>((res) => (ready = res));
    child.stdout.on('data', (chunk: Buffer) => {
      const wasCorrupt = this.stream.corrupt;
      const events = this.stream.push(chunk);
      if (this.stream.corrupt && !wasCorrupt) {
        log.error({ refused: this.stream.refused }, 'the streamer sent an impossible frame length: no record after it is decoded');
      }
      for (const ev of events) {
        if (ev.type === 'stats') {
          const first = this.lastStats === undefined;
          this.lastStats = ev;
          if (first) ready();
          if (ev.counters.ringbufReserveFailures > this.warnedLost) {
            log.warn({ lost: ev.counters.ringbufReserveFailures, new: ev.counters.ringbufReserveFailures - this.warnedLost }, 'ring buffer losses: records dropped in the kernel');
            this.warnedLost = ev.counters.ringbufReserveFailures;
          }
        } else {
          this.kernelRecords++;
        }
        try {
          this.opts.onEvent(ev);
        } catch (e) {
          log.error({ err: e }, 'event listener failed');
        }
      }
    });
    child.stderr.on('data', (c: Buffer) => {
      this.stderr += c.toString('utf8');
      if (this.stderr.length > 8192) this.stderr = this.stderr.slice(-8192);
    });
    this.exited = child.then(() => undefined);
    // The helper closes stdout once the last records are out, then detaches (slow: a grace period per program).
    this.streamEnded = new Promise<void>((res) => {
      child.stdout.once('end', () => res());
      child.stdout.once('close', () => res());
    });
    const failed = this.exited.then(() => {
      if (this.lastStats === undefined) {
        throw new UnderstudyError(
          'E_NATIVE',
          `the tracer helper could not attach the eBPF programs: ${this.stderr.trim() || 'it exited without a word'}. Run \`understudy check\`.`,
        );
      }
    });
    await Promise.race([readyP, failed]);
  }

  /** Adds processes (and, with descendants, their current children) to the in-kernel filter. */
  async addProcesses(pids: number[], opts: { descendants?: boolean } = {}): Promise<number[]> {
    await this.pins.addTgids(pids);
    log.debug({ tgids: pids }, 'processes added to the in-kernel filter');
    if (!opts.descendants) return pids;
    // Children forked from now on join in the kernel; those already there are found in /proc.
    const all = descendantsOf(pids);
    const extra = all.filter((p) => !pids.includes(p));
    await this.pins.addTgids(extra);
    return all;
  }

  /**
   * Waits until every record the kernel had submitted when called has been
   * decoded and handed to the listener (a read barrier for tests and for the
   * checkpoint barrier). Resolves false on timeout.
   */
  async sync(timeoutMs = 5000): Promise<boolean> {
    const c = await this.pins.counters();
    const target = c.submitted; // reserve failures are never submitted, so never counted here
    const end = Date.now() + timeoutMs;
    while (this.kernelRecords < target) {
      if (Date.now() > end) return false;
      await new Promise((r) => setTimeout(r, 5));
    }
    return true;
  }

  /** The streamer's pid (it detaches after stop(), then exits). */
  get helperPid(): number | undefined {
    return this.helper?.pid;
  }

  stats(): TracerStats {
    const c = this.lastStats?.counters;
    return {
      delivered: this.lastStats?.delivered ?? 0,
      decoded: this.stream.decoded,
      refused: { ...this.stream.refused },
      lost: c?.ringbufReserveFailures ?? 0,
      faultMapFailures: c?.faultMapFailures ?? 0,
      filterFailures: c?.filterFailures ?? 0,
      submitted: c?.submitted ?? 0,
    };
  }

  /**
   * Stops: the helper drains the last records and ends its stream, then detaches
   * on its own (seconds: a tracepoint grace period per program); unpins.
   */
  async stop(): Promise<TracerStats> {
    if (this.stopped) return this.stats();
    this.stopped = true;
    const h = this.helper;
    if (h) {
      (h.stdin as Writable).end();
      const timer = setTimeout(() => h.kill('SIGTERM'), 3000);
      await Promise.race([this.streamEnded, this.exited]);
      clearTimeout(timer);
      // Let the helper finish detaching without holding this process open.
      h.stdout.destroy();
      h.stderr.destroy();
      h.unref();
    }
    this.pins.unload();
    const s = this.stats();
    log.info(s, 'tracer stopped');
    return s;
  }
}

/** pids and all their descendants, from /proc. */
export function descendantsOf(roots: number[]): number[] {
  const children = new Map<number, number[]>();
  for (const pid of listPids()) {
    const st = readStat(pid);
    if (!st) continue; // gone meanwhile
    const list = children.get(st.ppid) ?? [];
    list.push(pid);
    children.set(st.ppid, list);
  }
  const out: number[] = [];
  const todo = [...roots];
  const seen = new Set<number>();
  while (todo.length > 0) {
    const p = todo.pop()!;
    if (seen.has(p)) continue;
    seen.add(p);
    out.push(p);
    todo.push(...(children.get(p) ?? []));
  }
  return out;
}
