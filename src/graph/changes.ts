// The graph's change log and its epoch marks. Every change carries the time it
// happened (the trace event's CLOCK_MONOTONIC stamp, or the time /proc or the
// kernel's counters were read); an epoch mark is the time of a real checkpoint
// barrier. Which epoch a change belongs to is decided by comparing the two, so
// that events decoded after the barrier's reply (the app runs again while the
// engine writes) still land in the epoch they belong to.
import { UnderstudyError } from '../util/errors.js';
import type { DirtyFile, DirtyRegion, DirtySet, RegionChange } from './model.js';
import { mergeRanges } from './regions.js';

export type Change =
  | { k: 'process'; pid: number; change: 'created' | 'exec' | 'exited' }
  | { k: 'thread'; pid: number; tid: number; change: 'created' | 'exited' }
  | { k: 'region'; pid: number; start: number; end: number; change: RegionChange; writeFaults?: number }
  | { k: 'fd'; pid: number; fd: number; change: 'opened' | 'closed'; resource?: string }
  | { k: 'write'; resource: string; start: number; end: number }
  | { k: 'truncate'; resource: string; size: number }
  | { k: 'path'; pid: number; op: string; path: string; path2?: string }
  | { k: 'socket'; resource: string; change: string }
  | { k: 'ipc'; resource: string; pid: number; change: string };

/** A change as logged: `at` when it happened; a merged run of writes spans [at, until]. */
export type LoggedChange = Change & { at: number; until?: number };

/** CLOCK_MONOTONIC in ns, the clock of the trace events and of the engine's barrier stamps. */
export function monotonicNs(): number {
  return Number(process.hrtime.bigint());
}

export class ChangeLog {
  private changes: LoggedChange[] = [];
  /** Barrier time of each marked epoch, ascending in both. Epoch 0 stands at the log's creation until a real barrier 0 is marked. */
  private marks: { epoch: number; at: number; implicit?: boolean }[];
  /** Changes before this epoch's barrier were dropped (forget). */
  private forgottenBefore = 0;

  constructor(now = monotonicNs()) {
    this.marks = [{ epoch: 0, at: now, implicit: true }];
  }

  get size(): number {
    return this.changes.length;
  }

  /** The last epoch marked (0 before any). */
  get epoch(): number {
    return this.marks[this.marks.length - 1]!.epoch;
  }

  /**
   * Marks epoch `epoch` (default: the last one + 1) at barrier time `at`
   * (default: now). Changes that happened before `at` belong to it (or an
   * earlier one), those after to the next. Returns the epoch number.
   */
  mark(epoch?: number, at = monotonicNs()): number {
    const last = this.marks[this.marks.length - 1]!;
    const n = epoch ?? last.epoch + 1;
    if (last.implicit && n === 0) {
      // the real barrier 0 replaces the log's creation: what happened before it is in the full epoch
      this.marks = [{ epoch: 0, at }];
      return 0;
    }
    if (n <= last.epoch || at < last.at) {
      throw new UnderstudyError('E_INTERNAL', `epoch ${n} at ${at} ns cannot follow epoch ${last.epoch} at ${last.at} ns: marks go forward`);
    }
    this.marks.push({ epoch: n, at });
    return n;
  }

  /** The barrier time of a marked epoch, or undefined. */
  barrierOf(epoch: number): number | undefined {
    return this.marks.find((m) => m.epoch === epoch)?.at;
  }

  log(c: Change, at: number): void {
    this.changes.push({ ...c, at } as LoggedChange);
  }

  /** A write touching or overlapping the previous one to the same file extends it (its span of time too). */
  logWrite(resource: string, start: number, end: number, at: number): void {
    const last = this.changes[this.changes.length - 1];
    if (last && last.k === 'write' && last.resource === resource && start <= last.end && end >= last.start) {
      last.start = Math.min(last.start, start);
      last.end = Math.max(last.end, end);
      last.until = Math.max(last.until ?? last.at, at);
      return;
    }
    this.log({ k: 'write', resource, start, end }, at);
  }

