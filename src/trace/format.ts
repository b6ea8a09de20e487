// Trace events as the CLI prints them: one JSON object per line, or one
// readable line.
import { sockaddrString, type TraceEvent } from './records.js';

export function eventJson(ev: TraceEvent): Record<string, unknown> {
  if (ev.type === 'syscall') {
    const { sockaddr, ...rest } = ev;
    return sockaddr ? { ...rest, sockaddr: sockaddrString(sockaddr) } : rest;
  }
  return { ...ev };
}

function h(n: number): string {
  return '0x' + n.toString(16);
}

export function eventLine(ev: TraceEvent): string {
  const who = `${ev.tgid}/${ev.tid}`;
  switch (ev.type) {
    case 'fork':
      return `${who} ${ev.isThread ? 'clone thread' : 'fork'} -> ${ev.childTgid}/${ev.childTid} ${ev.comm}`;
    case 'exec':
      return `${who} exec ${ev.filename} (${ev.comm})`;
    case 'exit':
      return `${who} exit ${ev.groupDead ? 'process' : 'thread'} status ${ev.exitCode}`;
    case 'tcp_state':
      return `${who} tcp ${ev.local} -> ${ev.remote} ${ev.oldState} -> ${ev.newState}`;
    case 'stats':
      return `stats: delivered ${ev.delivered}, lost ${ev.counters.ringbufReserveFailures}`;
    case 'syscall': {
      const a = ev.args;
      let detail: string;
      switch (ev.name) {
        case 'mmap':
          detail = `${h(ev.ret)} len ${a[1]} ${prot(a[2]!)} flags ${h(a[3]!)}`;
          break;
        case 'mprotect':
          detail = `${h(a[0]!)} len ${a[1]} ${prot(a[2]!)}`;
          break;
        case 'munmap':
          detail = `${h(a[0]!)} len ${a[1]}`;
          break;
        case 'madvise':
          detail = `${h(a[0]!)} len ${a[1]} advice ${a[2]}`;
          break;
        case 'write':
        case 'writev':
          detail = `fd ${a[0]} [${ev.aux[3]! - ev.ret}, ${ev.aux[3]}) inode ${ev.aux[0]}`;
          break;
        case 'pwrite64':
        case 'pwritev':
        case 'pwritev2':
          detail = `fd ${a[0]} [${a[3]}, ${a[3]! + ev.ret}) inode ${ev.aux[0]}`;
          break;
        case 'pipe':
        case 'pipe2':
        case 'socketpair':
          detail = `fds ${ev.aux[0]},${ev.aux[1]}`;
          break;
        default:
          detail = ev.paths ? ev.paths.join(' -> ') : ev.sockaddr ? sockaddrString(ev.sockaddr) : a.slice(0, ARGC[ev.name] ?? 3).join(', ');
      }
      return `${who} ${ev.name}(${detail}) = ${ev.ret > 0xffff ? h(ev.ret) : ev.ret}`;
    }
  }
}

/** How many arguments a syscall has that mean something to a reader (the rest are left over in registers). */
const ARGC: Record<string, number> = {
  close: 1,
  dup: 1,
  dup2: 2,
  dup3: 3,
  fcntl: 3,
  brk: 1,
  listen: 2,
  socket: 3,
  eventfd: 1,
  eventfd2: 2,
  epoll_create: 1,
  epoll_create1: 1,
  timerfd_create: 2,
  signalfd: 3,
  signalfd4: 4,
  inotify_init: 0,
  inotify_init1: 1,
  ftruncate: 2,
  fallocate: 4,
  shmget: 3,
  shmat: 3,
  shmdt: 1,
  msgget: 2,
  semget: 3,
  mremap: 5,
  accept: 1,
  accept4: 1,
};

function prot(p: number): string {
  return (p & 1 ? 'r' : '-') + (p & 2 ? 'w' : '-') + (p & 4 ? 'x' : '-');
}
