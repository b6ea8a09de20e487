// Syscalls applied to the graph: fds (open, close, dup, pipe, socket...),
// sockets' addresses, the address space (mmap, munmap, mprotect, mremap, brk,
// madvise), file writes and truncation, path operations, and IPC objects.
import { isAbsolute, resolve as resolvePath } from 'node:path';
import type { SyscallEvent } from '../trace/records.js';
import { sockaddrString } from '../trace/records.js';
import { ensureProc } from './fromproc.js';
import { kernelDevToUser, readCwd, readSysvipc } from '../proc/procfs.js';
import { cutRange, insertRegion, protPerms } from './regions.js';
import type { GraphState, ProcessState } from './store.js';
import { bindSock } from './tcp.js';

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

/** Applies one syscall (a failed one never reaches here). */
export function onSyscall(g: GraphState, ev: SyscallEvent): void {
  const p = ensureProc(g, ev.tgid);
  if (!p) return;
  const a = ev.args;
  const ret = ev.ret;
  switch (ev.name) {
    case 'open':
    case 'openat':
    case 'openat2':
    case 'creat': {
      const path = ev.paths?.[0];
      g.setFd(p, ret, fileResource(g, ev.aux, path, p.pid));
      return;
    }
    case 'memfd_create': {
      const [ino, kdev] = ev.aux as [number, number];
      const id = `file:${kernelDevToUser(kdev)}:${ino}`;
      g.setFd(p, ret, g.addResource({ id, kind: 'file', label: `/memfd:${ev.paths?.[0] ?? ''}`, attrs: { memfd: true, ino } }));
      return;
    }
    case 'close':
      return g.closeFd(p, a[0]!);
    case 'close_range': {
      if ((a[2]! & 4) !== 0) return; // CLOSE_RANGE_CLOEXEC: closes at exec, seen then
      for (const fd of [...p.fds.keys()]) if (fd >= a[0]! && fd <= a[1]!) g.closeFd(p, fd);
      return;
    }
    case 'dup':
    case 'fcntl':
      return g.setFd(p, ret, p.fds.get(a[0]!) ?? fileResource(g, ev.aux, undefined, p.pid));
    case 'dup2':
    case 'dup3': {
      if (a[0] === a[1]) return;
      g.closeFd(p, a[1]!);
      return g.setFd(p, a[1]!, p.fds.get(a[0]!) ?? fileResource(g, ev.aux, undefined, p.pid));
    }
    case 'pipe':
    case 'pipe2': {
      const [fd0, fd1, ino0] = ev.aux as [number, number, number];
      const id = g.addResource({ id: `pipe:${ino0}`, kind: 'pipe', label: `pipe ${ino0}`, attrs: { ino: ino0 } });
      g.setFd(p, fd0, id);
      g.setFd(p, fd1, id);
      return;
    }
    case 'socketpair': {
      const [fd0, fd1, ino0, ino1] = ev.aux as [number, number, number, number];
      const fam = SOCK_FAMILY[a[0]!] ?? String(a[0]);
      const type = SOCK_TYPE[a[1]! & 0xf] ?? String(a[1]! & 0xf);
      const s0 = g.addResource({
        id: `socket:${ino0}`,
        kind: 'socket',
        label: `${fam} ${type} socketpair`,
        attrs: { ino: ino0, family: fam, type, peerInode: ino1 },
      });
      const s1 = g.addResource({
        id: `socket:${ino1}`,
        kind: 'socket',
        label: `${fam} ${type} socketpair`,
        attrs: { ino: ino1, family: fam, type, peerInode: ino0 },
      });
      g.setFd(p, fd0, s0);
      g.setFd(p, fd1, s1);
      return;
    }
    case 'socket': {
      const [ino] = ev.aux as [number];
      const fam = SOCK_FAMILY[a[0]!] ?? String(a[0]);
      const type = SOCK_TYPE[a[1]! & 0xf] ?? String(a[1]! & 0xf);
      const id = g.addResource({ id: `socket:${ino}`, kind: 'socket', label: `${fam} ${type} socket`, attrs: { ino, family: fam, type } });
      g.setFd(p, ret, id);
      g.log({ k: 'socket', resource: id, change: 'created' });
      return;
    }
    case 'accept':
    case 'accept4': {
      const [ino] = ev.aux as [number];
      const listener = g.resources.get(p.fds.get(a[0]!) ?? '');
      const id = g.addResource({
        id: `socket:${ino}`,
        kind: 'socket',
        label: `accepted socket ${ino}`,
        attrs: { ino, family: String(listener?.attrs.family ?? '?'), type: String(listener?.attrs.type ?? 'stream'), acceptedFrom: listener?.id ?? '?' },
      });
      if (ev.sock) bindSock(g, ev.sock, id);
      g.setFd(p, ret, id);
      g.log({ k: 'socket', resource: id, change: 'accepted' });
      return;
    }
    case 'connect':
    case 'bind': {
      const id = p.fds.get(a[0]!) ?? fileResource(g, ev.aux, undefined, p.pid);
      if (!id) return;
      const r = g.resources.get(id);
      const addr = ev.sockaddr ? sockaddrString(ev.sockaddr) : '?';
      if (r) r.attrs[ev.name === 'connect' ? 'remote' : 'local'] = addr;
      g.log({ k: 'socket', resource: id, change: `${ev.name} ${addr}` });
      if (ev.sock) bindSock(g, ev.sock, id);
      return;
    }
    case 'listen': {
      const id = p.fds.get(a[0]!);
      const r = id ? g.resources.get(id) : undefined;
      if (r) r.attrs.state = 'LISTEN';
      if (id) g.log({ k: 'socket', resource: id, change: 'listen' });
      return;
    }
    case 'mq_open': {
      // glibc passes the name without its leading '/'
      const raw = ev.paths?.[0] ?? '?';
      const name = raw.startsWith('/') ? raw : `/${raw}`;
      const id = g.addResource({ id: `ipc:mq:${name}`, kind: 'ipc', label: `POSIX mq ${name}`, attrs: { ipc: 'mq', name } });
      g.setFd(p, ret, id);
      g.log({ k: 'ipc', resource: id, pid: p.pid, change: 'opened' });
      return;
    }
    case 'mmap': {
      const len = Math.ceil(a[1]! / PAGE) * PAGE;
      const flags = a[3]!;
      const shared = (flags & MAP_SHARED) !== 0;
      let backing: string | undefined;
      if ((flags & MAP_ANONYMOUS) === 0) backing = p.fds.get(a[4]!) ?? fileResource(g, ev.aux, undefined, p.pid);
      p.regions = insertRegion(p.regions, {
        start: ret,
        end: ret + len,
        perms: protPerms(a[2]!, shared),
        offset: (flags & MAP_ANONYMOUS) === 0 ? a[5]! : 0,
        backing,
      });
      return g.region(p, ret, ret + len, 'mapped');
    }
    case 'munmap': {
      const len = Math.ceil(a[1]! / PAGE) * PAGE;
      p.regions = cutRange(p.regions, a[0]!, a[0]! + len);
      return g.region(p, a[0]!, a[0]! + len, 'unmapped');
    }
    case 'mprotect': {
      const s = a[0]!;
      const e = s + Math.ceil(a[1]! / PAGE) * PAGE;
      const pieces = p.regions.filter((r) => r.end > s && r.start < e);
      let list = cutRange(p.regions, s, e);
      for (const r of pieces) {
        list.push({
          ...r,
          start: Math.max(r.start, s),
          end: Math.min(r.end, e),
          offset: r.offset + Math.max(0, s - r.start),
          perms: protPerms(a[2]!, r.perms[3] === 's'),
        });
      }
      list = list.sort((x, y) => x.start - y.start);
      p.regions = list;
      return g.region(p, s, e, 'protected');
    }
    case 'mremap': {
      const old = a[0]!;
      const oldLen = Math.ceil(a[1]! / PAGE) * PAGE;
      const newLen = Math.ceil(a[2]! / PAGE) * PAGE;
      const pieces = p.regions.filter((r) => r.end > old && r.start < old + oldLen);
      const first = pieces[0];
      if ((a[3]! & 4) === 0) p.regions = cutRange(p.regions, old, old + oldLen); // not MREMAP_DONTUNMAP
      if (first) p.regions = insertRegion(p.regions, { ...first, start: ret, end: ret + newLen });
      g.region(p, old, old + oldLen, 'remapped');
      return g.region(p, ret, ret + newLen, 'mapped');
    }
    case 'brk': {
      if (ret === p.brk) return;
      const start = p.startBrk || p.brk;
      const old = p.brk;
      p.brk = ret;
      p.regions = cutRange(p.regions, start, Math.max(old, ret));
      if (ret > start) p.regions = insertRegion(p.regions, { start, end: ret, perms: 'rw-p', offset: 0, backing: '[heap]' });
      return g.region(p, Math.min(old, ret), Math.max(old, ret), 'brk');
    }
    case 'madvise':
      return g.region(p, a[0]!, a[0]! + Math.ceil(a[1]! / PAGE) * PAGE, 'discarded');
    case 'write':
    case 'writev':
    case 'pwrite64':
    case 'pwritev':
    case 'pwritev2': {
      const id = fileResource(g, ev.aux, undefined, p.pid);
      if (!id || ret <= 0) return;
      const posAfter = ev.aux[3]!;
      let off: number;
      if (ev.name === 'pwrite64' || ev.name === 'pwritev') off = a[3]!;
      else if (ev.name === 'pwritev2' && a[3]! !== 2 ** 64 && a[3]! < Number.MAX_SAFE_INTEGER) off = a[3]!;
      else off = posAfter - ret;
      g.logWrite(id, off, off + ret);
      return;
    }
    case 'ftruncate': {
      const id = fileResource(g, ev.aux, undefined, p.pid);
      if (id) g.log({ k: 'truncate', resource: id, size: a[1]! });
      return;
    }
    case 'fallocate': {
      const id = fileResource(g, ev.aux, undefined, p.pid);
      if (id) g.log({ k: 'write', resource: id, start: a[2]!, end: a[2]! + a[3]! });
      return;
    }
    case 'rename':
    case 'renameat':
    case 'renameat2':
      return g.log({ k: 'path', pid: p.pid, op: 'rename', path: pathArg(g, p, ev, 0), path2: pathArg(g, p, ev, 1) });
    case 'unlink':
    case 'unlinkat':
      return g.log({ k: 'path', pid: p.pid, op: ev.name === 'unlinkat' && (a[2]! & 0x200) !== 0 ? 'rmdir' : 'unlink', path: pathArg(g, p, ev, 0) });
    case 'mkdir':
    case 'mkdirat':
      return g.log({ k: 'path', pid: p.pid, op: 'mkdir', path: pathArg(g, p, ev, 0) });
    case 'rmdir':
      return g.log({ k: 'path', pid: p.pid, op: 'rmdir', path: pathArg(g, p, ev, 0) });
    case 'shmget':
    case 'msgget':
    case 'semget': {
      const kind = ev.name.slice(0, 3);
      const id = g.addResource({ id: `ipc:${kind}:${ret}`, kind: 'ipc', label: `SysV ${kind} ${ret}`, attrs: { ipc: kind, id: ret, key: a[0]! } });
      if (kind === 'shm') g.resources.get(id)!.attrs.size = a[1]!;
      g.log({ k: 'ipc', resource: id, pid: p.pid, change: 'get' });
      return;
    }
    case 'shmat': {
      const id = `ipc:shm:${a[0]}`;
      const size = Number(g.resources.get(id)?.attrs.size ?? 0) || (readSysvipc().find((o) => o.kind === 'shm' && o.id === a[0])?.size ?? PAGE);
      g.addResource({ id, kind: 'ipc', label: `SysV shm ${a[0]}`, attrs: { ipc: 'shm', id: a[0]!, size } });
      const len = Math.ceil(size / PAGE) * PAGE;
      p.regions = insertRegion(p.regions, { start: ret, end: ret + len, perms: (a[2]! & 0o10000) !== 0 ? 'r--s' : 'rw-s', offset: 0, backing: id });
      g.log({ k: 'ipc', resource: id, pid: p.pid, change: 'attached' });
      return g.region(p, ret, ret + len, 'mapped');
    }
    case 'shmdt': {
      const r = p.regions.find((x) => x.start === a[0]! && x.backing?.startsWith('ipc:shm:'));
      if (!r) return;
      p.regions = p.regions.filter((x) => !(x.backing === r.backing && x.start >= r.start));
      g.log({ k: 'ipc', resource: r.backing!, pid: p.pid, change: 'detached' });
      return g.region(p, r.start, r.end, 'unmapped');
    }
    default: {
      const anon = ANON_BY_SYSCALL[ev.name];
      if (anon === undefined) return;
      if ((ev.name === 'signalfd' || ev.name === 'signalfd4') && a[0] === ret && p.fds.has(ret)) return; // updated in place
      const id = g.addResource({ id: `anon:${anon}:${p.pid}:${ret}`, kind: 'anon', label: anon, attrs: { type: anon } });
      g.setFd(p, ret, id);
    }
  }
}

