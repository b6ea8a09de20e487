// Writes at known offsets: the dirty set has exactly those byte ranges.
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cleanupAll, fixture, settle, tempDir, traceCommand } from '../trace/helpers.js';

describe('file writes in the dirty set', () => {
  afterEach(cleanupAll);

  it('reports exactly the written ranges of write, pwrite64, pwritev, writev and O_APPEND', async () => {
    const dir = tempDir('files');
    const file = join(dir, 'data.bin');
    const t = await traceCommand([fixture('trace_write_offsets'), file]);
    await t.out.waitFor(/^ready$/);
    await settle(t);
    const st = statSync(file);
    const ds = await t.session.dirtySince(0);
    const entry = ds.files.find((f) => f.resource === `file:${st.dev}:${st.ino}`);
    expect(entry).toBeDefined();
    expect(entry!.path).toBe(file);
    expect(entry!.ranges).toEqual([
      [0, 10],
      [4096, 4196],
      [10000, 10030],
      [50000, 50012],
    ]);
    expect(st.size).toBe(50012);
    // the fds that wrote it, as graph edges
    const pid = t.session.rootPid;
    const { edges } = t.session.graph.closure();
    expect(edges.find((e) => e.from === `process:${pid}` && e.to === entry!.resource)?.label).toBe('fd 3,4');
    // only this file was written by the program (the loader writes nothing)
    expect(ds.files.map((f) => f.path)).toEqual([file]);
  });
});
