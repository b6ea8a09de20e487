// What the tracer needs from the kernel before it starts, and the clean-up
// of pins that versions before the long-lived tracer left in bpffs. The
// tracer itself (native/tracer, src/native/tracer.ts) pins nothing: its
// programs and maps live as long as its process.
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { UnderstudyError } from '../util/errors.js';
import { logger } from '../util/log.js';

const log = logger('trace');

/** Where versions before the long-lived tracer pinned each app's programs and maps. */
export const LEGACY_BPFFS_ROOT = '/sys/fs/bpf/understudy';

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
  if (!existsSync('/sys/kernel/tracing/events')) {
    throw new UnderstudyError(
      'E_KERNEL_FEATURE',
      'tracefs is not mounted on /sys/kernel/tracing: run `mount -t tracefs tracefs /sys/kernel/tracing`, then `understudy check`.',
    );
  }
}

export interface StaleRemoval {
  appId: string;
  path: string;
  programs: number;
}

async function bpftoolJson<T>(args: string[]): Promise<T> {
  const r = await execa('bpftool', ['--json', ...args], { stdin: 'ignore' });
  return JSON.parse(r.stdout === '' ? 'null' : r.stdout) as T;
}

/**
 * Removes per-app folders that an agent of an earlier version left under
 * LEGACY_BPFFS_ROOT when it crashed: their programs are attached nowhere
 * (its streamer is gone too). A folder whose programs are attached (an old
 * agent still running) or younger than graceMs (an old agent between load
 * and attach) is left alone. Costs a stat when the folder does not exist
 * (every host that never ran an earlier version) and a readdir when it is
 * empty; the folder itself stays (an old agent may be about to use it).
 */
export async function removeLegacyPins(opts: { graceMs?: number } = {}): Promise<StaleRemoval[]> {
  if (!existsSync(LEGACY_BPFFS_ROOT)) return [];
  const graceMs = opts.graceMs ?? 10_000;
  const folders = readdirSync(LEGACY_BPFFS_ROOT, { withFileTypes: true }).filter((d) => d.isDirectory());
  if (folders.length === 0) return [];
  let attached: Set<number>;
  let progs: { id: number; pinned?: string[] }[];
  try {
    attached = new Set<number>();
    for (const l of (await bpftoolJson<{ prog_id?: number }[] | null>(['link', 'show'])) ?? []) if (typeof l.prog_id === 'number') attached.add(l.prog_id);
    for (const p of (await bpftoolJson<{ prog_id?: number }[] | null>(['perf', 'show'])) ?? []) if (typeof p.prog_id === 'number') attached.add(p.prog_id);
    progs = (await bpftoolJson<{ id: number; pinned?: string[] }[] | null>(['prog', 'show', '--bpffs'])) ?? [];
  } catch (e) {
    log.warn({ err: e, path: LEGACY_BPFFS_ROOT }, 'could not inspect pins left by an earlier version (is bpftool installed?); left in place');
    return [];
  }
  const removed: StaleRemoval[] = [];
  for (const f of folders) {
    const path = join(LEGACY_BPFFS_ROOT, f.name);
    const mine = progs.filter((p) => (p.pinned ?? []).some((pin) => pin.startsWith(path + '/')));
    if (mine.some((p) => attached.has(p.id))) continue;
    let age: number;
    try {
      age = Date.now() - statSync(path).mtimeMs;
    } catch {
      continue;
    }
    if (age < graceMs) continue;
    rmSync(path, { recursive: true, force: true });
    removed.push({ appId: f.name, path, programs: mine.length });
    log.warn({ appId: f.name, path, programs: mine.length }, 'removed tracer pins left by a crashed agent of an earlier version');
  }
  return removed;
}
