// Loading the tracer's eBPF object through bpftool: load and pin under a
// per-app folder of bpffs, add the app's tgids to the in-kernel filter,
// inspect, unload. Pins a crashed agent left behind are found and removed.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { UnderstudyError } from '../util/errors.js';
import { logger } from '../util/log.js';
import { bpfObject, nativeBinary } from '../util/paths.js';
import { COUNTER_NAMES } from './records.js';

const log = logger('trace');

export const BPFFS_ROOT = '/sys/fs/bpf/understudy';

/** Where the kernel's BTF is; tests point UNDERSTUDY_BTF_PATH at a missing file. */
export function btfPath(): string {
  return process.env.UNDERSTUDY_BTF_PATH ?? '/sys/kernel/btf/vmlinux';
}

export function requireTracingSupport(): void {
  const btf = btfPath();
  if (!existsSync(btf)) {
    throw new UnderstudyError(
      'E_KERNEL_FEATURE',
      `this kernel has no BTF (${btf} is missing), so the tracer's CO-RE eBPF programs cannot be loaded. ` +
        'Run `understudy check` to see every kernel feature Understudy needs; a kernel built with CONFIG_DEBUG_INFO_BTF=y is required.',
    );
  }
  if (!existsSync('/sys/fs/bpf') || !isBpffs('/sys/fs/bpf')) {
    throw new UnderstudyError(
      'E_KERNEL_FEATURE',
      'bpffs is not mounted on /sys/fs/bpf: run `mount -t bpf bpf /sys/fs/bpf` (scripts/setup does it), then `understudy check`.',
    );
  }
  if (!existsSync('/sys/kernel/tracing/events')) {
    throw new UnderstudyError(
      'E_KERNEL_FEATURE',
      'tracefs is not mounted on /sys/kernel/tracing: run `mount -t tracefs tracefs /sys/kernel/tracing`, then `understudy check`.',
    );
  }
}

/** Whether `path` is a mount point of bpffs (per /proc/self/mounts). */
function isBpffs(path: string): boolean {
  try {
    return statSync(path).isDirectory() && existsSync('/proc/self/mounts') && readMounts().some((m) => m.dir === path && m.type === 'bpf');
  } catch {
    return false;
  }
}

function readMounts(): { dir: string; type: string }[] {
  return readFileText('/proc/self/mounts')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      const f = l.split(' ');
      return { dir: f[1] ?? '', type: f[2] ?? '' };
    });
}

function readFileText(p: string): string {
  return readFileSync(p, 'utf8');
}

async function bpftool(args: string[], input?: string): Promise<string> {
  const r = await execa('bpftool', args, { reject: false, input, stdin: input === undefined ? 'ignore' : 'pipe' });
  if (r.exitCode !== 0) {
    const msg = `${r.stderr}\n${r.stdout}`.split('\n').filter((l) => /error|Error|failed|denied/i.test(l)).slice(-3).join('; ');
    throw new UnderstudyError('E_KERNEL_FEATURE', `bpftool ${args.slice(0, 3).join(' ')} failed: ${msg || `exit ${r.exitCode}`}. Run \`understudy check\`.`);
  }
  return r.stdout;
}

async function bpftoolJson<T>(args: string[]): Promise<T> {
  const out = await bpftool(['--json', ...args]);
  return JSON.parse(out === '' ? 'null' : out) as T;
}

/** Program ids that are attached somewhere (links and perf-event attachments). */
async function attachedProgIds(): Promise<Set<number>> {
  const ids = new Set<number>();
  const links = (await bpftoolJson<{ prog_id?: number }[] | null>(['link', 'show'])) ?? [];
  for (const l of links) if (typeof l.prog_id === 'number') ids.add(l.prog_id);
  const perf = (await bpftoolJson<{ prog_id?: number }[] | null>(['perf', 'show'])) ?? [];
  for (const p of perf) if (typeof p.prog_id === 'number') ids.add(p.prog_id);
  return ids;
}

