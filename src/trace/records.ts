// The decoder of the tracer's records (bpf/trace.h, mirrored here field for
// field). They come from native/tracer in batches (the `records` bytes of a
// TracerOutput frame, src/native/tracer.ts), each record as a 4-byte
// little-endian length and the record. A record whose version, type or size
// is not what this file knows is refused and counted, and decoding goes on
// with the next one. RECORD_SIZES is checked against the sizes the tracer
// was compiled with (its hello) before any record is decoded.

export const TR_VERSION = 1;
export const TR_HDR_SIZE = 24;
const PATH_MAX = 256;

export const RecordType = {
  fork: 1,
  exec: 2,
  exit: 3,
  syscall: 4,
  syscallPath: 5,
  tcpState: 6,
} as const;

/** Size of each record type, as bpf/trace.h lays it out. */
export const RECORD_SIZES: Readonly<Record<number, number>> = {
  [RecordType.fork]: TR_HDR_SIZE + 16 + 16,
  [RecordType.exec]: TR_HDR_SIZE + 8 + 16 + PATH_MAX,
  [RecordType.exit]: TR_HDR_SIZE + 8,
  [RecordType.syscall]: TR_HDR_SIZE + 8 + 8 + 48 + 32,
  [RecordType.syscallPath]: TR_HDR_SIZE + 8 + 8 + 48 + 32 + 8 + 2 * PATH_MAX,
  [RecordType.tcpState]: TR_HDR_SIZE + 8 + 8 + 8 + 32,
};

/** x86_64 numbers of the syscalls bpf/trace.bpf.c reports. */
export const SYSCALLS: Readonly<Record<number, string>> = {
  1: 'write',
  2: 'open',
  3: 'close',
  9: 'mmap',
  10: 'mprotect',
  11: 'munmap',
  12: 'brk',
  18: 'pwrite64',
  20: 'writev',
  22: 'pipe',
  25: 'mremap',
  28: 'madvise',
  29: 'shmget',
  30: 'shmat',
  32: 'dup',
  33: 'dup2',
  41: 'socket',
  42: 'connect',
  43: 'accept',
  49: 'bind',
  50: 'listen',
  53: 'socketpair',
  64: 'semget',
  67: 'shmdt',
  68: 'msgget',
  72: 'fcntl',
  77: 'ftruncate',
  82: 'rename',
  83: 'mkdir',
  84: 'rmdir',
  85: 'creat',
  87: 'unlink',
  213: 'epoll_create',
  240: 'mq_open',
  257: 'openat',
  258: 'mkdirat',
  263: 'unlinkat',
  264: 'renameat',
  282: 'signalfd',
  283: 'timerfd_create',
  284: 'eventfd',
  285: 'fallocate',
  288: 'accept4',
  289: 'signalfd4',
  290: 'eventfd2',
  291: 'epoll_create1',
  292: 'dup3',
  293: 'pipe2',
  294: 'inotify_init1',
  296: 'pwritev',
  316: 'renameat2',
  319: 'memfd_create',
  328: 'pwritev2',
  436: 'close_range',
  437: 'openat2',
};

/** Counters slots of the kernel side (enum tr_counter). */
export const COUNTER_NAMES = [
  'ringbufReserveFailures',
  'reserved1',
  'faultMapFailures',
  'filterFailures',
  'socketMapFailures',
  'submitted',
  'wakeups',
  'reserved7',
] as const;

interface Base {
  ts: number; // ns, CLOCK_MONOTONIC
  tgid: number;
  tid: number;
}
export interface ForkEvent extends Base {
  type: 'fork';
  childTgid: number;
  childTid: number;
  isThread: boolean;
  comm: string;
}
export interface ExecEvent extends Base {
  type: 'exec';
  oldTid: number;
  comm: string;
  filename: string;
}
export interface ExitEvent extends Base {
  type: 'exit';
  exitCode: number;
  groupDead: boolean;
}
export interface SyscallEvent extends Base {
  type: 'syscall';
  nr: number;
  name: string;
  ret: number;
  /** Arguments as numbers (addresses and sizes of x86_64 fit a double exactly). */
  args: number[];
  /** Syscall-specific values read at exit (see bpf/trace.h). */
  aux: number[];
  /** Paths (open, rename…) as strings; for connect/bind, see `sockaddr`. */
  paths?: string[];
  sockaddr?: Buffer;
  /** connect, bind, accept: the kernel address of the struct sock (aux[3]), exact, in hex. */
  sock?: string;
}
export interface TcpStateEvent extends Base {
  type: 'tcp_state';
  sk: string; // kernel address of struct sock, hex
  oldState: string;
  newState: string;
  family: number;
  local: string;
  remote: string;
}
/** The tracer's counters (not a kernel record: a TracerStatus frame); tgid/tid: the tracer's pid. */
export interface StatsEvent extends Base {
  type: 'stats';
  delivered: number;
  counters: Record<(typeof COUNTER_NAMES)[number], number>;
}
export type TraceEvent = ForkEvent | ExecEvent | ExitEvent | SyscallEvent | TcpStateEvent | StatsEvent;

