// The app's dependency graph: processes, threads, memory regions, files,
// pipes, sockets, IPC and anonymous-inode objects, and the edges between them.
// Seeded from /proc (fromproc.ts), kept current by tracer events (events.ts,
// syscalls.ts, tcp.ts, faults.ts), repaired by a periodic reconciliation with
// /proc that counts what it repaired (reconcile.ts). Every change is logged
// with the time it happened; epochs are marked at the real checkpoint
// barriers (changes.ts), which is what dirtySince(N) reads. This class is the
// graph's one face; the modules around it hold one concern each.
import type { WriteFaultCount } from '../trace/tracer.js';
import type { TraceEvent } from '../trace/records.js';
import { UnderstudyError } from '../util/errors.js';
import { logger } from '../util/log.js';
import { monotonicNs } from './changes.js';
import { closure } from './closure.js';
import { collect } from './collect.js';
import { applyEvent } from './events.js';
import { applyWriteFaults } from './faults.js';
import { seedFromProc } from './fromproc.js';
import type { DirtySet, GraphEdge, GraphNode } from './model.js';
import { reconcile, type ReconcileReport } from './reconcile.js';
import { normalizeRegions, type Region } from './regions.js';
import { GraphState, type ProcessState, type Resource } from './store.js';

export { normalizeRegions, type ProcessState, type ReconcileReport, type Region, type Resource };

const log = logger('graph');

/** Fewer resources than this are never collected (a collection walks every process's fds and regions). */
const COLLECT_MIN = 1024;

export class AppGraph {
  private readonly g: GraphState;
  /** collect() runs when the resources reach this many (twice what the last collection kept). */
  private collectAt = COLLECT_MIN;
  readonly repairs: ReconcileReport = { processes: 0, threads: 0, fds: 0, regions: 0, total: 0 };

  /**
   * changeLog false: a graph nobody asks for a dirty set (`understudy trace`, a
   * one-off snapshot) keeps no change log, so that its memory does not grow with
   * every event of a long-running app; dirtySince() then refuses.
   */
  constructor(opts: { changeLog?: boolean } = {}) {
    this.g = new GraphState(opts.changeLog !== false);
  }

  get processes(): Map<number, ProcessState> {
    return this.g.processes;
  }

  get resources(): Map<string, Resource> {
    return this.g.resources;
  }

  /** Seeded processes whose parent is not in the app (the tops of its trees), in seeding order. */
  get rootPids(): number[] {
    return [...this.g.roots];
  }

  /** Entries in the change log (what forget() has not dropped yet). */
  get changeCount(): number {
    return this.g.changes?.size ?? 0;
  }

  /** The last epoch marked (0 before any: the graph's creation stands for barrier 0 until a real one is marked). */
  get epoch(): number {
    return this.g.changes?.epoch ?? 0;
  }

  /**
   * Marks a checkpoint barrier: epoch `epoch` (default: the last + 1) taken at
   * `barrierAtNs` (CLOCK_MONOTONIC, default now). Changes stamped before it
   * belong to that epoch, later ones to the next, whenever their events are
   * applied. Returns the epoch's number.
   */
  markEpoch(epoch?: number, barrierAtNs?: number): number {
    if (!this.g.changes) return epoch ?? 0;
    const n = this.g.changes.mark(epoch, barrierAtNs);
    log.debug({ epoch: n, barrierAtNs, changes: this.g.changes.size }, 'epoch marked');
    return n;
  }

  /** Drops the change log before epoch n's barrier (n committed), and the resources only it still named. */
  forget(n: number): void {
    this.g.changes?.forget(n);
    this.collect();
    this.collectAt = Math.max(COLLECT_MIN, 2 * this.resources.size);
  }

  /** Seeds the given processes (and nothing else) from /proc. */
  seedFromProc(pids: number[], opts: { asRoots?: boolean } = {}): void {
    seedFromProc(this.g, pids, opts);
    log.debug({ pids, processes: this.processes.size, resources: this.resources.size }, 'seeded from /proc');
  }

  /** Applies one event; now and then drops the resources nothing refers to any more (see collect). */
  apply(ev: TraceEvent): void {
    this.g.at = ev.ts;
    applyEvent(this.g, ev);
    if (this.resources.size >= this.collectAt) {
      this.collect();
      this.collectAt = Math.max(COLLECT_MIN, 2 * this.resources.size);
    }
  }

  /**
   * Drops the resources no fd, no mapping and no change still in the log refers
   * to; IPC objects stay. Returns how many were dropped.
   */
  collect(): number {
    return collect(this.g);
  }

  /** Takes the kernel's write-fault counts, read at `readAtNs` (default now); the increase since the last call is logged per region. */
  applyWriteFaults(faults: WriteFaultCount[], readAtNs = monotonicNs()): void {
    this.g.at = readAtNs;
    applyWriteFaults(this.g, faults);
  }

  /** What changed after barrier `since` and before barrier `upTo` (default: up to now). */
  dirtySince(since: number, upTo?: number): DirtySet {
    if (!this.g.changes) throw new UnderstudyError('E_INTERNAL', 'this graph keeps no change log (changeLog: false): it cannot give a dirty set');
    return this.g.changes.dirtySet(since, upTo, (id) => {
      const r = this.resources.get(id);
      return String(r?.attrs.path ?? r?.label ?? '?');
    });
  }

  /** Every node and edge of the app (its closure), without external ends. */
  closure(): { nodes: GraphNode[]; edges: GraphEdge[] } {
    return closure(this.g);
  }

  /** Pids of the app's processes. */
  pids(): number[] {
    return [...this.processes.keys()].sort((a, b) => a - b);
  }

  /** Compares with /proc and repairs drift; returns what was repaired this time. */
  reconcile(): ReconcileReport {
    this.g.at = monotonicNs(); // drift is found now; when it happened is not known
    const rep = reconcile(this.g);
    for (const k of ['processes', 'threads', 'fds', 'regions', 'total'] as const) this.repairs[k] += rep[k];
    return rep;
  }
}
