// Human and JSON views of an image (like CRIU's crit): epochs, processes,
// threads with their registers, regions, fds.
import { understudy } from '../gen/proto.js';
import { listEpochs, processesOf, readEpochMeta, runsOf, vmasOf, type EpochMeta, type ProcessMeta } from './store.js';

const REG_NAMES = [
  'r15',
  'r14',
  'r13',
  'r12',
  'rbp',
  'rbx',
  'r11',
  'r10',
  'r9',
  'r8',
  'rax',
  'rcx',
  'rdx',
  'rsi',
  'rdi',
  'orig_rax',
  'rip',
  'cs',
  'eflags',
  'rsp',
  'ss',
  'fs_base',
  'gs_base',
  'ds',
  'es',
  'fs',
  'gs',
] as const;

/** x86_64 struct user_regs_struct as named registers (hex strings). */
export function decodeRegs(raw: Uint8Array): Record<string, string> {
  const b = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  const out: Record<string, string> = {};
  REG_NAMES.forEach((n, i) => {
    if ((i + 1) * 8 <= b.length) out[n] = '0x' + b.readBigUInt64LE(i * 8).toString(16);
  });
  return out;
}

function pagesOf(p: ProcessMeta): number {
  return runsOf(p).reduce((s, r) => s + r.npages, 0);
}

function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}

/** JSON-friendly view of one epoch's metadata (raw register/xstate bytes summarised). */
export function epochJson(meta: EpochMeta, withPages: boolean): unknown {
  const obj = understudy.v1.EpochMeta.toObject(meta, { longs: Number, enums: String, bytes: String, defaults: true }) as Record<string, unknown>;
  const procs = obj.processes as Record<string, unknown>[];
  processesOf(meta).forEach((p, i) => {
    const po = procs[i]!;
    po.auxv = `${p.auxv.length} bytes`;
    po.dataPages = pagesOf(p);
    if (!withPages) po.pages = `${runsOf(p).length} runs`;
    else po.pages = runsOf(p).map((r) => ({ vaddr: '0x' + Number(r.vaddr).toString(16), npages: r.npages, offset: Number(r.offset) }));
    (po.threads as Record<string, unknown>[]).forEach((t, k) => {
      const th = p.threads[k]!;
      t.regs = decodeRegs(th.regs!);
      t.xstate = `${th.xstate!.length} bytes`;
      if (th.sched) (t.sched as Record<string, unknown>).cpus = cpuList(th.sched.cpus ?? new Uint8Array());
    });
  });
  return obj;
}

/** The CPUs of an affinity mask (bit n of byte n/8 = CPU n). */
function cpuList(mask: Uint8Array): number[] {
  const cpus: number[] = [];
  mask.forEach((b, i) => {
    for (let k = 0; k < 8; k++) if (b & (1 << k)) cpus.push(i * 8 + k);
  });
  return cpus;
}

const POLICIES: Record<number, string> = { 0: 'OTHER', 1: 'FIFO', 2: 'RR', 3: 'BATCH', 5: 'IDLE' };

/** "sched RR 2 reset-on-fork nice 0 cpus 0,1" */
function schedText(sc: understudy.v1.ISched): string {
  const pol = POLICIES[sc.policy ?? 0] ?? `policy ${sc.policy}`;
  const prio = sc.policy === 1 || sc.policy === 2 ? ` ${sc.priority}` : '';
  return `sched ${pol}${prio}${sc.resetOnFork ? ' reset-on-fork' : ''} nice ${sc.nice ?? 0} cpus ${cpuList(sc.cpus ?? new Uint8Array()).join(',')}`;
}

function secs(ns: unknown): string {
  return `${(Number(ns ?? 0) / 1e9).toFixed(6)} s`;
}

const CLOCKS: Record<number, string> = {
  0: 'REALTIME',
  1: 'MONOTONIC',
  2: 'PROCESS_CPUTIME',
  3: 'THREAD_CPUTIME',
  7: 'BOOTTIME',
  8: 'REALTIME_ALARM',
  9: 'BOOTTIME_ALARM',
  [-6]: 'PROCESS_CPUTIME',
  [-2]: 'THREAD_CPUTIME',
};
const NOTIFY: Record<number, string> = { 0: 'SIGEV_SIGNAL', 1: 'SIGEV_NONE', 2: 'SIGEV_THREAD', 4: 'SIGEV_THREAD_ID' };

