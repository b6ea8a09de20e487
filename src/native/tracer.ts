// Typed promise API over the tracer (build/native/understudy-tracer): one
// long-lived process that owns the eBPF objects of bpf/trace.bpf.c. Requests
// go as TracerRequest frames on its stdin, replies come back matched by id
// among the TracerOutput frames of its stdout (proto/understudy/v1/tracer.proto),
// beside batches of ring-buffer records, handed on unparsed (their layout is
// bpf/trace.h; src/trace/records.ts decodes them). The tracer's hello says
// which record sizes it was compiled with; a decoder written for other sizes
// is refused before any record flows. A tracer that exits or crashes fails
// every pending request; one that sends a frame that does not decode is killed.
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { understudy } from '../gen/proto.js';
import { UnderstudyError } from '../util/errors.js';
import { logger } from '../util/log.js';
import { nativeBinary } from '../util/paths.js';
import { binaryError } from './codes.js';
import { DEFAULT_MAX_FRAME, encodeFrame, FrameDecoder, requireVersion } from './frames.js';

const log = logger('tracer');
export const TRACER_VERSION = 1;

export interface TracerProgram {
  name: string;
  /** The kernel's program id (bpftool prog show). */
  id: number;
  type: string;
  section: string;
  /** With kernel.bpf_stats_enabled. */
  runCnt: number;
  runTimeNs: number;
}

export interface TracerHello {
  pid: number;
  recordVersion: number;
  /** Record type -> sizeof its struct, as the tracer was compiled. */
  recordSizes: Record<number, number>;
  programs: TracerProgram[];
  ringBufferBytes: number;
  possibleCpus: number;
}

export interface TracerStatus {
  /** Records read from the ring buffer since start. */
  delivered: number;
  /** enum tr_counter of bpf/trace.h, summed over CPUs. */
  counters: number[];
  perCpu: { cpu: number; counters: number[] }[];
  /** The filter's listing (app_tgids), when asked for. */
  filterTgids: number[];
  /** When asked for. */
  programs: TracerProgram[];
  batches: number;
}

export interface WriteFaultCount {
  tgid: number;
  /** VMA start, or a page address when the kernel could not resolve the VMA (resolved = false). */
  address: number;
  resolved: boolean;
  count: number;
}

export interface TracerProcessOptions {
  /** The record layout the caller decodes: TR_VERSION and the size of each record type. */
  recordVersion: number;
  recordSizes: Readonly<Record<number, number>>;
  /** A batch of records, each [u32 LE length][record as in bpf/trace.h]. */
  onRecords: (batch: Buffer) => void;
  /** Counters the tracer sends every statsMs, and last before its end of stream. */
  onStats?: (s: TracerStatus) => void;
  /** Once it has exited, however: "exited with status N", "was killed by SIGNAL". */
  onExit?: (status: string) => void;
  pollMs?: number;
  statsMs?: number;
  /** Per request; a tracer that does not answer in time is killed. */
  timeoutMs?: number;
  /** Another object with the stream maps instead of bpf/trace.bpf.c (the bench's floors). */
  object?: string;
  binary?: string;
}

/** What differs between the tracer's record layout (its hello) and the decoder's; empty when they agree. */
export function recordLayoutDifferences(
  hello: Pick<TracerHello, 'recordVersion' | 'recordSizes'>,
  version: number,
  sizes: Readonly<Record<number, number>>,
): string[] {
  const out: string[] = [];
  if (hello.recordVersion !== version) out.push(`record version ${hello.recordVersion} (the decoder knows ${version})`);
  const types = new Set([...Object.keys(hello.recordSizes), ...Object.keys(sizes)].map(Number));
  for (const t of [...types].sort((a, b) => a - b)) {
    const theirs = hello.recordSizes[t];
    const ours = sizes[t];
    if (theirs === ours) continue;
    out.push(
      theirs === undefined
        ? `type ${t}: not sent by the tracer (the decoder expects ${ours} bytes)`
        : ours === undefined
          ? `type ${t}: ${theirs} bytes, unknown to the decoder`
          : `type ${t}: ${theirs} bytes in the tracer, ${ours} in the decoder`,
    );
  }
  return out;
}

