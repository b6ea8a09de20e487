// Readers of /proc, shared by the tracer, the graph and the CLI: one process
// at a time, tolerant of a process that vanishes mid-read (undefined or empty
// results, never a throw), and the process tree (descendantsOf).
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { UnderstudyError } from '../util/errors.js';

export interface ProcStat {
  pid: number;
  comm: string;
  state: string;
  ppid: number;
  /** Field 47: where the heap starts. */
  startBrk: number;
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

export function readStat(pid: number): ProcStat | undefined {
  const s = read(`/proc/${pid}/stat`);
  if (s === undefined) return undefined;
  const close = s.lastIndexOf(')');
  const comm = s.slice(s.indexOf('(') + 1, close);
  const f = s.slice(close + 2).split(' '); // f[0] is field 3 (state)
  return { pid, comm, state: f[0] ?? '?', ppid: Number(f[1]), startBrk: Number(f[44] ?? 0) };
}

export function listPids(): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .map(Number);
}

/** Whether pid is a process that runs (not gone, not a zombie). */
export function isLive(pid: number): boolean {
  const st = readStat(pid);
  return st !== undefined && st.state !== 'Z' && st.state !== 'X';
}

/** Refuses a PID that is not a live process, with what to do about it. */
export function requireProcess(pid: number): void {
  if (!Number.isInteger(pid) || pid <= 0) throw new UnderstudyError('E_USAGE', `--pid must be a positive integer, got ${pid}`);
  if (!isLive(pid)) {
    throw new UnderstudyError(
      'E_NO_SUCH_PROCESS',
      `no running process with PID ${pid}: give the PID of a live process (see \`ps -e\`); \`understudy check\` verifies that this kernel can trace it`,
    );
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

export function readThreads(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/task`)
      .map(Number)
      .sort((a, b) => a - b);
  } catch {
    return [];
  }
}

/** The children of one thread (/proc/PID/task/TID/children), or '' when it is gone. */
export function readChildren(pid: number, tid: number): string {
  return read(`/proc/${pid}/task/${tid}/children`) ?? '';
}

export function readExe(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return undefined;
  }
}

export function readCwd(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/cwd`);
  } catch {
    return undefined;
  }
}

export interface FdEntry {
  fd: number;
  /** readlink of /proc/PID/fd/N: a path, pipe:[N], socket:[N], anon_inode:[...] */
  target: string;
  dev: number;
  ino: number;
  mode: number;
  pos: number;
  flags: number;
}

export function readFds(pid: number): FdEntry[] {
  let names: string[];
  try {
    names = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return [];
  }
  const out: FdEntry[] = [];
  for (const n of names) {
    const fd = Number(n);
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${n}`);
    } catch {
      continue;
    }
    let dev = 0;
    let ino = 0;
    let mode = 0;
    try {
      const st = statSync(`/proc/${pid}/fd/${n}`);
      dev = st.dev;
      ino = st.ino;
      mode = st.mode;
    } catch {
      // a deleted or inaccessible target: keep what readlink said
    }
    let pos = 0;
    let flags = 0;
    const info = read(`/proc/${pid}/fdinfo/${n}`);
    if (info !== undefined) {
      pos = Number(/^pos:\s+(\d+)/m.exec(info)?.[1] ?? 0);
      flags = parseInt(/^flags:\s+(\d+)/m.exec(info)?.[1] ?? '0', 8);
    }
    out.push({ fd, target, dev, ino, mode, pos, flags });
  }
  return out.sort((a, b) => a.fd - b.fd);
}

export interface MapEntry {
  start: number;
  end: number;
  perms: string; // rwxp / rw-s
  offset: number;
  /** userspace dev_t of the backing file (0 for anonymous) */
  dev: number;
  inode: number;
  path: string;
}

export function readMaps(pid: number): MapEntry[] {
  const s = read(`/proc/${pid}/maps`);
  if (s === undefined) return [];
  const out: MapEntry[] = [];
  for (const line of s.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+)\s*(.*)$/.exec(line);
    if (!m) continue;
    out.push({
      start: parseInt(m[1]!, 16),
      end: parseInt(m[2]!, 16),
      perms: m[3]!,
      offset: parseInt(m[4]!, 16),
      dev: makedev(parseInt(m[5]!, 16), parseInt(m[6]!, 16)),
      inode: Number(m[7]),
      path: m[8] ?? '',
    });
  }
  return out;
}

/** glibc's makedev: the userspace dev_t that stat() returns. */
export function makedev(major: number, minor: number): number {
  return (minor & 0xff) + major * 256 + (minor & ~0xff) * 4096;
}

/** A kernel dev_t (MAJOR << 20 | MINOR, as in struct super_block) as userspace dev_t. */
export function kernelDevToUser(kdev: number): number {
  return makedev(Math.floor(kdev / 0x100000), kdev & 0xfffff);
}

/** SysV IPC objects from /proc/sysvipc. */
export interface SysvObject {
  kind: 'shm' | 'msg' | 'sem';
  id: number;
  key: number;
  /** creator and last user (shm: last attach/detach; msg: last send/receive) */
  cpid: number;
  lpid: number;
  size: number;
  nattch: number;
}

export function readSysvipc(): SysvObject[] {
  const out: SysvObject[] = [];
  for (const kind of ['shm', 'msg', 'sem'] as const) {
    const s = read(`/proc/sysvipc/${kind}`);
    if (s === undefined) continue;
    const lines = s.split('\n');
    const head = (lines[0] ?? '').trim().split(/\s+/);
    for (const l of lines.slice(1)) {
      if (l.trim() === '') continue;
      const f = l.trim().split(/\s+/);
      const get = (name: string): number => Number(f[head.indexOf(name)] ?? 0);
      out.push({
        kind,
        id: kind === 'shm' ? get('shmid') : kind === 'msg' ? get('msqid') : get('semid'),
        key: get('key'),
        cpid: kind === 'shm' ? get('cpid') : kind === 'msg' ? get('lspid') : 0,
        lpid: kind === 'shm' ? get('lpid') : kind === 'msg' ? get('lrpid') : 0,
        size: kind === 'shm' ? get('size') : kind === 'msg' ? get('cbytes') : get('nsems'),
        nattch: kind === 'shm' ? get('nattch') : 0,
      });
    }
  }
  return out;
}
