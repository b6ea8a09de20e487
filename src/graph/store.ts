// What the graph holds: the app's processes and the resources they use, the
// change log, and the bookkeeping the event handlers share. Every change goes
// through log() (with the time it happened), so that the dirty set sees it.
import type { TcpStateEvent } from '../trace/records.js';
import { ChangeLog, monotonicNs, type Change } from './changes.js';
import type { NodeKind, RegionChange } from './model.js';
import type { Region } from './regions.js';

export interface ProcessState {
  pid: number;
  ppid: number;
  comm: string;
  exe?: string;
  threads: Set<number>;
  fds: Map<number, string>;
  regions: Region[];
  startBrk: number;
  brk: number;
}

export interface Resource {
  id: string;
  kind: Exclude<NodeKind, 'process' | 'thread' | 'region' | 'endpoint'>;
  label: string;
  attrs: Record<string, string | number | boolean>;
}

export class GraphState {
  readonly processes = new Map<number, ProcessState>();
  readonly resources = new Map<string, Resource>();
  /** Seeded processes whose parent is not in the app (the tops of its trees), in seeding order. */
  readonly roots: number[] = [];
  /** The change log and its epoch marks; undefined with changeLog: false. */
  readonly changes: ChangeLog | undefined;
  /** When the change being applied happened (CLOCK_MONOTONIC ns): the event's stamp, or when /proc was read. */
  at = monotonicNs();
  /** Which socket node each struct sock is. */
  readonly skToSocket = new Map<string, string>();
  /** TCP states of socks not yet tied to a socket node (the last one per sock). */
  readonly skEarly = new Map<string, TcpStateEvent>();
  /** Per process: the kernel's write-fault count per region address, as last taken. */
  readonly faultBaseline = new Map<number, Map<number, number>>();
  /** Processes that got or attached each SysV IPC object (kept apart from the log, which is forgotten). */
  readonly ipcUsers = new Map<string, Set<number>>();

  constructor(changeLog: boolean) {
    this.changes = changeLog ? new ChangeLog() : undefined;
  }

  log(c: Change): void {
    if (c.k === 'ipc') {
      let users = this.ipcUsers.get(c.resource);
      if (!users) this.ipcUsers.set(c.resource, (users = new Set()));
      users.add(c.pid);
    }
    this.changes?.log(c, this.at);
  }

  /** A write touching or overlapping the previous one to the same file extends it. */
  logWrite(resource: string, start: number, end: number): void {
    this.changes?.logWrite(resource, start, end, this.at);
  }

  /** Adds a resource, or completes a known one (attributes merged, a placeholder label replaced); returns its id. */
  addResource(r: Resource): string {
    const old = this.resources.get(r.id);
    if (!old) this.resources.set(r.id, r);
    else {
      Object.assign(old.attrs, r.attrs);
      if (old.label === '' || old.label.startsWith('?')) old.label = r.label;
    }
    return r.id;
  }

  setFd(p: ProcessState, fd: number, resource: string | undefined): void {
    if (resource === undefined) return;
    p.fds.set(fd, resource);
    this.log({ k: 'fd', pid: p.pid, fd, change: 'opened', resource });
  }

  closeFd(p: ProcessState, fd: number): void {
    const r = p.fds.get(fd);
    if (r === undefined) return;
    p.fds.delete(fd);
    this.log({ k: 'fd', pid: p.pid, fd, change: 'closed', resource: r });
  }

  region(p: ProcessState, start: number, end: number, change: RegionChange): void {
    this.log({ k: 'region', pid: p.pid, start, end, change });
  }

  /** A process that is gone: its fds are closed with it. */
  removeProcess(p: ProcessState): void {
    for (const [fd, r] of p.fds) this.log({ k: 'fd', pid: p.pid, fd, change: 'closed', resource: r });
    this.processes.delete(p.pid);
    this.log({ k: 'process', pid: p.pid, change: 'exited' });
    for (const users of this.ipcUsers.values()) users.delete(p.pid);
    this.faultBaseline.delete(p.pid);
  }
}
