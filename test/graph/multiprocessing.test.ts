// A Python multiprocessing pool with a queue: the workers are children of the
// main process and share the queue's pipe and its semaphore's shared memory.
import { afterEach, describe, expect, it } from 'vitest';
import { cleanupAll, settle, traceCommand } from '../trace/helpers.js';

const SCRIPT = `
import multiprocessing as mp, os, sys
q = None
def init(qq):
    global q
    q = qq
def work(x):
    q.put((os.getpid(), x * x))
    return x
if __name__ == '__main__':
    mp.set_start_method('fork')
    qq = mp.Queue()
    with mp.Pool(2, initializer=init, initargs=(qq,)) as pool:
        pool.map(work, range(8))
        got = [qq.get(timeout=20) for _ in range(8)]
        assert sorted(v for _, v in got) == [x * x for x in range(8)]
        workers = ' '.join(str(c.pid) for c in mp.active_children())
        print('ready', qq._reader.fileno(), qq._writer.fileno(), workers, flush=True)
        sys.stdin.read()
`;

describe('python multiprocessing pool with a queue', () => {
  afterEach(cleanupAll);

  it('has the two workers under the main process, sharing the queue pipe and semaphore', async () => {
    const t = await traceCommand(['python3', '-c', SCRIPT]);
    const m = await t.out.waitFor(/^ready (\d+) (\d+) (\d+) (\d+)$/, 30_000);
    const [rfd, wfd] = [Number(m[1]), Number(m[2])];
    const workers = [Number(m[3]), Number(m[4])];
    await settle(t);
    const g = t.session.graph;
    const main = t.session.rootPid;
    const { nodes, edges } = g.closure();
    for (const w of workers) {
      expect(g.processes.get(w)?.ppid).toBe(main);
      expect(edges).toContainEqual({ from: `process:${main}`, to: `process:${w}`, kind: 'parent-of' });
    }
    // the queue: one pipe, both ends held by main and inherited by both workers
    const pipe = g.processes.get(main)!.fds.get(rfd)!;
    expect(pipe).toMatch(/^pipe:\d+$/);
    expect(g.processes.get(main)!.fds.get(wfd)).toBe(pipe);
    for (const w of workers) expect([...g.processes.get(w)!.fds.values()]).toContain(pipe);
    const owners = edges
      .filter((e) => e.to === pipe && e.kind === 'owns')
      .map((e) => e.from)
      .sort();
    expect(owners).toEqual([main, ...workers].map((p) => `process:${p}`).sort());

    // the queue's lock: a POSIX semaphore in /dev/shm, mapped shared by all three
    const sems = nodes.filter((n) => n.kind === 'file' && /\/dev\/shm\/sem\./.test(n.label));
    expect(sems.length).toBeGreaterThan(0);
    const sharers = (id: string) => new Set(edges.filter((e) => e.to === id && e.kind === 'shares').map((e) => Number(e.from.split(':')[1])));
    expect(sems.some((s) => [main, ...workers].every((p) => sharers(s.id).has(p)))).toBe(true);

    const ds = await t.session.dirtySince(0);
    for (const w of workers) expect(ds.processes).toContainEqual({ pid: w, change: 'created' });
    // python's worker threads (the pool's handler threads) were traced as threads of main
    expect(ds.threads.filter((x) => x.pid === main && x.change === 'created').length).toBeGreaterThanOrEqual(3);
    expect(t.session.stats().lost).toBe(0);
  });
});
