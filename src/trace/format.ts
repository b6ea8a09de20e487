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
        case 'munmap':
        case 'mprotect':
        case 'madvise':
          detail = `${h(ev.name === 'mmap' ? ev.ret : a[0]!)} len ${a[1]}${ev.name === 'munmap' ? '' : ` prot/flags ${a[2]}`}`;
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
          detail = ev.paths ? ev.paths.join(' -> ') : ev.sockaddr ? sockaddrString(ev.sockaddr) : `${a.slice(0, 3).join(', ')}`;
      }
      return `${who} ${ev.name}(${detail}) = ${ev.ret > 0xffff ? h(ev.ret) : ev.ret}`;
    }
  }
}