interface Pending {
  resolve(r: understudy.v1.TracerReply): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

function programOf(p: understudy.v1.ITracerProgram): TracerProgram {
  return {
    name: p.name ?? '',
    id: p.id ?? 0,
    type: p.type ?? '',
    section: p.section ?? '',
    runCnt: Number(p.runCnt ?? 0),
    runTimeNs: Number(p.runTimeNs ?? 0),
  };
}

function statusOf(s: understudy.v1.ITracerStatus): TracerStatus {
  return {
    delivered: Number(s.delivered ?? 0),
    counters: (s.counters ?? []).map(Number),
    perCpu: (s.perCpu ?? []).map((c) => ({ cpu: c.cpu ?? 0, counters: (c.counters ?? []).map(Number) })),
    filterTgids: s.filterTgids ?? [],
    programs: (s.programs ?? []).map(programOf),
    batches: Number(s.batches ?? 0),
  };
}

export class TracerProcess {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly decoder = new FrameDecoder(DEFAULT_MAX_FRAME, 'tracer stdout');
  private exitInfo: string | undefined;
  private stderrTail = '';
  private helloSeen: ((h: TracerHello) => void) | undefined;
  private startFailed: ((e: Error) => void) | undefined;
  /** Why start() fails when the tracer is gone, if not its death itself (a record layout it was refused for). */
  private startError: UnderstudyError | undefined;
  private lastStatus: TracerStatus | undefined;
  private stopping: Promise<TracerStatus> | undefined;
  /** Set at a frame that does not decode: nothing after it is read. */
  private poisoned = false;
  private readonly exitPromise: Promise<void>;
  /** Resolves when its stdout has ended (before its detach). */
  readonly streamEnded: Promise<void>;
  hello!: TracerHello;

  private constructor(
    private readonly child: ChildProcessByStdio<Writable, Readable, Readable>,
    private readonly opts: TracerProcessOptions,
  ) {
    child.stdout.on('data', (chunk: Buffer) => this.onData(chunk));
    child.stderr.on('data', (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      this.stderrTail = (this.stderrTail + text).slice(-4000);
      log.debug({ pid: child.pid, stderr: text.trim() }, 'tracer stderr');
    });
    child.stdin.on('error', () => undefined);
    this.streamEnded = new Promise((res) => {
      child.stdout.once('end', () => res());
      child.stdout.once('close', () => res());
    });
    this.exitPromise = new Promise((resolve) => {
      const gone = (info: string): void => {
        if (this.exitInfo !== undefined) return;
        this.exitInfo = info;
        const err = this.died();
        for (const [, p] of this.pending) {
          clearTimeout(p.timer);
          p.reject(err);
        }
        this.pending.clear();
        this.startFailed?.(this.startError ?? err);
        try {
          this.opts.onExit?.(info);
        } catch (e) {
          log.error({ err: e }, 'exit listener failed');
        }
        resolve();
      };
      // 'close', not 'exit': once its stdout is read to the end, so that a
      // reply it sent before it died is not taken for a missing one
      child.on('close', (code, signal) => gone(signal ? `was killed by ${signal}` : `exited with status ${code}`));
      // spawn itself failed (ENOENT, EACCES, EAGAIN): no 'exit' event follows
      child.on('error', (e) => {
        if (child.pid === undefined) gone(`could not be started (${e.message})`);
        else log.warn({ err: e, pid: child.pid }, 'tracer process error');
      });
    });
  }

  private died(): UnderstudyError {
    const tail = this.stderrTail.trim().split('\n').slice(-3).join('; ');
    return new UnderstudyError(
      'E_TRACER',
      `the tracer (pid ${this.child.pid ?? 'none'}) ${this.exitInfo ?? 'is gone'}${tail ? `: ${tail}` : ''}; the app is no longer traced. Run \`understudy check\`.`,
    );
  }