function fileResource(g: GraphState, aux: number[], path: string | undefined, pid: number): string | undefined {
  const [ino, kdev, mode] = aux as [number, number, number];
  if (ino === 0 && kdev === 0) return undefined;
  const fmt = mode & S_IFMT;
  if (fmt === S_IFIFO && kdev === 0) return g.addResource({ id: `pipe:${ino}`, kind: 'pipe', label: `pipe ${ino}`, attrs: { ino } });
  if (fmt === S_IFSOCK) return g.addResource({ id: `socket:${ino}`, kind: 'socket', label: `socket ${ino}`, attrs: { ino } });
  const dev = kernelDevToUser(kdev);
  const id = `file:${dev}:${ino}`;
  const known = g.resources.get(id);
  if (known && path === undefined) return id; // the hot path: writes to a known file
  const abs = path !== undefined ? absPath(pid, path) : undefined;
  const label = abs ?? known?.label ?? `?inode ${ino}`;
  return g.addResource({
    id,
    kind: fmt === S_IFIFO ? 'pipe' : 'file',
    label,
    attrs: { ...(abs !== undefined ? { path: abs } : {}), dev, ino, ...(fmt === S_IFDIR ? { directory: true } : {}) },
  });
}

function absPath(pid: number, path: string): string {
  if (isAbsolute(path) || path.startsWith('memfd:')) return path;
  const cwd = readCwd(pid);
  return cwd ? resolvePath(cwd, path) : path;
}

function pathArg(g: GraphState, p: ProcessState, ev: SyscallEvent, i: number): string {
  const path = ev.paths?.[i] ?? '?';
  if (isAbsolute(path)) return path;
  // the *at forms: relative to a directory fd unless AT_FDCWD
  const dirArg = ev.name.endsWith('at') || ev.name === 'renameat2' ? ev.args[i === 0 ? 0 : 2]! : AT_FDCWD;
  if (dirArg !== AT_FDCWD && dirArg < 0x7fffffff) {
    const dir = g.resources.get(p.fds.get(dirArg) ?? '');
    if (dir && typeof dir.attrs.path === 'string') return resolvePath(dir.attrs.path, path);
  }
  return absPath(p.pid, path);
}