interface ProgInfo {
  id: number;
  name: string;
  type: string;
  pinned?: string[];
  run_cnt?: number;
  run_time_ns?: number;
  recursion_misses?: number;
}

async function pinnedPrograms(): Promise<ProgInfo[]> {
  return (await bpftoolJson<ProgInfo[] | null>(['prog', 'show', '--bpffs'])) ?? [];
}

export interface StaleRemoval {
  appId: string;
  path: string;
  programs: number;
}

/**
 * Finds per-app folders under BPFFS_ROOT whose programs are attached nowhere
 * (their agent and streamer are gone) and removes them. A folder younger than
 * graceMs is left alone: another agent may be between load and attach.
 */
export async function cleanStalePins(opts: { graceMs?: number } = {}): Promise<StaleRemoval[]> {
  if (!existsSync(BPFFS_ROOT)) return [];
  const graceMs = opts.graceMs ?? 10_000;
  const folders = readdirSync(BPFFS_ROOT, { withFileTypes: true }).filter((d) => d.isDirectory());
  if (folders.length === 0) return [];
  const attached = await attachedProgIds();
  const progs = await pinnedPrograms();
  const removed: StaleRemoval[] = [];
  for (const f of folders) {
    const path = join(BPFFS_ROOT, f.name);
    const mine = progs.filter((p) => (p.pinned ?? []).some((pin) => pin.startsWith(path + '/')));
    if (mine.some((p) => attached.has(p.id))) continue;
    let age = Infinity;
    try {
      age = Date.now() - statSync(path).mtimeMs;
    } catch {
      continue;
    }
    if (age < graceMs) continue;
    rmSync(path, { recursive: true, force: true });
    removed.push({ appId: f.name, path, programs: mine.length });
    log.warn({ appId: f.name, path, programs: mine.length }, 'removed stale tracer pins left by an agent that is gone');
  }
  return removed;
}

export function validAppId(appId: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(appId);
}

export interface WriteFaultCount {
  tgid: number;
  /** VMA start, or a page address when the kernel could not resolve the VMA (resolved = false). */
  address: number;
  resolved: boolean;
  count: number;
}

/** The tracer's object, loaded and pinned for one app. */
export class PinnedTracer {
  readonly progsDir: string;
  readonly mapsDir: string;

  private constructor(
    readonly appId: string,
    readonly dir: string,
    readonly staleRemoved: StaleRemoval[],
  ) {
    this.progsDir = join(dir, 'progs');
    this.mapsDir = join(dir, 'maps');
  }

  /** Loads build/bpf/trace.bpf.o with bpftool and pins it under BPFFS_ROOT/<appId>. */
  static async load(appId: string, opts: { staleGraceMs?: number } = {}): Promise<PinnedTracer> {
    if (!validAppId(appId)) {
      throw new UnderstudyError('E_USAGE', `app id "${appId}" must be 1-64 characters of letters, digits, '.', '_' and '-'`);
    }
    requireTracingSupport();
    const obj = bpfObject('trace');
    mkdirSync(BPFFS_ROOT, { recursive: true });
    const staleRemoved = await cleanStalePins({ graceMs: opts.staleGraceMs });
    const dir = join(BPFFS_ROOT, appId);
    if (existsSync(dir)) {
      throw new UnderstudyError(
        'E_CONFIG',
        `tracer pins for app "${appId}" already exist in ${dir} and are in use by a running agent; stop it or choose another app id`,
      );
    }
    mkdirSync(dir);
    const t = new PinnedTracer(appId, dir, staleRemoved);
    try {
      await bpftool(['prog', 'loadall', obj, t.progsDir, 'pinmaps', t.mapsDir]);
    } catch (e) {
      rmSync(dir, { recursive: true, force: true });
      throw e;
    }
    log.info({ appId, dir }, 'tracer loaded and pinned');
    return t;
  }

