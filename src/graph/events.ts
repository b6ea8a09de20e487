// Tracer events applied to the graph: process and thread lifecycle here,
// syscalls in syscalls.ts, TCP states in tcp.ts.
import type { TraceEvent } from '../trace/records.js';
import { ensureProc, readProcess } from './fromproc.js';
import type { GraphState, ProcessState } from './store.js';
import { onSyscall } from './syscalls.js';
import { onTcpState } from './tcp.js';

/** Applies one event (its time already set in g.at). */
export function applyEvent(g: GraphState, ev: TraceEvent): void {
  switch (ev.type) {
    case 'fork':
      return onFork(g, ev.tgid, ev.childTgid, ev.childTid, ev.isThread, ev.comm);
    case 'exec': {
      const p = ensureProc(g, ev.tgid);
      if (!p) return;
      p.comm = ev.comm;
      p.exe = ev.filename;
      p.threads = new Set([ev.tgid]);
      // The new image: close-on-exec fds are gone and the address space is new; /proc says which.
      const fresh = readProcess(g, ev.tgid);
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
      g.log({ k: 'process', pid: ev.tgid, change: 'exec' });
      return;
    }
    case 'exit': {
      const p = g.processes.get(ev.tgid);
      if (!p) return;
      if (ev.groupDead) g.removeProcess(p);
      else if (p.threads.delete(ev.tid)) {
        g.log({ k: 'thread', pid: ev.tgid, tid: ev.tid, change: 'exited' });
      }
      return;
    }
    case 'syscall':
      if (ev.ret < 0 && ev.ret > -4096) return; // failed calls change nothing
      return onSyscall(g, ev);
    case 'tcp_state':
      return onTcpState(g, ev);
    case 'stats':
      return;
  }
}

function onFork(g: GraphState, ptgid: number, ctgid: number, ctid: number, isThread: boolean, comm: string): void {
  const parent = ensureProc(g, ptgid);
  if (isThread) {
    if (parent && !parent.threads.has(ctid)) {
      parent.threads.add(ctid);
      g.log({ k: 'thread', pid: ptgid, tid: ctid, change: 'created' });
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
    const fresh = readProcess(g, ctgid);
    if (fresh) Object.assign(child, { fds: fresh.fds, regions: fresh.regions });
  }
  g.processes.set(ctgid, child);
  g.log({ k: 'process', pid: ctgid, change: 'created' });
}
