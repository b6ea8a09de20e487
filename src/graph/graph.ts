// The app's dependency graph: processes, threads, memory regions, files,
// pipes, sockets, IPC and anonymous-inode objects, and the edges between them.
// Seeded from /proc, kept current by tracer events, repaired by a periodic
// reconciliation with /proc that counts what it repaired. Every change is
// logged with the epoch it belongs to, which is what dirtySince(N) reads.
import { isAbsolute, resolve as resolvePath } from 'node:path';
import { UnderstudyError } from '../util/errors.js';
import { logger } from '../util/log.js';
import type { SyscallEvent, TcpStateEvent, TraceEvent } from '../trace/records.js';
import { sockaddrString } from '../trace/records.js';
import type { WriteFaultCount } from '../trace/tracer.js';
import {
  kernelDevToUser,
  readChildren,
  readCwd,
  readExe,
  readFds,
  readMaps,
  readStat,
  readSysvipc,
  readThreads,
  type FdEntry,
  type MapEntry,
} from '../proc/procfs.js';
import type { DirtyFile, DirtyRegion, DirtySet, GraphEdge, GraphNode, NodeKind, RegionChange } from './model.js';
import { cutRange, hex, insertRegion, mergeRanges, normalizeRegions, protPerms, type Region } from './regions.js';

export { normalizeRegions, type Region };

const log = logger('graph');

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

type Change =
  | { k: 'process'; pid: number; change: 'created' | 'exec' | 'exited' }
  | { k: 'thread'; pid: number; tid: number; change: 'created' | 'exited' }
  | ({ k: 'region' } & DirtyRegion)
  | { k: 'fd'; pid: number; fd: number; change: 'opened' | 'closed'; resource?: string }
  | { k: 'write'; resource: string; start: number; end: number }
  | { k: 'truncate'; resource: string; size: number }
  | { k: 'path'; pid: number; op: string; path: string; path2?: string }
  | { k: 'socket'; resource: string; change: string }
  | { k: 'ipc'; resource: string; pid: number; change: string };

export interface ReconcileReport {
  processes: number;
  threads: number;
  fds: number;
  regions: number;
  total: number;
}

/** Fewer resources than this are never collected (a collection walks every process's fds and regions). */
const COLLECT_MIN = 1024;

const S_IFMT = 0o170000;
const S_IFIFO = 0o010000;
const S_IFSOCK = 0o140000;
const S_IFDIR = 0o040000;
const MAP_SHARED = 0x01;
const MAP_ANONYMOUS = 0x20;
const AT_FDCWD = 0xffffff9c;
const PAGE = 4096;

const SOCK_FAMILY: Record<number, string> = { 1: 'unix', 2: 'inet', 10: 'inet6', 16: 'netlink', 17: 'packet' };
const SOCK_TYPE: Record<number, string> = { 1: 'stream', 2: 'dgram', 5: 'seqpacket', 3: 'raw' };
const ANON_BY_SYSCALL: Record<string, string> = {
  eventfd: 'eventfd',
  eventfd2: 'eventfd',
  epoll_create: 'eventpoll',
  epoll_create1: 'eventpoll',
  timerfd_create: 'timerfd',
  signalfd: 'signalfd',
  signalfd4: 'signalfd',
  inotify_init1: 'inotify',
};

export class AppGraph {
  readonly processes = new Map<number, ProcessState>();
  readonly resources = new Map<string, Resource>();
  /** Seeded processes whose parent is not in the app (the tops of its trees), in seeding order. */
  private readonly roots: number[] = [];
  /** Last completed barrier; changes from now on belong to epoch + 1. */
  private epochNo = 0;
  private readonly changes: (Change & { epoch: number })[] = [];
  private readonly skToSocket = new Map<string, string>();
  /** TCP states of socks not yet tied to a socket node (the last one per sock). */
  private readonly skEarly = new Map<string, TcpStateEvent>();
  /** Per process: the kernel's write-fault count per region address, as last taken. */
  private readonly faultBaseline = new Map<number, Map<number, number>>();
  /** Processes that got or attached each SysV IPC object (kept apart from the log, which is forgotten). */
  private readonly ipcUsers = new Map<string, Set<number>>();
  /** collect() runs when the resources reach this many (twice what the last collection kept). */
  private collectAt = COLLECT_MIN;
  readonly repairs: ReconcileReport = { processes: 0, threads: 0, fds: 0, regions: 0, total: 0 };

  /**
   * changeLog false: a graph nobody asks for a dirty set (`understudy trace`, a
   * one-off snapshot) keeps no change log, so that its memory does not grow with
   * every event of a long-running app; dirtySince() then refuses.
   */
  constructor(private readonly opts: { changeLog?: boolean } = {}) {}

  /** Entries in the change log (what forget() has not dropped yet). */
  get changeCount(): number {
    return this.changes.length;
  }

  get epoch(): number {
    return this.epochNo;
  }

  /** Closes the epoch under way (a barrier); returns its number. */
  markEpoch(): number {
    this.epochNo += 1;
    return this.epochNo;
  }

