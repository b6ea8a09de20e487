// A program forking grandchildren as fast as it can: every process is seen
// (fork and exit), because children join the in-kernel filter at fork.
import { afterEach, describe, expect, it } from 'vitest';
import { cleanupAll, fixture, settle, traceCommand } from './helpers.js';

describe('fast forks', () => {
  afterEach(cleanupAll);

  it('misses none of 40 children and 120 grandchildren', async () => {
    const t = await traceCommand([fixture('trace_forkstorm'), '40', '3']);
    await t.out.waitFor(/^ready$/);
    await settle(t, 300);
    const created = t.out.lines.filter((l) => l.startsWith('pid ')).map((l) => Number(l.slice(4)));
    expect(created).toHaveLength(160);

    const forks = new Map<number, number>();
    for (const e of t.events) if (e.type === 'fork' && !e.isThread) forks.set(e.childTgid, e.tgid);
    const exits = new Set(t.events.filter((e) => e.type === 'exit' && e.groupDead).map((e) => e.tgid));
    const root = t.session.rootPid;
    const missedFork = created.filter((p) => !forks.has(p));
    const missedExit = created.filter((p) => !exits.has(p));
    expect(missedFork).toEqual([]);
    expect(missedExit).toEqual([]);
    // parents are right: 40 children of the root, 120 grandchildren of them
    expect(created.filter((p) => forks.get(p) === root)).toHaveLength(40);
    // the dirty set has all of them created and exited; the graph keeps only the root
    const ds = await t.session.dirtySince(0);
    for (const p of created) {
      expect(ds.processes).toContainEqual({ pid: p, change: 'created' });
      expect(ds.processes).toContainEqual({ pid: p, change: 'exited' });
    }
    expect(t.session.graph.pids()).toEqual([root]);
    // dead processes left the kernel filter
    expect(await t.session.tracer.filterTgids()).toEqual([root]);
    expect(t.session.stats().lost).toBe(0);
  });
});
