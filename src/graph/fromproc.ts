// Seeding from /proc: a process at a time (its threads, fds and mappings),
// and the SysV IPC objects the app's processes created or last used.
import { readExe, readFds, readMaps, readStat, readSysvipc, readThreads, type FdEntry, type MapEntry } from '../proc/procfs.js';
import type { Region } from './regions.js';
import type { GraphState, ProcessState } from './store.js';

const S_IFMT = 0o170000;
const S_IFIFO = 0o010000;

/** Seeds the given processes (and nothing else) from /proc. */
export function seedFromProc(g: GraphState, pids: number[], opts: { asRoots?: boolean } = {}): void {
  for (const pid of pids) {
    const p = readProcess(g, pid);
    if (!p) continue;
    g.processes.set(pid, p);
    if (opts.asRoots !== false && !g.processes.has(p.ppid) && !g.roots.includes(pid)) g.roots.push(pid);
  }
  seedIpc(g);
}

/** A process as /proc shows it now; undefined when it is gone or a zombie. */
export function readProcess(g: GraphState, pid: number): ProcessState | undefined {
  const st = readStat(pid);
  if (!st || st.state === 'Z' || st.state === 'X') return undefined;
  const fds = new Map<number, string>();
  for (const e of readFds(pid)) fds.set(e.fd, resourceForFd(g, pid, e));
  const regions = readMaps(pid).map((m) => regionFromMap(g, m));
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

function regionFromMap(g: GraphState, m: MapEntry): Region {
  let backing: string | undefined;
  if (m.path.startsWith('/SYSV')) {
    backing = `ipc:shm:${m.inode}`;
    g.addResource({ id: backing, kind: 'ipc', label: `SysV shm ${m.inode}`, attrs: { ipc: 'shm', id: m.inode } });
  } else if (m.inode !== 0) {
    backing = `file:${m.dev}:${m.inode}`;
    const path = m.path.replace(/ \(deleted\)$/, '');
    g.addResource({ id: backing, kind: 'file', label: path, attrs: { path, dev: m.dev, ino: m.inode, deleted: m.path.endsWith('(deleted)') } });
  } else if (m.path.startsWith('[')) {
    backing = m.path.startsWith('[stack') ? '[stack]' : m.path.startsWith('[anon') ? undefined : m.path;
  }
  return { start: m.start, end: m.end, perms: m.perms, offset: m.offset, backing };
}

function resourceForFd(g: GraphState, pid: number, e: FdEntry): string {
  const t = e.target;
  let m = /^pipe:\[(\d+)\]$/.exec(t);
  if (m) return g.addResource({ id: `pipe:${m[1]}`, kind: 'pipe', label: `pipe ${m[1]}`, attrs: { ino: Number(m[1]) } });
  m = /^socket:\[(\d+)\]$/.exec(t);
  if (m) return g.addResource({ id: `socket:${m[1]}`, kind: 'socket', label: `socket ${m[1]}`, attrs: { ino: Number(m[1]) } });
  m = /^anon_inode:\[?([^\]]+)\]?$/.exec(t);
  if (m) {
    return g.addResource({ id: `anon:${m[1]}:${pid}:${e.fd}`, kind: 'anon', label: m[1]!, attrs: { type: m[1]! } });
  }
  if ((e.mode & S_IFMT) === S_IFIFO) return g.addResource({ id: `pipe:${e.ino}`, kind: 'pipe', label: `fifo ${t}`, attrs: { ino: e.ino, path: t } });
  const path = t.replace(/ \(deleted\)$/, '');
  return g.addResource({
    id: `file:${e.dev}:${e.ino}`,
    kind: 'file',
    label: path,
    attrs: { path, dev: e.dev, ino: e.ino, ...(path.startsWith('/memfd:') ? { memfd: true } : {}) },
  });
}

function seedIpc(g: GraphState): void {
  const pids = new Set(g.processes.keys());
  for (const o of readSysvipc()) {
    const id = `ipc:${o.kind}:${o.id}`;
    const known = g.resources.has(id);
    if (known || pids.has(o.cpid) || pids.has(o.lpid)) {
      g.addResource({ id, kind: 'ipc', label: `SysV ${o.kind} ${o.id}`, attrs: { ipc: o.kind, id: o.id, key: o.key, size: o.size, cpid: o.cpid } });
    }
  }
}

/** The process of an event; one not known yet (its fork not seen) is read from /proc. */
export function ensureProc(g: GraphState, tgid: number): ProcessState | undefined {
  const p = g.processes.get(tgid);
  if (p) return p;
  const seeded = readProcess(g, tgid);
  if (seeded) g.processes.set(tgid, seeded);
  return seeded;
}
