// Breadth: a process tree with threads; threads and processes born between
// barriers are seized as they appear and captured at the barrier that finds
// them; thread state (registers, restart codes, rseq, sigmask) is recorded.
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineClient } from '../../src/engine/client.js';
import { memoryDigest, processesOf, readEpochMeta, reconstruct } from '../../src/image/store.js';
import { decodeRegs } from '../../src/image/show.js';
import { childrenOf, procState, runCleanups, startFixture, tmp } from './helpers.js';

afterAll(runCleanups);

describe('process trees and threads', () => {
  it('seizes the tree, then new threads and forked children, and stays exact for all of them', async () => {
    const fx = await startFixture({ mb: 4, threads: 2, children: 2 });
    const kids = childrenOf(fx.pid);
    expect(kids).toHaveLength(2);
    const engine = EngineClient.start();
    try {
      const a = await engine.attach(fx.pid, { trackDirty: true });
      expect(a.pids.sort()).toEqual([fx.pid, ...kids].sort());
      expect(a.threads).toBe(5);
      const dir = join(tmp('img'), 'chain');
      const e0 = await engine.checkpoint({ imageDir: dir });
      expect(e0.processes).toBe(3);
      const m0 = readEpochMeta(e0.epochDir);
      const parent = processesOf(m0).find((p) => p.pid === fx.pid)!;
      expect(parent.threads).toHaveLength(3);
      for (const k of kids) expect(processesOf(m0).find((p) => p.pid === k)!.ppid).toBe(fx.pid);
      // the sleeping threads sit in clock_nanosleep with a restart code
      const sleepers = parent.threads.filter((t) => t.tid !== fx.pid);
      for (const t of sleepers) {
        expect(t.inSyscall).toBe(true);
        expect(Number(t.syscallNr)).toBe(230); // clock_nanosleep
        expect(Number(t.restartCode)).toBe(-516); // ERESTART_RESTARTBLOCK
        expect(t.rseq?.signature).toBe(0x53053053);
        expect(Number(t.clearTid)).toBeGreaterThan(0);
        expect(decodeRegs(t.regs!).fs_base).not.toBe('0x0');
        expect(t.xstate!.length).toBeGreaterThanOrEqual(576);
      }
      // a new thread and a forked child between two barriers
      await fx.write(0, 1, 't');
      const [child] = await fx.write(100, 3, 'f');
      const vdir = join(tmp('verify'), 'full');
      const e1 = await engine.checkpoint({ imageDir: dir, verifyFullDir: vdir });
      expect(e1.processes).toBe(4);
      expect(e1.threads).toBe(7);
      const m1 = readEpochMeta(e1.epochDir);
      const born = processesOf(m1).find((p) => p.pid === child)!;
      expect(born.newProcess).toBe(true);
      expect(born.ppid).toBe(fx.pid);
      expect(processesOf(m1).find((p) => p.pid === fx.pid)!.threads).toHaveLength(4);
      // the child was seized when it was born: traced by the engine, not stopped
      expect(procState(child!).tracer).toBe(engine.pid);
      expect(procState(child!).state).toBe('S');
      // base + deltas == fresh full, for every process
      const inc = reconstruct(dir);
      const fresh = reconstruct(vdir);
      expect([...inc.memory.keys()].sort()).toEqual([...fresh.memory.keys()].sort());
      for (const [pid, pm] of inc.memory) expect(memoryDigest(pm), `pid ${pid}`).toBe(memoryDigest(fresh.memory.get(pid)!));
      // one more epoch: the child is now tracked incrementally
      await fx.write(10, 4);
      const e2 = await engine.checkpoint({ imageDir: dir });
      expect(e2.perProcess.find((p) => p.pid === child)!.newRegions).toBe(0);
      expect(e2.perProcess.find((p) => p.pid === child)!.pages).toBeLessThan(20);
    } finally {
      await engine.close();
      for (const k of childrenOf(fx.pid)) process.kill(k, 'SIGKILL');
      fx.kill();
    }
    // after close: nobody traced
  }, 60_000);
});