export interface RefusalCounts {
  badVersion: number;
  unknownType: number;
  badSize: number;
  badFrame: number;
}

export const TCP_STATES = [
  '?',
  'ESTABLISHED',
  'SYN_SENT',
  'SYN_RECV',
  'FIN_WAIT1',
  'FIN_WAIT2',
  'TIME_WAIT',
  'CLOSE',
  'CLOSE_WAIT',
  'LAST_ACK',
  'LISTEN',
  'CLOSING',
  'NEW_SYN_RECV',
];

function cstr(b: Buffer, off: number, len: number): string {
  const end = b.indexOf(0, off);
  return b.toString('utf8', off, end < 0 || end > off + len ? off + len : end);
}

/** A u64 as a number: exact below 2^53 (addresses, sizes, fds, offsets); no BigInt on the hot path. */
function u64(b: Buffer, off: number): number {
  return b.readUInt32LE(off) + b.readUInt32LE(off + 4) * 4294967296;
}

function s64(b: Buffer, off: number): number {
  return b.readUInt32LE(off) + b.readInt32LE(off + 4) * 4294967296;
}

export function ipString(family: number, bytes: Buffer): string {
  if (family === 2) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  const parts: string[] = [];
  for (let i = 0; i < 16; i += 2) parts.push(bytes.readUInt16BE(i).toString(16));
  return parts.join(':').replace(/(^|:)0(:0)+(:|$)/, '::');
}

/** A struct sockaddr as connect/bind passed it: "unix:/path", "tcp4 1.2.3.4:80"… */
export function sockaddrString(b: Buffer): string {
  if (b.length < 2) return '?';
  const family = b.readUInt16LE(0);
  if (family === 1) {
    const path = b.subarray(2);
    if (path.length > 0 && path[0] === 0) return `unix:@${cstr(path, 1, path.length - 1)}`;
    return `unix:${cstr(path, 0, path.length)}`;
  }
  if (family === 2 && b.length >= 8) return `${ipString(2, b.subarray(4, 8))}:${b.readUInt16BE(2)}`;
  if (family === 10 && b.length >= 24) return `[${ipString(10, b.subarray(8, 24))}]:${b.readUInt16BE(2)}`;
  return `family${family}`;
}

