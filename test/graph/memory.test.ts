// A program that maps, protects and unmaps memory: the graph's regions and the
// dirty set follow the exact page ranges, and write faults are counted per region.
import { afterEach, describe, expect, it } from 'vitest';
import { AppGraph } from '../../src/graph/graph.js';
import { readMaps } from '../../src/proc/procfs.js';
import { cleanupAll, fixture, settle, spawnOutside, traceCommand } from '../trace/helpers.js';

const PG = 4096;

describe('memory regions from mmap/mprotect/munmap events', () => {
  afterEach(cleanupAll);

  it('has the split regions, the unmapped hole, and 4 write faults on the written region', async () => {
    const t = await traceCommand([fixture('trace_mm')]);
    const a = parseInt((await t.out.waitFor(/^ready 0x([0-9a-f]+)/))[1]!, 16);
    await settle(t);
    const pid = t.session.rootPid;
    const p = t.session.graph.processes.get(pid)!;
    const at = (addr: number) => p.regions.find((r) => addr >= r.start && addr < r.end);

    expect(at(a)).toMatchObject({ start: a, end: a + 4 * PG, perms: 'rw-p' });
    expect(at(a + 4 * PG)).toMatchObject({ start: a + 4 * PG, end: a + 8 * PG, perms: 'r--p' });
    expect(at(a + 8 * PG)).toMatchObject({ start: a + 8 * PG, end: a + 12 * PG, perms: 'rw-p' });
    expect(at(a + 12 * PG)).toBeUndefined();
    expect(at(a + 15 * PG)).toBeUndefined();

    // the same as nodes and edges
    const { nodes, edges } = t.session.graph.closure();
    const rid = `region:${pid}:0x${(a + 4 * PG).toString(16)}`;
    expect(nodes.find((n) => n.id === rid)).toMatchObject({ kind: 'region', attrs: { perms: 'r--p', end: a + 8 * PG } });
    expect(edges).toContainEqual({ from: `process:${pid}`, to: rid, kind: 'maps' });

    const ds = await t.session.dirtySince(0);
    const mine = ds.regions.filter((r) => r.pid === pid && r.start >= a - 64 * PG && r.end <= a + 16 * PG);
    expect(mine).toContainEqual({ pid, start: a, end: a + 16 * PG, change: 'mapped' });
    expect(mine).toContainEqual({ pid, start: a + 4 * PG, end: a + 8 * PG, change: 'protected' });
    expect(mine).toContainEqual({ pid, start: a + 12 * PG, end: a + 16 * PG, change: 'unmapped' });
    const written = ds.regions.filter((r) => r.pid === pid && r.change === 'written' && r.start <= a && r.end > a);
    expect(written).toHaveLength(1);
    expect(written[0]!.writeFaults).toBe(4);

    // The model agrees with the kernel on these pages.
    const kernel = readMaps(pid).find((m) => a + 4 * PG >= m.start && a + 4 * PG < m.end)!;
    expect([kernel.start, kernel.end, kernel.perms]).toEqual([a + 4 * PG, a + 8 * PG, 'r--p']);

    // A new epoch: nothing of this happened since it.
    const n = t.session.graph.markEpoch();
    const after = await t.session.dirtySince(n);
    expect(after.regions.filter((r) => r.pid === pid)).toEqual([]);
  });

  it("drops the kernel's write-fault entries of processes that exit, and keeps those of the living", async () => {
    // 20 children each write 8 pages of a fresh mapping and wait; then they exit
    const app = `
import mmap, os, sys
kids = []
for i in range(20):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        m = mmap.mmap(-1, 8 * 4096)
        for p in range(8): m[p * 4096] = 1
        os.write(1, b'child %d\\n' % os.getpid())
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    kids.append((pid, w))
m = mmap.mmap(-1, 4 * 4096)
for p in range(4): m[p * 4096] = 1
sys.stdin.readline()
for pid, w in kids: os.close(w)
for pid, w in kids: os.waitpid(pid, 0)
print('reaped', flush=True)
sys.stdin.readline()
`;
    const t = await traceCommand(['python3', '-c', app]);
    const kidLines = () => t.out.lines.filter((l) => /^child \d+$/.test(l));
    for (let i = 0; kidLines().length < 20 && i < 500; i++) await new Promise((r) => setTimeout(r, 20));
    const kids = new Set(kidLines().map((l) => Number(l.slice(6))));
    expect(kids.size).toBe(20);
    await settle(t);
    const pid = t.session.rootPid;
    const tracer = t.session.tracer;
    const before = await tracer.writeFaults();
    expect(new Set(before.filter((f) => kids.has(f.tgid)).map((f) => f.tgid)).size).toBe(20);
    expect(before.some((f) => f.tgid === pid)).toBe(true);

    t.session.held!.child.stdin!.write('\n');
    await t.out.waitFor(/^reaped/);
    const end = Date.now() + 10_000;
    let left = before;
    while (Date.now() < end) {
      left = await tracer.writeFaults();
      if (!left.some((f) => kids.has(f.tgid))) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(left.filter((f) => kids.has(f.tgid))).toEqual([]);
    // the living root keeps every entry it had (it may have faulted more since: reaping, printing)
    const rootLeft = new Map(left.filter((f) => f.tgid === pid).map((f) => [f.address, f.count]));
    const rootBefore = before.filter((f) => f.tgid === pid);
    expect(rootBefore.length).toBeGreaterThan(0);
    for (const f of rootBefore) expect(rootLeft.get(f.address) ?? 0).toBeGreaterThanOrEqual(f.count);
    expect(t.session.tracer.stats().faultMapFailures).toBe(0);
  });

  it('write-fault counts of processes the graph does not hold (gone, or not known yet) are not logged', async () => {
    const { child } = spawnOutside(['sleep', '30']);
    const pid = child.pid!;
    await new Promise((r) => setTimeout(r, 100)); // exec'd
    const g = new AppGraph();
    g.seedFromProc([pid]);
    const a = g.processes.get(pid)!.regions[0]!.start;
    g.applyWriteFaults([
      { tgid: pid, address: a, resolved: true, count: 3 },
      { tgid: 4_000_000, address: a, resolved: true, count: 5 }, // no such process in the graph
    ]);
    const written = () => g.dirtySince(0).regions.filter((r) => r.change === 'written');
    expect(written()).toEqual([expect.objectContaining({ pid, start: a, writeFaults: 3 })]);
    // gone: later counts of its (not yet removed) kernel entries log nothing
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    g.reconcile();
    expect(g.processes.has(pid)).toBe(false);
    g.applyWriteFaults([{ tgid: pid, address: a, resolved: true, count: 9 }]);
    expect(written()).toHaveLength(1);
  });

  it('reconciliation with /proc repairs and counts drift', async () => {
    const t = await traceCommand([fixture('trace_mm')]);
    const a = parseInt((await t.out.waitFor(/^ready 0x([0-9a-f]+)/))[1]!, 16);
    await settle(t);
    const g = t.session.graph;
    const p = g.processes.get(t.session.rootPid)!;
    g.reconcile(); // settle whatever the loader's early mappings left (stack growth…)
    // drift: forget a region and an fd, invent a thread
    p.regions = p.regions.filter((r) => r.start !== a + 4 * PG);
    p.fds.delete(0);
    p.threads.add(999_999);
    const rep = g.reconcile();
    expect(rep.regions).toBe(1);
    expect(rep.fds).toBe(1);
    expect(rep.threads).toBe(1);
    expect(rep.total).toBe(3);
    expect(p.regions.find((r) => r.start === a + 4 * PG)?.perms).toBe('r--p');
    expect(g.repairs.total).toBeGreaterThanOrEqual(3);
    expect(g.reconcile().total).toBe(0);
  });

  it('reconciliation removes a process whose exit it never saw, with its fds closed as an exit event would', async () => {
    const { child } = spawnOutside(['sleep', '30']);
    const pid = child.pid!;
    await new Promise((r) => setTimeout(r, 100)); // exec'd
    const g = new AppGraph(); // no tracer: the exit event never comes
    g.seedFromProc([pid]);
    const fds = [...g.processes.get(pid)!.fds.keys()].sort((x, y) => x - y);
    expect(fds.slice(0, 3)).toEqual([0, 1, 2]);
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await gone;
    const rep = g.reconcile();
    expect(rep).toMatchObject({ processes: 1, threads: 0, fds: 0, regions: 0, total: 1 });
    expect(g.processes.has(pid)).toBe(false);
    const ds = g.dirtySince(0);
    expect(ds.processes).toEqual([{ pid, change: 'exited' }]);
    expect(
      ds.fds
        .filter((f) => f.pid === pid && f.change === 'closed')
        .map((f) => f.fd)
        .sort((x, y) => x - y),
    ).toEqual(fds);
  });

  it('a session reconciles periodically on its own', async () => {
    const t = await traceCommand([fixture('trace_mm')], { reconcileMs: 100 });
    await t.out.waitFor(/^ready/);
    await settle(t, 300);
    const g = t.session.graph;
    const before = g.repairs.fds;
    g.processes.get(t.session.rootPid)!.fds.delete(1); // drift
    await t.session.waitFor('the periodic reconciliation', () => g.repairs.fds === before + 1, 3000);
    expect(g.processes.get(t.session.rootPid)!.fds.has(1)).toBe(true);
  });
});