  /** Drops the change log up to and including epoch n (committed), and the resources only it still named. */
  forget(n: number): void {
    let i = 0;
    while (i < this.changes.length && this.changes[i]!.epoch <= n) i++;
    this.changes.splice(0, i);
    this.collect();
    this.collectAt = Math.max(COLLECT_MIN, 2 * this.resources.size);
  }

  private log(c: Change): void {
    if (c.k === 'ipc') {
      let users = this.ipcUsers.get(c.resource);
      if (!users) this.ipcUsers.set(c.resource, (users = new Set()));
      users.add(c.pid);
    }
    if (this.opts.changeLog === false) return;
    this.changes.push({ ...c, epoch: this.epochNo + 1 } as Change & { epoch: number });
  }

  get rootPids(): number[] {
    return [...this.roots];
  }

  // ---- seeding from /proc ------------------------------------------------

  /** Seeds the given processes (and nothing else) from /proc. */
  seedFromProc(pids: number[], opts: { asRoots?: boolean } = {}): void {
    for (const pid of pids) {
      const p = this.readProcess(pid);
      if (!p) continue;
      this.processes.set(pid, p);
      if (opts.asRoots !== false && !this.processes.has(p.ppid) && !this.roots.includes(pid)) this.roots.push(pid);
    }
    this.seedIpc();
  }

  private readProcess(pid: number): ProcessState | undefined {
    const st = readStat(pid);
    if (!st || st.state === 'Z' || st.state === 'X') return undefined;
    const fds = new Map<number, string>();
    for (const e of readFds(pid)) fds.set(e.fd, this.resourceForFd(pid, e));
    const regions = readMaps(pid).map((m) => this.regionFromMap(m));
    const heap = regions.find((r) => r.backing === '[heap]');
    return {
      pid,
      ppid: st.ppid,
      comm: st.comm,
      exe: readExe(pid),
      threads: new Set(readThreads(pid)),
      fds,
      regions,
      startBrk: st.startBrk,
      brk: heap ? heap.end : st.startBrk,
    };
  }

  private regionFromMap(m: MapEntry): Region {
    let backing: string | undefined;
    if (m.path.startsWith('/SYSV')) {
      backing = `ipc:shm:${m.inode}`;
      this.addResource({ id: backing, kind: 'ipc', label: `SysV shm ${m.inode}`, attrs: { ipc: 'shm', id: m.inode } });
    } else if (m.inode !== 0) {
      backing = `file:${m.dev}:${m.inode}`;
      const path = m.path.replace(/ \(deleted\)$/, '');
      this.addResource({ id: backing, kind: 'file', label: path, attrs: { path, dev: m.dev, ino: m.inode, deleted: m.path.endsWith('(deleted)') } });
    } else if (m.path.startsWith('[')) {
      backing = m.path.startsWith('[stack') ? '[stack]' : m.path.startsWith('[anon') ? undefined : m.path;
    }
    return { start: m.start, end: m.end, perms: m.perms, offset: m.offset, backing };
  }

  private addResource(r: Resource): string {
    const old = this.resources.get(r.id);
    if (!old) this.resources.set(r.id, r);
    else {
      Object.assign(old.attrs, r.attrs);
      if (old.label === '' || old.label.startsWith('?')) old.label = r.label;
    }
    return r.id;
  }

