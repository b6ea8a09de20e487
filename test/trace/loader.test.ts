// Loading through bpftool: pins per app, inspection, unload, and the cleanup
// of pins a crashed agent left behind.
import { existsSync, readdirSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { BPFFS_ROOT, PinnedTracer } from '../../src/trace/loader.js';
import { Tracer } from '../../src/trace/tracer.js';
import { onCleanup, runCleanups } from '../helpers/cleanup.js';

describe('tracer loader', () => {
  afterEach(runCleanups);

  it('pins programs and maps per app, shows them through bpftool, and unpins them', async () => {
    const pins = await PinnedTracer.load(`loader-${process.pid}`, { staleGraceMs: 60_000 });
    onCleanup(() => pins.unload());
    expect(readdirSync(pins.mapsDir).sort()).toEqual(['app_bits', 'app_socks', 'app_tgids', 'counters', 'events', 'trace_rodata', 'write_faults']);
    const progs = await pins.programs();
    const names = progs.map((p) => p.name);
    expect(progs.length).toBe(readdirSync(pins.progsDir).length);
    expect(progs.length).toBe(3 + 1 + 1 + 1); // sched, page faults, TCP state, ONE sys_exit program for all syscalls
    expect(names).toContain('btf__sched_process_fork');
    expect(names).toContain('btf__sys_exit');
    expect(names.some((n) => n.startsWith('tp__syscalls__'))).toBe(false); // no per-syscall perf tracepoints
    expect(progs.filter((p) => p.type === 'tracing').length).toBe(4); // tp_btf: sched x3 + sys_exit
    expect(progs.filter((p) => p.type === 'tracepoint').length).toBe(2); // page_fault_user, inet_sock_set_state
    expect(readdirSync(pins.progsDir).some((n) => n.includes('raw_syscalls') || n.includes('sys_enter'))).toBe(false);
    await pins.addTgids([process.pid, 1]);
    expect((await pins.filterTgids()).sort((a, b) => a - b)).toEqual([1, process.pid].sort((a, b) => a - b));
    // The filter the programs test: one bit per tgid in app_bits (word tgid/64, bit tgid%64).
    const word = async (k: number) => {
      const r = await execa('bpftool', ['--json', 'map', 'lookup', 'pinned', join(pins.mapsDir, 'app_bits'), 'key', ...le32(k)]);
      return BigInt(JSON.parse(r.stdout).formatted.value);
    };
    expect(await word(0)).toBe(1n << 1n); // tgid 1 alone in word 0
    const w = await word(Math.floor(process.pid / 64));
    expect((w >> BigInt(process.pid % 64)) & 1n).toBe(1n);
    // out of the kernel's pid range: refused with the tgid named, nothing half-done
    await expect(pins.addTgids([1 << 22])).rejects.toThrow(/tgid 4194304 out of range/);
    expect((await pins.filterTgids()).length).toBe(2);
    expect((await pins.counters()).ringbufReserveFailures).toBe(0);
    pins.unload();
    expect(existsSync(pins.dir)).toBe(false);
  });

  it('removes pins left by a crashed agent on the next start, and keeps those in use', async () => {
    // A "crashed" agent: loaded and pinned, its streamer gone (nothing attached).
    const stale = await PinnedTracer.load(`crashed-${process.pid}`, { staleGraceMs: 60_000 });
    onCleanup(() => stale.unload());
    // A live one: attached by its streamer.
    const live = await Tracer.start({ appId: `live-${process.pid}`, onEvent: () => {}, staleGraceMs: 60_000 });
    onCleanup(() => live.stop());
    expect(existsSync(stale.dir)).toBe(true);

    // It crashed a minute ago (older than the grace period that protects an agent between load and attach).
    const ago = new Date(Date.now() - 60_000);
    utimesSync(stale.dir, ago, ago);
    const next = await Tracer.start({ appId: `next-${process.pid}`, onEvent: () => {} });
    onCleanup(() => next.stop());
    expect(next.pins.staleRemoved.map((r) => r.appId)).toContain(`crashed-${process.pid}`);
    expect(next.pins.staleRemoved.find((r) => r.appId === `crashed-${process.pid}`)!.programs).toBe(6);
    expect(existsSync(stale.dir)).toBe(false);
    expect(existsSync(live.pins.dir)).toBe(true);
    expect(readdirSync(BPFFS_ROOT)).toContain(`live-${process.pid}`);
  });
});

function le32(n: number): string[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff].map(String);
}