/** Decodes one record; returns the event or the reason it was refused. */
export function decodeRecord(rec: Buffer): TraceEvent | keyof RefusalCounts {
  if (rec.length < TR_HDR_SIZE) return 'badFrame';
  const version = rec.readUInt16LE(0);
  const type = rec.readUInt16LE(2);
  const size = rec.readUInt32LE(4);
  if (version !== TR_VERSION) return 'badVersion';
  const expected = RECORD_SIZES[type];
  if (expected === undefined) return 'unknownType';
  if (size !== expected || rec.length !== expected) return 'badSize';
  const base: Base = { ts: u64(rec, 8), tgid: rec.readUInt32LE(16), tid: rec.readUInt32LE(20) };
  const o = TR_HDR_SIZE;
  switch (type) {
    case RecordType.fork:
      return {
        type: 'fork',
        ...base,
        childTgid: rec.readUInt32LE(o),
        childTid: rec.readUInt32LE(o + 4),
        isThread: rec.readUInt32LE(o + 8) === 1,
        comm: cstr(rec, o + 16, 16),
      };
    case RecordType.exec:
      return { type: 'exec', ...base, oldTid: rec.readUInt32LE(o), comm: cstr(rec, o + 8, 16), filename: cstr(rec, o + 24, PATH_MAX) };
    case RecordType.exit:
      return { type: 'exit', ...base, exitCode: rec.readInt32LE(o), groupDead: rec.readUInt32LE(o + 4) === 1 };
    case RecordType.syscall:
    case RecordType.syscallPath: {
      const nr = rec.readUInt32LE(o);
      const args: number[] = [];
      for (let i = 0; i < 6; i++) args.push(u64(rec, o + 16 + i * 8));
      const aux: number[] = [];
      for (let i = 0; i < 4; i++) aux.push(u64(rec, o + 64 + i * 8));
      const ev: SyscallEvent = {
        type: 'syscall',
        ...base,
        nr,
        name: SYSCALLS[nr] ?? `syscall${nr}`,
        ret: s64(rec, o + 8),
        args,
        aux,
      };
      if ((ev.name === 'connect' || ev.name === 'bind' || ev.name === 'accept' || ev.name === 'accept4') && ev.aux[3] !== 0) {
        ev.sock = rec.readBigUInt64LE(o + 64 + 24).toString(16);
      }
      if (type === RecordType.syscallPath) {
        const p = o + 96;
        const len0 = Math.min(rec.readUInt32LE(p), PATH_MAX);
        const len1 = Math.min(rec.readUInt32LE(p + 4), PATH_MAX);
        if (ev.name === 'connect' || ev.name === 'bind') {
          ev.sockaddr = Buffer.from(rec.subarray(p + 8, p + 8 + len0));
        } else {
          ev.paths = [cstr(rec, p + 8, len0)];
          if (len1 > 0) ev.paths.push(cstr(rec, p + 8 + PATH_MAX, len1));
        }
      }
      return ev;
    }
    case RecordType.tcpState: {
      const family = rec.readUInt16LE(o + 20);
      const sport = rec.readUInt16LE(o + 16);
      const dport = rec.readUInt16LE(o + 18);
      const ip = (off: number): string => ipString(family, rec.subarray(off, off + 16));
      return {
        type: 'tcp_state',
        ...base,
        sk: rec.readBigUInt64LE(o).toString(16),
        oldState: TCP_STATES[rec.readInt32LE(o + 8)] ?? String(rec.readInt32LE(o + 8)),
        newState: TCP_STATES[rec.readInt32LE(o + 12)] ?? String(rec.readInt32LE(o + 12)),
        family,
        local: family === 10 ? `[${ip(o + 24)}]:${sport}` : `${ip(o + 24)}:${sport}`,
        remote: family === 10 ? `[${ip(o + 40)}]:${dport}` : `${ip(o + 40)}:${dport}`,
      };
    }
    default:
      return 'unknownType';
  }
}

/** Counters of the kernel side by name, from the tracer's array (enum tr_counter order). */
export function namedCounters(values: readonly number[]): StatsEvent['counters'] {
  const counters = {} as StatsEvent['counters'];
  COUNTER_NAMES.forEach((n, i) => (counters[n] = values[i] ?? 0));
  return counters;
}

/** Decodes batches of length-prefixed records, counting what it refuses. */
export class RecordStream {
  readonly refused: RefusalCounts = { badVersion: 0, unknownType: 0, badSize: 0, badFrame: 0 };
  decoded = 0;
  /** No record is this long: a length above it is corrupt. */
  static readonly MAX_FRAME = 64 * 1024;

  /**
   * Decodes one batch of whole records. A batch stands alone: a bad length or
   * a record cut short is counted (badFrame) and ends this batch only.
   * `onEvent` gets each event; returns how many records the batch held
   * (decoded or refused).
   */
  pushBatch(batch: Buffer, onEvent: (ev: TraceEvent) => void): number {
    let off = 0;
    let records = 0;
    while (off < batch.length) {
      if (batch.length - off < 4) {
        this.refused.badFrame++;
        break;
      }
      const len = batch.readUInt32LE(off);
      if (len > RecordStream.MAX_FRAME || batch.length - off - 4 < len) {
        this.refused.badFrame++;
        break;
      }
      records++;
      const r = decodeRecord(batch.subarray(off + 4, off + 4 + len));
      off += 4 + len;
      if (typeof r === 'string') this.refused[r]++;
      else {
        this.decoded++;
        onEvent(r);
      }
    }
    return records;
  }
}