  private resourceForFd(pid: number, e: FdEntry): string {
    const t = e.target;
    let m = /^pipe:\[(\d+)\]$/.exec(t);
    if (m) return this.addResource({ id: `pipe:${m[1]}`, kind: 'pipe', label: `pipe ${m[1]}`, attrs: { ino: Number(m[1]) } });
    m = /^socket:\[(\d+)\]$/.exec(t);
    if (m) return this.addResource({ id: `socket:${m[1]}`, kind: 'socket', label: `socket ${m[1]}`, attrs: { ino: Number(m[1]) } });
    m = /^anon_inode:\[?([^\]]+)\]?$/.exec(t);
    if (m) {
      return this.addResource({ id: `anon:${m[1]}:${pid}:${e.fd}`, kind: 'anon', label: m[1]!, attrs: { type: m[1]! } });
    }
    if ((e.mode & S_IFMT) === S_IFIFO) return this.addResource({ id: `pipe:${e.ino}`, kind: 'pipe', label: `fifo ${t}`, attrs: { ino: e.ino, path: t } });
    const path = t.replace(/ \(deleted\)$/, '');
    return this.addResource({
      id: `file:${e.dev}:${e.ino}`,
      kind: 'file',
      label: path,
      attrs: { path, dev: e.dev, ino: e.ino, ...(path.startsWith('/memfd:') ? { memfd: true } : {}) },
    });
  }

  private seedIpc(): void {
    const pids = new Set(this.processes.keys());
    for (const o of readSysvipc()) {
      const id = `ipc:${o.kind}:${o.id}`;
      const known = this.resources.has(id);
      if (known || pids.has(o.cpid) || pids.has(o.lpid)) {
        this.addResource({ id, kind: 'ipc', label: `SysV ${o.kind} ${o.id}`, attrs: { ipc: o.kind, id: o.id, key: o.key, size: o.size, cpid: o.cpid } });
      }
    }
  }

  // ---- events ----------------------------------------------------------

  private ensureProc(tgid: number): ProcessState | undefined {
    const p = this.processes.get(tgid);
    if (p) return p;
    const seeded = this.readProcess(tgid);
    if (seeded) this.processes.set(tgid, seeded);
    return seeded;
  }

  /** A process that is gone: its fds are closed with it. */
  private removeProcess(p: ProcessState): void {
    for (const [fd, r] of p.fds) this.log({ k: 'fd', pid: p.pid, fd, change: 'closed', resource: r });
    this.processes.delete(p.pid);
    this.log({ k: 'process', pid: p.pid, change: 'exited' });
    for (const users of this.ipcUsers.values()) users.delete(p.pid);
    this.faultBaseline.delete(p.pid);
  }

  /** Applies one event; now and then drops the resources nothing refers to any more (see collect). */
  apply(ev: TraceEvent): void {
    this.applyEvent(ev);
    if (this.resources.size >= this.collectAt) {
      this.collect();
      this.collectAt = Math.max(COLLECT_MIN, 2 * this.resources.size);
    }
  }

  /**
   * Drops the resources no fd, no mapping and no change still in the log refers
   * to (a closed socket of every served connection would otherwise stay for the
   * life of the graph). SysV and POSIX IPC objects outlive their users and stay.
   * Returns how many were dropped.
   */
  collect(): number {
    const keep = new Set<string>();
    for (const p of this.processes.values()) {
      for (const r of p.fds.values()) keep.add(r);
      for (const r of p.regions) if (r.backing) keep.add(r.backing);
    }
    for (const c of this.changes) if ('resource' in c && c.resource) keep.add(c.resource);
    let n = 0;
    for (const [id, r] of this.resources) {
      if (keep.has(id) || r.kind === 'ipc') continue;
      this.resources.delete(id);
      n++;
    }
    for (const [sk, id] of this.skToSocket) if (!this.resources.has(id)) this.skToSocket.delete(sk);
    return n;
  }

  private applyEvent(ev: TraceEvent): void {
    switch (ev.type) {
      case 'fork':
        return this.onFork(ev.tgid, ev.childTgid, ev.childTid, ev.isThread, ev.comm);
      case 'exec': {
        const p = this.ensureProc(ev.tgid);
        if (!p) return;
        p.comm = ev.comm;
        p.exe = ev.filename;
        p.threads = new Set([ev.tgid]);
        // The new image: close-on-exec fds are gone and the address space is new; /proc says which.
        const fresh = this.readProcess(ev.tgid);
        if (fresh) {
          p.fds = fresh.fds;
          p.regions = fresh.regions;
          p.startBrk = fresh.startBrk;
          p.brk = fresh.brk;
          p.exe = fresh.exe ?? p.exe;
        } else {
          p.fds = new Map();
          p.regions = [];
        }
        this.log({ k: 'process', pid: ev.tgid, change: 'exec' });
        return;
      }
      case 'exit': {
        const p = this.processes.get(ev.tgid);
        if (!p) return;
        if (ev.groupDead) this.removeProcess(p);
        else if (p.threads.delete(ev.tid)) {
          this.log({ k: 'thread', pid: ev.tgid, tid: ev.tid, change: 'exited' });
        }
        return;
      }
      case 'syscall':
        if (ev.ret < 0 && ev.ret > -4096) return; // failed calls change nothing
        return this.onSyscall(ev);
      case 'tcp_state':
        return this.onTcpState(ev);
      case 'stats':
        return;
    }
  }

  private onFork(ptgid: number, ctgid: number, ctid: number, isThread: boolean, comm: string): void {
    const parent = this.ensureProc(ptgid);
    if (isThread) {
      if (parent && !parent.threads.has(ctid)) {
        parent.threads.add(ctid);
        this.log({ k: 'thread', pid: ptgid, tid: ctid, change: 'created' });
      }
      return;
    }
    const child: ProcessState = {
      pid: ctgid,
      ppid: ptgid,
      comm: comm || parent?.comm || '?',
      exe: parent?.exe,
      threads: new Set([ctid]),
      // fork copies the fd table and the address space (same objects, same ranges)
      fds: new Map(parent?.fds ?? []),
      regions: (parent?.regions ?? []).map((r) => ({ ...r })),
      startBrk: parent?.startBrk ?? 0,
      brk: parent?.brk ?? 0,
    };
    if (!parent) {
      const fresh = this.readProcess(ctgid);
      if (fresh) Object.assign(child, { fds: fresh.fds, regions: fresh.regions });
    }
    this.processes.set(ctgid, child);
    this.log({ k: 'process', pid: ctgid, change: 'created' });
  }

  private fileResource(aux: number[], path: string | undefined, pid: number): string | undefined {
    const [ino, kdev, mode] = aux as [number, number, number];
    if (ino === 0 && kdev === 0) return undefined;
    const fmt = mode & S_IFMT;
    if (fmt === S_IFIFO && kdev === 0) return this.addResource({ id: `pipe:${ino}`, kind: 'pipe', label: `pipe ${ino}`, attrs: { ino } });
    if (fmt === S_IFSOCK) return this.addResource({ id: `socket:${ino}`, kind: 'socket', label: `socket ${ino}`, attrs: { ino } });
    const dev = kernelDevToUser(kdev);
    const id = `file:${dev}:${ino}`;
    const known = this.resources.get(id);
    if (known && path === undefined) return id; // the hot path: writes to a known file
    const abs = path !== undefined ? this.absPath(pid, path) : undefined;
    const label = abs ?? known?.label ?? `?inode ${ino}`;
    return this.addResource({
      id,
      kind: fmt === S_IFIFO ? 'pipe' : 'file',
      label,
      attrs: { ...(abs !== undefined ? { path: abs } : {}), dev, ino, ...(fmt === S_IFDIR ? { directory: true } : {}) },
    });
  }

  private absPath(pid: number, path: string): string {
    if (isAbsolute(path) || path.startsWith('memfd:')) return path;
    const cwd = readCwd(pid);
    return cwd ? resolvePath(cwd, path) : path;
  }

  private setFd(p: ProcessState, fd: number, resource: string | undefined): void {
    if (resource === undefined) return;
    p.fds.set(fd, resource);
    this.log({ k: 'fd', pid: p.pid, fd, change: 'opened', resource });
  }

  private closeFd(p: ProcessState, fd: number): void {
    const r = p.fds.get(fd);
    if (r === undefined) return;
    p.fds.delete(fd);
    this.log({ k: 'fd', pid: p.pid, fd, change: 'closed', resource: r });
  }

  /** A write touching or overlapping the previous one to the same file in this epoch extends it. */
  private logWrite(resource: string, start: number, end: number): void {
    const last = this.changes[this.changes.length - 1];
    if (last && last.k === 'write' && last.resource === resource && last.epoch === this.epochNo + 1 && start <= last.end && end >= last.start) {
      last.start = Math.min(last.start, start);
      last.end = Math.max(last.end, end);
      return;
    }
    this.log({ k: 'write', resource, start, end });
  }

  private region(p: ProcessState, start: number, end: number, change: RegionChange): void {
    this.log({ k: 'region', pid: p.pid, start, end, change });
  }

  private onSyscall(ev: SyscallEvent): void {
    const p = this.ensureProc(ev.tgid);
    if (!p) return;
    const a = ev.args;
    const ret = ev.ret;
    switch (ev.name) {
      case 'open':
      case 'openat':
      case 'openat2':
      case 'creat': {
        const path = ev.paths?.[0];
        this.setFd(p, ret, this.fileResource(ev.aux, path, p.pid));
        return;
      }
      case 'memfd_create': {
        const [ino, kdev] = ev.aux as [number, number];
        const id = `file:${kernelDevToUser(kdev)}:${ino}`;
        this.setFd(p, ret, this.addResource({ id, kind: 'file', label: `/memfd:${ev.paths?.[0] ?? ''}`, attrs: { memfd: true, ino } }));
        return;
      }
      case 'close':
        return this.closeFd(p, a[0]!);
      case 'close_range': {
        if ((a[2]! & 4) !== 0) return; // CLOSE_RANGE_CLOEXEC: closes at exec, seen then
        for (const fd of [...p.fds.keys()]) if (fd >= a[0]! && fd <= a[1]!) this.closeFd(p, fd);
        return;
      }
      case 'dup':
      case 'fcntl':
        return this.setFd(p, ret, p.fds.get(a[0]!) ?? this.fileResource(ev.aux, undefined, p.pid));
      case 'dup2':
      case 'dup3': {
        if (a[0] === a[1]) return;
        this.closeFd(p, a[1]!);
        return this.setFd(p, a[1]!, p.fds.get(a[0]!) ?? this.fileResource(ev.aux, undefined, p.pid));
      }
      case 'pipe':
      case 'pipe2': {
        const [fd0, fd1, ino0] = ev.aux as [number, number, number];
        const id = this.addResource({ id: `pipe:${ino0}`, kind: 'pipe', label: `pipe ${ino0}`, attrs: { ino: ino0 } });
        this.setFd(p, fd0, id);
        this.setFd(p, fd1, id);
        return;
      }
      case 'socketpair': {
        const [fd0, fd1, ino0, ino1] = ev.aux as [number, number, number, number];
        const fam = SOCK_FAMILY[a[0]!] ?? String(a[0]);
        const type = SOCK_TYPE[a[1]! & 0xf] ?? String(a[1]! & 0xf);
        const s0 = this.addResource({ id: `socket:${ino0}`, kind: 'socket', label: `${fam} ${type} socketpair`, attrs: { ino: ino0, family: fam, type, peerInode: ino1 } });
        const s1 = this.addResource({ id: `socket:${ino1}`, kind: 'socket', label: `${fam} ${type} socketpair`, attrs: { ino: ino1, family: fam, type, peerInode: ino0 } });
        this.setFd(p, fd0, s0);
        this.setFd(p, fd1, s1);
        return;
      }
      case 'socket': {
        const [ino] = ev.aux as [number];
        const fam = SOCK_FAMILY[a[0]!] ?? String(a[0]);
        const type = SOCK_TYPE[a[1]! & 0xf] ?? String(a[1]! & 0xf);
        const id = this.addResource({ id: `socket:${ino}`, kind: 'socket', label: `${fam} ${type} socket`, attrs: { ino, family: fam, type } });
        this.setFd(p, ret, id);
        this.log({ k: 'socket', resource: id, change: 'created' });
        return;
      }
      case 'accept':
      case 'accept4': {
        const [ino] = ev.aux as [number];
        const listener = this.resources.get(p.fds.get(a[0]!) ?? '');
        const id = this.addResource({
          id: `socket:${ino}`,
          kind: 'socket',
          label: `accepted socket ${ino}`,
          attrs: { ino, family: String(listener?.attrs.family ?? '?'), type: String(listener?.attrs.type ?? 'stream'), acceptedFrom: listener?.id ?? '?' },
        });
        if (ev.sock) this.bindSock(ev.sock, id);
        this.setFd(p, ret, id);
        this.log({ k: 'socket', resource: id, change: 'accepted' });
        return;
      }
      case 'connect':
      case 'bind': {
        const id = p.fds.get(a[0]!) ?? this.fileResource(ev.aux, undefined, p.pid);
        if (!id) return;
        const r = this.resources.get(id);
        const addr = ev.sockaddr ? sockaddrString(ev.sockaddr) : '?';
        if (r) r.attrs[ev.name === 'connect' ? 'remote' : 'local'] = addr;
        this.log({ k: 'socket', resource: id, change: `${ev.name} ${addr}` });
        if (ev.sock) this.bindSock(ev.sock, id);
        return;
      }
      case 'listen': {
        const id = p.fds.get(a[0]!);
        const r = id ? this.resources.get(id) : undefined;
        if (r) r.attrs.state = 'LISTEN';
        if (id) this.log({ k: 'socket', resource: id, change: 'listen' });
        return;
      }
      case 'mq_open': {
        // glibc passes the name without its leading '/'
        const raw = ev.paths?.[0] ?? '?';
        const name = raw.startsWith('/') ? raw : `/${raw}`;
        const id = this.addResource({ id: `ipc:mq:${name}`, kind: 'ipc', label: `POSIX mq ${name}`, attrs: { ipc: 'mq', name } });
        this.setFd(p, ret, id);
        this.log({ k: 'ipc', resource: id, pid: p.pid, change: 'opened' });
        return;
      }
      case 'mmap': {
        const len = Math.ceil(a[1]! / PAGE) * PAGE;
        const flags = a[3]!;
        const shared = (flags & MAP_SHARED) !== 0;
        let backing: string | undefined;
        if ((flags & MAP_ANONYMOUS) === 0) backing = p.fds.get(a[4]!) ?? this.fileResource(ev.aux, undefined, p.pid);
        p.regions = insertRegion(p.regions, { start: ret, end: ret + len, perms: protPerms(a[2]!, shared), offset: (flags & MAP_ANONYMOUS) === 0 ? a[5]! : 0, backing });
        return this.region(p, ret, ret + len, 'mapped');
      }
      case 'munmap': {
        const len = Math.ceil(a[1]! / PAGE) * PAGE;
        p.regions = cutRange(p.regions, a[0]!, a[0]! + len);
        return this.region(p, a[0]!, a[0]! + len, 'unmapped');
      }
      case 'mprotect': {
        const s = a[0]!;
        const e = s + Math.ceil(a[1]! / PAGE) * PAGE;
        const pieces = p.regions.filter((r) => r.end > s && r.start < e);
        let list = cutRange(p.regions, s, e);
        for (const r of pieces) {
          list.push({ ...r, start: Math.max(r.start, s), end: Math.min(r.end, e), offset: r.offset + Math.max(0, s - r.start), perms: protPerms(a[2]!, r.perms[3] === 's') });
        }
        list = list.sort((x, y) => x.start - y.start);
        p.regions = list;
        return this.region(p, s, e, 'protected');
      }
      case 'mremap': {
        const old = a[0]!;
        const oldLen = Math.ceil(a[1]! / PAGE) * PAGE;
        const newLen = Math.ceil(a[2]! / PAGE) * PAGE;
        const pieces = p.regions.filter((r) => r.end > old && r.start < old + oldLen);
        const first = pieces[0];
        if ((a[3]! & 4) === 0) p.regions = cutRange(p.regions, old, old + oldLen); // not MREMAP_DONTUNMAP
        if (first) p.regions = insertRegion(p.regions, { ...first, start: ret, end: ret + newLen });
        this.region(p, old, old + oldLen, 'remapped');
        return this.region(p, ret, ret + newLen, 'mapped');
      }
      case 'brk': {
        if (ret === p.brk) return;
        const start = p.startBrk || p.brk;
        const old = p.brk;
        p.brk = ret;
        p.regions = cutRange(p.regions, start, Math.max(old, ret));
        if (ret > start) p.regions = insertRegion(p.regions, { start, end: ret, perms: 'rw-p', offset: 0, backing: '[heap]' });
        return this.region(p, Math.min(old, ret), Math.max(old, ret), 'brk');
      }
      case 'madvise':
        return this.region(p, a[0]!, a[0]! + Math.ceil(a[1]! / PAGE) * PAGE, 'discarded');
      case 'write':
      case 'writev':
      case 'pwrite64':
      case 'pwritev':
      case 'pwritev2': {
        const id = this.fileResource(ev.aux, undefined, p.pid);
        if (!id || ret <= 0) return;
        const posAfter = ev.aux[3]!;
        let off: number;
        if (ev.name === 'pwrite64' || ev.name === 'pwritev') off = a[3]!;
        else if (ev.name === 'pwritev2' && a[3]! !== 0xffffffffffffffff && a[3]! < Number.MAX_SAFE_INTEGER) off = a[3]!;
        else off = posAfter - ret;
        this.logWrite(id, off, off + ret);
        return;
      }
      case 'ftruncate': {
        const id = this.fileResource(ev.aux, undefined, p.pid);
        if (id) this.log({ k: 'truncate', resource: id, size: a[1]! });
        return;
      }
      case 'fallocate': {
        const id = this.fileResource(ev.aux, undefined, p.pid);
        if (id) this.log({ k: 'write', resource: id, start: a[2]!, end: a[2]! + a[3]! });
        return;
      }
      case 'rename':
      case 'renameat':
      case 'renameat2':
        return this.log({ k: 'path', pid: p.pid, op: 'rename', path: this.pathArg(p, ev, 0), path2: this.pathArg(p, ev, 1) });
      case 'unlink':
      case 'unlinkat':
        return this.log({ k: 'path', pid: p.pid, op: ev.name === 'unlinkat' && (a[2]! & 0x200) !== 0 ? 'rmdir' : 'unlink', path: this.pathArg(p, ev, 0) });
      case 'mkdir':
      case 'mkdirat':
        return this.log({ k: 'path', pid: p.pid, op: 'mkdir', path: this.pathArg(p, ev, 0) });
      case 'rmdir':
        return this.log({ k: 'path', pid: p.pid, op: 'rmdir', path: this.pathArg(p, ev, 0) });
      case 'shmget':
      case 'msgget':
      case 'semget': {
        const kind = ev.name.slice(0, 3);
        const id = this.addResource({ id: `ipc:${kind}:${ret}`, kind: 'ipc', label: `SysV ${kind} ${ret}`, attrs: { ipc: kind, id: ret, key: a[0]! } });
        if (kind === 'shm') this.resources.get(id)!.attrs.size = a[1]!;
        this.log({ k: 'ipc', resource: id, pid: p.pid, change: 'get' });
        return;
      }
      case 'shmat': {
        const id = `ipc:shm:${a[0]}`;
        const size = Number(this.resources.get(id)?.attrs.size ?? 0) || (readSysvipc().find((o) => o.kind === 'shm' && o.id === a[0])?.size ?? PAGE);
        this.addResource({ id, kind: 'ipc', label: `SysV shm ${a[0]}`, attrs: { ipc: 'shm', id: a[0]!, size } });
        const len = Math.ceil(size / PAGE) * PAGE;
        p.regions = insertRegion(p.regions, { start: ret, end: ret + len, perms: (a[2]! & 0o10000) !== 0 ? 'r--s' : 'rw-s', offset: 0, backing: id });
        this.log({ k: 'ipc', resource: id, pid: p.pid, change: 'attached' });
        return this.region(p, ret, ret + len, 'mapped');
      }
      case 'shmdt': {
        const r = p.regions.find((x) => x.start === a[0]! && x.backing?.startsWith('ipc:shm:'));
        if (!r) return;
        p.regions = p.regions.filter((x) => !(x.backing === r.backing && x.start >= r.start));
        this.log({ k: 'ipc', resource: r.backing!, pid: p.pid, change: 'detached' });
        return this.region(p, r.start, r.end, 'unmapped');
      }
      default: {
        const anon = ANON_BY_SYSCALL[ev.name];
        if (anon === undefined) return;
        if ((ev.name === 'signalfd' || ev.name === 'signalfd4') && a[0] === ret && p.fds.has(ret)) return; // updated in place
        const id = this.addResource({ id: `anon:${anon}:${p.pid}:${ret}`, kind: 'anon', label: anon, attrs: { type: anon } });
        this.setFd(p, ret, id);
      }
    }
  }

  private pathArg(p: ProcessState, ev: SyscallEvent, i: number): string {
    const path = ev.paths?.[i] ?? '?';
    if (isAbsolute(path)) return path;
    // the *at forms: relative to a directory fd unless AT_FDCWD
    const dirArg = ev.name.endsWith('at') || ev.name === 'renameat2' ? ev.args[i === 0 ? 0 : 2]! : AT_FDCWD;
    if (dirArg !== AT_FDCWD && dirArg < 0x7fffffff) {
      const dir = this.resources.get(p.fds.get(dirArg) ?? '');
      if (dir && typeof dir.attrs.path === 'string') return resolvePath(dir.attrs.path, path);
    }
    return this.absPath(p.pid, path);
  }

  /** Learns which socket a struct sock is; applies the TCP state seen before (a connect's handshake ends before connect returns). */
  private bindSock(sk: string, id: string): void {
    this.skToSocket.set(sk, id);
    const early = this.skEarly.get(sk);
    if (early) {
      this.skEarly.delete(sk);
      this.setTcpAttrs(id, early);
    }
  }

  private setTcpAttrs(id: string, ev: TcpStateEvent): void {
    const r = this.resources.get(id);
    if (!r) return;
    r.attrs.state = ev.newState;
    if (!ev.local.endsWith(':0')) r.attrs.local = ev.local;
    r.attrs.remote = ev.remote;
    r.attrs.family = ev.family === 10 ? 'inet6' : 'inet';
    r.attrs.protocol = 'tcp';
  }

  private onTcpState(ev: TcpStateEvent): void {
    let id = this.skToSocket.get(ev.sk);
    if (!id) {
      // Find the socket by its local address among the process's sockets.
      const p = this.processes.get(ev.tgid);
      for (const r of p ? [...p.fds.values()] : []) {
        const res = this.resources.get(r);
        if (res?.kind === 'socket' && (res.attrs.local === ev.local || res.attrs.remote === ev.remote)) id = r;
      }
    }
    if (id) {
      this.skToSocket.set(ev.sk, id);
      this.setTcpAttrs(id, ev);
    } else {
      this.skEarly.set(ev.sk, ev);
      if (this.skEarly.size > 4096) this.skEarly.delete(this.skEarly.keys().next().value!); // bounded: oldest out
    }
    if (ev.newState === 'CLOSE') {
      this.skToSocket.delete(ev.sk);
      this.skEarly.delete(ev.sk);
    }
    this.log({ k: 'socket', resource: id ?? `sk:${ev.sk}`, change: `${ev.oldState}->${ev.newState} ${ev.local} ${ev.remote}` });
  }

  /** Takes the kernel's write-fault counts; the increase since the last call is logged per region. */
  applyWriteFaults(faults: WriteFaultCount[]): void {
    for (const f of faults) {
      // a process gone (its entries not removed from the kernel map yet), or not
      // known yet (its fork not applied): nothing to log now; a known one's count
      // is taken when it is known, its baseline untouched until then
      const p = this.processes.get(f.tgid);
      if (!p) continue;
      let base = this.faultBaseline.get(f.tgid);
      if (!base) this.faultBaseline.set(f.tgid, (base = new Map()));
      const before = base.get(f.address) ?? 0;
      if (f.count <= before) continue;
      base.set(f.address, f.count);
      const r = p.regions.find((x) => f.address >= x.start && f.address < x.end);
      const start = f.resolved ? f.address : r?.start ?? f.address;
      const end = r ? r.end : f.address + PAGE;
      this.log({ k: 'region', pid: f.tgid, start, end, change: 'written', writeFaults: f.count - before });
    }
  }

  // ---- queries ----------------------------------------------------------

  /** What changed after barrier `since` (exclusive) up to now. */
  dirtySince(since: number): DirtySet {
    if (this.opts.changeLog === false) throw new UnderstudyError('E_INTERNAL', 'this graph keeps no change log (changeLog: false): it cannot give a dirty set');
    const ds: DirtySet = { since, epoch: this.epochNo, processes: [], threads: [], regions: [], fds: [], files: [], paths: [], sockets: [], ipc: [] };
    const files = new Map<string, DirtyFile>();
    const fileOf = (resource: string): DirtyFile => {
      let f = files.get(resource);
      if (!f) {
        const r = this.resources.get(resource);
        f = { resource, path: String(r?.attrs.path ?? r?.label ?? '?'), ranges: [] };
        files.set(resource, f);
      }
      return f;
    };
    const faults = new Map<string, DirtyRegion>();
    for (const c of this.changes) {
      if (c.epoch <= since) continue;
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

  /** Every node and edge of the app (its closure), without external ends. */
  closure(): { nodes: GraphNode[]; edges: GraphEdge[] } {
    const nodes: GraphNode[] = [];
    const edges: GraphEdge[] = [];
    const used = new Set<string>();
    for (const p of [...this.processes.values()].sort((a, b) => a.pid - b.pid)) {
      const pid = `process:${p.pid}`;
      nodes.push({ id: pid, kind: 'process', label: `${p.comm} (${p.pid})`, attrs: { pid: p.pid, ppid: p.ppid, comm: p.comm, exe: p.exe ?? '?' } });
      if (this.processes.has(p.ppid)) edges.push({ from: `process:${p.ppid}`, to: pid, kind: 'parent-of' });
      for (const t of [...p.threads].sort((a, b) => a - b)) {
        nodes.push({ id: `thread:${t}`, kind: 'thread', label: `thread ${t}`, attrs: { tid: t, pid: p.pid } });
        edges.push({ from: pid, to: `thread:${t}`, kind: 'owns' });
      }
      const byRes = new Map<string, number[]>();
      for (const [fd, r] of p.fds) byRes.set(r, [...(byRes.get(r) ?? []), fd]);
      for (const [r, fds] of byRes) {
        used.add(r);
        edges.push({ from: pid, to: r, kind: 'owns', label: `fd ${fds.sort((a, b) => a - b).join(',')}` });
      }
      for (const r of p.regions) {
        const rid = `region:${p.pid}:${hex(r.start)}`;
        nodes.push({
          id: rid,
          kind: 'region',
          label: `${hex(r.start)}-${hex(r.end)} ${r.perms}${r.backing?.startsWith('[') ? ' ' + r.backing : ''}`,
          attrs: { pid: p.pid, start: r.start, end: r.end, perms: r.perms, offset: r.offset, ...(r.backing ? { backing: r.backing } : {}) },
        });
        edges.push({ from: pid, to: rid, kind: 'maps' });
        if (r.backing && !r.backing.startsWith('[')) {
          used.add(r.backing);
          edges.push({ from: rid, to: r.backing, kind: r.perms[3] === 's' ? 'shares' : 'maps' });
        }
      }
    }
    for (const r of this.resources.values()) {
      if (r.kind === 'ipc' && !used.has(r.id)) {
        for (const u of this.ipcUsers.get(r.id) ?? []) if (this.processes.has(u)) {
          used.add(r.id);
          edges.push({ from: `process:${u}`, to: r.id, kind: 'shares' });
        }
      }
    }
    for (const id of used) {
      const r = this.resources.get(id);
      if (r) nodes.push({ id: r.id, kind: r.kind, label: r.label, attrs: { ...r.attrs } });
    }
    // sockets connected to sockets of the app (socketpairs, local connections)
    for (const id of used) {
      const r = this.resources.get(id);
      const peer = r?.attrs.peerInode;
      if (peer !== undefined && used.has(`socket:${peer}`)) edges.push({ from: id, to: `socket:${peer}`, kind: 'connects-to' });
    }
    return { nodes, edges };
  }

  /** Pids of the app's processes. */
  pids(): number[] {
    return [...this.processes.keys()].sort((a, b) => a - b);
  }

  // ---- reconciliation ------------------------------------------------------

  /** Compares with /proc and repairs drift; returns what was repaired this time. */
  reconcile(): ReconcileReport {
    const rep: ReconcileReport = { processes: 0, threads: 0, fds: 0, regions: 0, total: 0 };
    // Known processes: one read of /proc each, which also says whether it is gone.
    for (const p of [...this.processes.values()]) {
      const fresh = this.readProcess(p.pid);
      if (!fresh) {
        this.removeProcess(p);
        rep.processes++;
        continue;
      }
      // threads
      for (const t of fresh.threads) if (!p.threads.has(t)) rep.threads++;
      for (const t of p.threads) if (!fresh.threads.has(t)) rep.threads++;
      p.threads = fresh.threads;
      // fds: same number, same object
      for (const [fd, r] of fresh.fds) {
        if (p.fds.get(fd) !== r && !(r.startsWith('anon:') && p.fds.get(fd)?.startsWith('anon:'))) {
          rep.fds++;
          p.fds.set(fd, r);
          this.log({ k: 'fd', pid: p.pid, fd, change: 'opened', resource: r });
        }
      }
      for (const fd of [...p.fds.keys()]) {
        if (!fresh.fds.has(fd)) {
          rep.fds++;
          this.closeFd(p, fd);
        }
      }
      // regions, compared as the kernel shows them (merged)
      const key = (r: Region): string => `${r.start}-${r.end} ${r.perms}`;
      const mine = new Set(normalizeRegions(p.regions).map(key));
      const theirs = new Set(normalizeRegions(fresh.regions).map(key));
      let diff = 0;
      for (const k of theirs) if (!mine.has(k)) diff++;
      for (const k of mine) if (!theirs.has(k)) diff++;
      if (diff > 0) {
        rep.regions += diff;
        p.regions = fresh.regions;
      }
    }
    // Children of app processes never seen (found from the threads just read): read fresh, nothing to compare.
    for (const pid of this.unseenChildren()) {
      const p = this.readProcess(pid);
      if (p) {
        this.processes.set(pid, p);
        this.log({ k: 'process', pid, change: 'created' });
        rep.processes++;
      }
    }
    rep.total = rep.processes + rep.threads + rep.fds + rep.regions;
    for (const k of ['processes', 'threads', 'fds', 'regions', 'total'] as const) this.repairs[k] += rep[k];
    if (rep.total > 0) log.info({ repaired: rep }, 'reconciliation repaired drift from /proc');
    return rep;
  }

  private unseenChildren(): number[] {
    const out: number[] = [];
    for (const p of this.processes.values()) {
      // children of every thread (readChildren gives '' for a thread that is gone)
      const kids = [...p.threads].map((t) => readChildren(p.pid, t)).join(' ');
      for (const k of kids.split(/\s+/).filter((s) => s !== '').map(Number)) if (!this.processes.has(k)) out.push(k);
    }
    return out;
  }
}