  /**
   * Adds tgids to the in-kernel filter. The filter is a bitmap the kernel
   * changes with atomic operations at fork and exit; bpftool can only rewrite
   * a whole word (and could erase a bit set at the same moment), so the
   * native helper sets the bits with atomic ors through mmap (and lists the
   * tgids in app_tgids).
   */
  async addTgids(tgids: number[]): Promise<void> {
    if (tgids.length === 0) return;
    const args = ['--pins', this.dir, ...tgids.flatMap((t) => ['--add-tgid', String(t)])];
    const r = await execa(nativeBinary('tracer'), args, { reject: false, stdin: 'ignore' });
    if (r.exitCode !== 0) {
      throw new UnderstudyError(
        'E_NATIVE',
        `could not add ${tgids.join(', ')} to the tracer's filter: ${(r.stderr || r.stdout || `exit ${r.exitCode}`).trim()}`,
      );
    }
  }

  /** Removes the write-fault counts of exited tgids from the kernel's map; returns how many entries went. */
  async forgetFaultTgids(tgids: number[]): Promise<number> {
    let removed = 0;
    for (let i = 0; i < tgids.length; i += 4096) {
      const chunk = tgids.slice(i, i + 4096);
      const args = ['--pins', this.dir, ...chunk.flatMap((t) => ['--forget-tgid', String(t)])];
      const r = await execa(nativeBinary('tracer'), args, { reject: false, stdin: 'ignore' });
      const m = /^removed (\d+)$/m.exec(r.stdout);
      if (r.exitCode !== 0 || !m) {
        throw new UnderstudyError('E_NATIVE', `could not remove the write-fault counts of ${chunk.length} exited processes: ${(r.stderr || r.stdout || `exit ${r.exitCode}`).trim()}`);
      }
      removed += Number(m[1]);
    }
    return removed;
  }

  async filterTgids(): Promise<number[]> {
    const rows = (await bpftoolJson<{ formatted?: { key: number } }[] | null>(['map', 'dump', 'pinned', join(this.mapsDir, 'app_tgids')])) ?? [];
    return rows.map((r) => r.formatted?.key ?? -1).filter((k) => k >= 0);
  }

  /** The kernel-side counters (losses included). */
  async counters(): Promise<Record<(typeof COUNTER_NAMES)[number], number>> {
    // a per-CPU array: one value per CPU, summed
    type Row = { formatted?: { key: number; values?: { cpu: number; value: number }[]; value?: number } };
    const rows = (await bpftoolJson<Row[] | null>(['map', 'dump', 'pinned', join(this.mapsDir, 'counters')])) ?? [];
    const out = {} as Record<(typeof COUNTER_NAMES)[number], number>;
    COUNTER_NAMES.forEach((n) => (out[n] = 0));
    for (const r of rows) {
      const k = r.formatted?.key;
      if (k === undefined || COUNTER_NAMES[k] === undefined) continue;
      out[COUNTER_NAMES[k]] = r.formatted!.values ? r.formatted!.values.reduce((a, v) => a + v.value, 0) : r.formatted!.value ?? 0;
    }
    return out;
  }

  /** Write-fault counts per (tgid, VMA) aggregated in the kernel. */
  async writeFaults(): Promise<WriteFaultCount[]> {
    const rows =
      (await bpftoolJson<{ formatted?: { key: { tgid: number; vm_start: number }; value: number } }[] | null>([
        'map',
        'dump',
        'pinned',
        join(this.mapsDir, 'write_faults'),
      ])) ?? [];
    return rows
      .filter((r) => r.formatted !== undefined)
      .map((r) => {
        const a = r.formatted!.key.vm_start;
        const resolved = a % 2 === 0;
        return { tgid: r.formatted!.key.tgid, address: resolved ? a : a - 1, resolved, count: r.formatted!.value };
      });
  }

  /** The pinned programs as the kernel reports them (bpftool prog show). */
  async programs(): Promise<ProgInfo[]> {
    return (await pinnedPrograms()).filter((p) => (p.pinned ?? []).some((pin) => pin.startsWith(this.progsDir + '/')));
  }

  /** Unpins everything; the kernel frees programs and maps once nothing holds them. */
  unload(): void {
    rmSync(this.dir, { recursive: true, force: true });
    log.info({ appId: this.appId }, 'tracer unpinned');
  }
}

