// A shell pipeline: processes, parent-of edges, the pipe both ends own, and
// the file the pipeline wrote in the dirty set.
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cleanupAll, settle, tempDir, traceCommand } from '../trace/helpers.js';

describe('shell pipeline', () => {
  afterEach(cleanupAll);

  it('shows sh -> sleep | cat joined by one pipe, and the written file', async () => {
    const dir = tempDir('pipe');
    const out = join(dir, 'out.txt');
    const t = await traceCommand(['/bin/sh', '-c', `printf hello > ${out}; sleep 30 | cat; true`]);
    const g = t.session.graph;
    const byComm = (c: string) => [...g.processes.values()].find((p) => p.comm === c);
    await t.session.waitFor('sleep and cat', () => byComm('sleep') !== undefined && byComm('cat') !== undefined);
    await settle(t);
    const sh = t.session.rootPid;
    const sleep = byComm('sleep')!;
    const cat = byComm('cat')!;
    expect(sleep.ppid).toBe(sh);
    expect(cat.ppid).toBe(sh);
    const pipe = sleep.fds.get(1)!;
    expect(pipe).toMatch(/^pipe:\d+$/);
    expect(cat.fds.get(0)).toBe(pipe);

    const { nodes, edges } = g.closure();
    expect(nodes.find((n) => n.id === pipe)?.kind).toBe('pipe');
    expect(edges).toContainEqual({ from: `process:${sh}`, to: `process:${sleep.pid}`, kind: 'parent-of' });
    expect(edges).toContainEqual({ from: `process:${sh}`, to: `process:${cat.pid}`, kind: 'parent-of' });
    expect(edges).toContainEqual({ from: `process:${sleep.pid}`, to: pipe, kind: 'owns', label: 'fd 1' });
    expect(edges).toContainEqual({ from: `process:${cat.pid}`, to: pipe, kind: 'owns', label: 'fd 0' });
    // sh closed both ends after forking
    expect([...g.processes.get(sh)!.fds.values()]).not.toContain(pipe);

    const st = statSync(out);
    const ds = await t.session.dirtySince(0);
    expect(ds.files).toContainEqual({ resource: `file:${st.dev}:${st.ino}`, path: out, ranges: [[0, 5]] });
    expect(ds.processes).toContainEqual({ pid: sleep.pid, change: 'created' });
    expect(ds.processes).toContainEqual({ pid: sleep.pid, change: 'exec' });
    expect(ds.fds).toContainEqual({ pid: sleep.pid, fd: 1, change: 'opened', resource: pipe });
  });
});