  /** Resources the log still names (collection keeps them). */
  *resources(): Iterable<string> {
    for (const c of this.changes) if ('resource' in c && c.resource) yield c.resource;
  }

  /** Drops what happened before epoch n's barrier (n committed: nobody asks for an older dirty set). */
  forget(n: number): void {
    const at = this.barrierOf(n);
    if (at === undefined) throw new UnderstudyError('E_INTERNAL', `epoch ${n} was never marked: nothing to forget up to it`);
    this.changes = this.changes.filter((c) => (c.until ?? c.at) >= at);
    this.marks = this.marks.filter((m) => m.epoch >= n);
    this.forgottenBefore = Math.max(this.forgottenBefore, n);
  }

  /**
   * What changed after barrier `since` and before barrier `upTo` (default: up
   * to now). A merged run of writes is named in every epoch its time overlaps.
   */
  dirtySet(since: number, upTo: number | undefined, nameOf: (resource: string) => string): DirtySet {
    if (since < this.forgottenBefore) {
      throw new UnderstudyError('E_INTERNAL', `the changes before epoch ${this.forgottenBefore} were forgotten (committed): no dirty set since epoch ${since}`);
    }
    const from = this.barrierOf(since);
    if (from === undefined)
      throw new UnderstudyError('E_INTERNAL', `epoch ${since} was never marked in this graph (marked: ${this.marks.map((m) => m.epoch).join(', ')})`);
    let to = Infinity;
    if (upTo !== undefined) {
      const b = this.barrierOf(upTo);
      if (b === undefined || upTo < since) throw new UnderstudyError('E_INTERNAL', `epoch ${upTo} was never marked in this graph, or is before epoch ${since}`);
      to = b;
    }
    const ds: DirtySet = { since, epoch: upTo ?? this.epoch, processes: [], threads: [], regions: [], fds: [], files: [], paths: [], sockets: [], ipc: [] };
    const files = new Map<string, DirtyFile>();
    const fileOf = (resource: string): DirtyFile => {
      let f = files.get(resource);
      if (!f) files.set(resource, (f = { resource, path: nameOf(resource), ranges: [] }));
      return f;
    };
    const faults = new Map<string, DirtyRegion>();
    for (const c of this.changes) {
      if ((c.until ?? c.at) < from || c.at >= to) continue;
      switch (c.k) {
        case 'process':
          ds.processes.push({ pid: c.pid, change: c.change });
          break;
        case 'thread':
          ds.threads.push({ pid: c.pid, tid: c.tid, change: c.change });
          break;
        case 'region': {
          if (c.change === 'written') {
            const key = `${c.pid}:${c.start}`;
            const old = faults.get(key);
            if (old) old.writeFaults = (old.writeFaults ?? 0) + (c.writeFaults ?? 0);
            else {
              const r: DirtyRegion = { pid: c.pid, start: c.start, end: c.end, change: 'written', writeFaults: c.writeFaults };
              faults.set(key, r);
              ds.regions.push(r);
            }
          } else ds.regions.push({ pid: c.pid, start: c.start, end: c.end, change: c.change });
          break;
        }
        case 'fd':
          ds.fds.push({ pid: c.pid, fd: c.fd, change: c.change, resource: c.resource });
          break;
        case 'write':
          fileOf(c.resource).ranges.push([c.start, c.end]);
          break;
        case 'truncate': {
          const f = fileOf(c.resource);
          f.truncatedTo = c.size;
          f.ranges = f.ranges.filter((r) => r[0] < c.size).map((r) => [r[0], Math.min(r[1], c.size)] as [number, number]);
          break;
        }
        case 'path':
          ds.paths.push({ pid: c.pid, op: c.op, path: c.path, path2: c.path2 });
          break;
        case 'socket':
          ds.sockets.push({ resource: c.resource, change: c.change });
          break;
        case 'ipc':
          ds.ipc.push({ resource: c.resource, pid: c.pid, change: c.change });
          break;
      }
    }
    for (const f of files.values()) {
      f.ranges = mergeRanges(f.ranges);
      ds.files.push(f);
    }
    return ds;
  }
}