/** The timers of a process, one line each (empty when it has none). */
export function timerLines(p: ProcessMeta): string[] {
  const out: string[] = [];
  for (const it of p.itimers ?? []) {
    const which = understudy.v1.ITimer.Which[it.which ?? 0];
    const left = Number(it.valueNs ?? 0) === 0 ? 'expired, SIGALRM pending' : `${secs(it.valueNs)} left`;
    out.push(`    itimer ${which}: ${left}, interval ${secs(it.intervalNs)}`);
  }
  for (const t of [...(p.posixTimers ?? [])].sort((a, b) => (a.id ?? 0) - (b.id ?? 0))) {
    const clock = CLOCKS[t.clockId ?? 0] ?? `clock ${t.clockId}`;
    const n = t.notify ?? 0;
    const notify = n & 4 ? `${NOTIFY[4]} tid ${t.targetTid} (ns ${t.nsTargetTid})` : (NOTIFY[n] ?? `notify ${n}`);
    const sig = n === 1 ? '' : ` signal ${t.signo} sival 0x${hex64(t.sival)}`;
    const left = Number(t.valueNs ?? 0) === 0 ? 'disarmed' : `${secs(t.valueNs)} left, interval ${secs(t.intervalNs)}`;
    out.push(`    posix timer ${t.id}: ${clock} ${notify}${sig}, ${left}, overrun ${t.overrun ?? 0}`);
  }
  return out;
}

/** A uint64 field (number or Long) in hex, exact beyond 2^53. */
function hex64(v: unknown): string {
  if (v === null || v === undefined) return '0';
  return BigInt(typeof v === 'number' ? v : String(v)).toString(16);
}

/** One file lock as `understudy image show` prints it, e.g. "POSIX write bytes 0-99 pid 812 dev 254:0 ino 4711". */
export function lockText(l: understudy.v1.IFileLock): string {
  const kind = understudy.v1.FileLock.Kind[l.kind ?? 0] ?? String(l.kind);
  const flock = l.kind === understudy.v1.FileLock.Kind.FLOCK;
  const mode = flock ? (l.write ? 'LOCK_EX' : 'LOCK_SH') : l.write ? 'write' : 'read';
  const end = Number(l.end ?? 0);
  const range = flock ? 'whole file' : `bytes ${Number(l.start ?? 0)}-${end < 0 ? 'EOF' : end}`;
  const dev = BigInt(String(l.dev ?? 0));
  // glibc's makedev: major in bits 8-19 and 32-43, minor in bits 0-7 and 20-31
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & 0xfffff000n);
  const minor = (dev & 0xffn) | ((dev >> 12n) & 0xfff00n);
  return `${kind} ${mode} ${range} pid ${l.pid ?? 0} dev ${major}:${minor} ino ${Number(l.ino ?? 0)}`;
}