  /** Spawns the tracer; resolves once every program is attached and the record layouts agree. */
  static async start(opts: TracerProcessOptions): Promise<TracerProcess> {
    const bin = opts.binary ?? nativeBinary('tracer');
    const args = ['--poll-ms', String(opts.pollMs ?? 10), '--stats-ms', String(opts.statsMs ?? 1000)];
    if (opts.object !== undefined) args.push('--object', opts.object);
    // its own session: a Ctrl-C at the agent's terminal is for the agent,
    // which then stops the tracer after the last records
    const child = spawn(bin, args, { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    const t = new TracerProcess(child, opts);
    const hello = await new Promise<TracerHello>((resolve, reject) => {
      t.helloSeen = resolve;
      t.startFailed = reject;
    }).finally(() => {
      t.helloSeen = undefined;
      t.startFailed = undefined;
    });
    t.hello = hello;
    log.debug({ pid: hello.pid, programs: hello.programs.length }, 'tracer attached');
    return t;
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get alive(): boolean {
    return this.exitInfo === undefined;
  }

  /** How it ended ("exited with status 0", "was killed by SIGKILL"), once it has. */
  get exitStatus(): string | undefined {
    return this.exitInfo;
  }

  /** The last counters the tracer sent (stats frames and status replies). */
  get lastStats(): TracerStatus | undefined {
    return this.lastStatus;
  }

  private fatal(what: string, e: unknown): void {
    this.poisoned = true;
    log.error({ err: e, pid: this.child.pid }, `${what}; killing the tracer`);
    this.stderrTail += `\n${what}: ${e instanceof Error ? e.message : String(e)}`;
    this.child.kill('SIGKILL');
  }

  private onData(chunk: Buffer): void {
    if (this.poisoned) return;
    let frames: Uint8Array[];
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      this.fatal('a bad frame from the tracer', e);
      return;
    }
    for (const f of frames) {
      let out: understudy.v1.TracerOutput;
      try {
        out = understudy.v1.TracerOutput.decode(f);
        requireVersion('tracer output', out.version, TRACER_VERSION);
      } catch (e) {
        // a frame that does not decode: nothing after it is to be trusted
        this.fatal('a frame from the tracer that does not decode', e);
        return;
      }
      switch (out.body) {
        case 'records': {
          const r = out.records ?? new Uint8Array(0);
          try {
            this.opts.onRecords(Buffer.from(r.buffer, r.byteOffset, r.byteLength));
          } catch (e) {
            log.error({ err: e }, 'record listener failed');
          }
          break;
        }
        case 'stats':
          this.lastStatus = statusOf(out.stats!);
          try {
            this.opts.onStats?.(this.lastStatus);
          } catch (e) {
            log.error({ err: e }, 'stats listener failed');
          }
          break;
        case 'reply':
          this.onReply(out.reply!);
          break;
        case 'hello': {
          const h = out.hello!;
          const sizes: Record<number, number> = {};
          for (const s of h.recordSizes ?? []) sizes[s.type ?? 0] = s.size ?? 0;
          const hello: TracerHello = {
            pid: h.pid ?? 0,
            recordVersion: h.recordVersion ?? 0,
            recordSizes: sizes,
            programs: (h.programs ?? []).map(programOf),
            ringBufferBytes: h.ringBufferBytes ?? 0,
            possibleCpus: h.possibleCpus ?? 0,
          };
          // checked here, before any later frame is read: no record is
          // decoded with a layout the decoder was not written for
          const diff = recordLayoutDifferences(hello, this.opts.recordVersion, this.opts.recordSizes);
          if (diff.length > 0) {
            this.poisoned = true;
            this.startError = new UnderstudyError(
              'E_VERSION',
              `the tracer's records are not laid out as this agent decodes them (${diff.join('; ')}); ` +
                `bpf/trace.h and src/trace/records.ts must change together: rebuild both with \`npm run build\`. The tracer (pid ${hello.pid}) was stopped.`,
            );
            this.child.kill('SIGKILL'); // start() fails with startError once it is gone
            return;
          }
          this.helloSeen?.(hello);
          break;
        }
        case 'failed': {
          const e = out.failed!;
          const err = binaryError('understudy-tracer', e.code ?? 0, `the tracer could not start: ${e.message ?? '?'}. Run \`understudy check\`.`);
          this.startFailed?.(err);
          break;
        }
        default:
          log.warn({ body: out.body }, 'tracer frame of an unknown kind ignored');
      }
    }
  }

  private onReply(rep: understudy.v1.ITracerReply): void {
    const id = Number(rep.id ?? 0);
    const p = this.pending.get(id);
    if (!p) {
      log.warn({ id, error: rep.error?.message }, 'tracer reply for no pending request');
      return;
    }
    this.pending.delete(id);
    clearTimeout(p.timer);
    p.resolve(rep as understudy.v1.TracerReply);
  }

  private async request(cmd: Omit<understudy.v1.ITracerRequest, 'version' | 'id'>, what: string): Promise<understudy.v1.TracerReply> {
    if (!this.alive) throw this.died();
    const id = this.nextId++;
    const msg = understudy.v1.TracerRequest.encode({ version: TRACER_VERSION, id, ...cmd }).finish();
    const timeoutMs = this.opts.timeoutMs ?? 30_000;
    const rep = await new Promise<understudy.v1.TracerReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        this.child.kill('SIGKILL');
        reject(new UnderstudyError('E_TIMEOUT', `the tracer did not answer "${what}" within ${timeoutMs} ms; it was killed (its programs went with it)`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.child.stdin.write(encodeFrame(msg));
    });
    if (!rep.ok) {
      const e = rep.error;
      throw binaryError('understudy-tracer', e?.code ?? 0, e?.message ? `tracer: ${what}: ${e.message}` : '');
    }
    return rep;
  }

  /** Puts processes in the in-kernel filter; their children join at fork. One bad tgid: nothing is added. */
  async addTgids(tgids: number[]): Promise<void> {
    if (tgids.length === 0) return;
    await this.request({ addTgids: { tgids } }, `add ${tgids.join(', ')} to the filter`);
  }

  /** Removes the write-fault counts of exited processes; returns how many entries went. */
  async forget(tgids: number[]): Promise<number> {
    if (tgids.length === 0) return 0;
    const rep = await this.request({ forgetTgids: { tgids } }, `forget the write faults of ${tgids.length} processes`);
    return rep.forget?.removed ?? 0;
  }

  /** Write-fault counts per (tgid, VMA) from the kernel's map: of these tgids, or all. */
  async readWriteFaults(tgids: number[] = []): Promise<WriteFaultCount[]> {
    const rep = await this.request({ readWriteFaults: { tgids } }, 'read the write-fault map');
    return (rep.writeFaults?.faults ?? []).map((f) => ({
      tgid: f.tgid ?? 0,
      address: Number(f.address ?? 0),
      resolved: f.resolved ?? false,
      count: Number(f.count ?? 0),
    }));
  }

  /**
   * Counters now (and the filter's listing, the programs, on request). The
   * tracer drains the ring buffer first: every record submitted before this
   * call has reached onRecords when it resolves.
   */
  async status(opts: { filter?: boolean; programs?: boolean } = {}): Promise<TracerStatus> {
    const rep = await this.request({ status: { filter: opts.filter ?? false, programs: opts.programs ?? false } }, 'status');
    this.lastStatus = statusOf(rep.status ?? {});
    return this.lastStatus;
  }

  /**
   * Stops: the tracer drains, replies with its last counters and ends its
   * stream; it then detaches on its own (a grace period a program) and exits
   * (see waitExit), without holding the agent open. Resolves at the end of the stream.
   */
  stop(): Promise<TracerStatus> {
    this.stopping ??= (async () => {
      const rep = await this.request({ stop: {} }, 'stop');
      this.lastStatus = statusOf(rep.status ?? {});
      this.child.stdin.end();
      await Promise.race([this.streamEnded, this.exitPromise]);
      // let it finish detaching without holding the agent open
      this.child.stdout.destroy();
      this.child.stderr.destroy();
      this.child.unref();
      return this.lastStatus;
    })();
    return this.stopping;
  }

  /** Resolves when the process has exited (after its detach); the agent stays up until then. */
  waitExit(): Promise<void> {
    this.child.ref();
    return this.exitPromise;
  }

  /** For tests and emergencies: signal the tracer itself (SIGKILL: the kernel drops its programs). */
  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.child.kill(signal);
  }
}