export function showImage(dir: string, opts: { epoch?: number; json: boolean; pages?: boolean }): string {
  const entries = listEpochs(dir).filter((e) => opts.epoch === undefined || e.epoch === opts.epoch);
  const loaded = entries.map((e) => ({ e, m: readEpochMeta(e.path) }));
  if (opts.json) {
    return JSON.stringify({ dir, epochs: loaded.map(({ e, m }) => ({ name: e.name, ...(epochJson(m, opts.pages ?? false) as object) })) }, null, 2);
  }
  const lines: string[] = [];
  const first = loaded[0]?.m;
  if (first) lines.push(`image ${dir}  id ${first.imageId}  kernel ${first.kernelRelease}  xcr0 0x${Number(first.xcr0).toString(16)}`);
  const detail = opts.epoch !== undefined || loaded.length === 1;
  for (const { e, m } of loaded) {
    const when = new Date(Number(m.timeUnixNs) / 1e6).toISOString();
    const procs = processesOf(m);
    const pages = procs.reduce((s, p) => s + pagesOf(p), 0);
    lines.push(
      `${e.name}  ${m.full ? 'full ' : `delta over ${m.parentEpoch}`}  ${when}  pause ${(Number(m.pauseNs) / 1e6).toFixed(2)} ms  ` +
        `${pages} pages (${mib(Number(m.pagesBytes))})  ${procs.length} process(es)`,
    );
    for (const p of procs) {
      const changes = p.vmaChanges.length ? `  map changes ${p.vmaChanges.length}` : '';
      const nt = (p.itimers?.length ?? 0) + (p.posixTimers?.length ?? 0);
      const timers = nt ? `  timers ${nt}` : '';
      lines.push(
        `  pid ${p.pid} (${p.comm}) ns-pid ${p.nsPid} ppid ${p.ppid} pgid ${p.pgid} sid ${p.sid}  threads ${p.threads.length}  ` +
          `regions ${p.vmas.length}  fds ${p.fds.length}${timers}  pages ${pagesOf(p)}${changes}${p.newProcess ? '  NEW' : ''}`,
      );
      if (!detail) continue;
      lines.push(`    exe ${p.exe?.path ?? '?'}  cwd ${p.cwd}  root ${p.root}  umask 0${p.umask.toString(8)}  brk 0x${Number(p.mm?.brk ?? 0).toString(16)}`);
      for (const t of p.threads) {
        const r = decodeRegs(t.regs!);
        const sys = t.inSyscall ? `  in syscall ${Number(t.syscallNr)}${Number(t.restartCode) ? ` restart ${Number(t.restartCode)}` : ''}` : '';
        lines.push(
          `    thread ${t.tid} (${t.comm}) rip ${r.rip} rsp ${r.rsp} fs_base ${r.fs_base}  sigmask 0x${Number(t.sigmask).toString(16)}` +
            `${t.rseq ? `  rseq 0x${Number(t.rseq.abiPointer).toString(16)}` : ''}${sys}${t.sched ? `  ${schedText(t.sched)}` : ''}`,
        );
      }
      lines.push(...timerLines(p));
      for (const s of p.sigactions) {
        const h = Number(s.handler);
        lines.push(`    signal ${s.signo}: ${h === 0 ? 'default' : h === 1 ? 'ignored' : '0x' + h.toString(16)} flags 0x${Number(s.flags).toString(16)}`);
      }
      for (const v of vmasOf(p)) {
        const prot = `${v.prot & 1 ? 'r' : '-'}${v.prot & 2 ? 'w' : '-'}${v.prot & 4 ? 'x' : '-'}${v.shared ? 's' : 'p'}`;
        const id = v.file?.buildId ? ` build-id ${v.file.buildId}` : '';
        lines.push(
          `    ${Number(v.start).toString(16).padStart(12, '0')}-${Number(v.end).toString(16).padStart(12, '0')} ${prot} ` +
            `${understudy.v1.Vma.Kind[v.kind]}${v.tracked ? ' tracked' : ''} ${v.name}${id}`,
        );
      }
      for (const f of p.fds) {
        const ofd = Number(f.ofdId ?? 0);
        const shared = ofd && ofd !== p.pid * 2 ** 32 + (f.fd ?? 0) ? ` dup of pid ${Math.floor(ofd / 2 ** 32)} fd ${ofd % 2 ** 32}` : '';
        let extra = '';
        if (f.pipe) {
          extra = ` ${f.pipe.writeEnd ? 'write' : 'read'} end`;
          if (f.pipe.hasState) extra += ` size ${f.pipe.size} unread ${f.pipe.data?.length ?? 0} B`;
        } else if (f.eventfd) {
          extra = ` count ${Number(f.eventfd.count)}${f.eventfd.semaphore ? ' semaphore' : ''}`;
        } else if (f.epoll) {
          extra = ` watches ${(f.epoll.targets ?? []).map((t) => `fd ${t.tfd} events 0x${(t.events ?? 0).toString(16)} data 0x${hex64(t.data)}`).join(', ') || 'nothing'}`;
        }
        lines.push(`    fd ${f.fd} ${understudy.v1.Fd.Kind[f.kind!]} ${f.path} flags 0${(f.flags ?? 0).toString(8)} pos ${Number(f.pos)}${shared}${extra}`);
        for (const l of f.locks ?? []) lines.push(`      lock ${lockText(l)}`);
      }
    }
  }
  return lines.join('\n');
}
