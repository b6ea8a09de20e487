// Breadth: a process tree with threads; threads and processes born between
// barriers are seized as they appear and captured at the barrier that finds
// them; thread state (registers, restart codes, rseq, sigmask) is recorded.
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineClient } from '../../src/native/engine.js';
import { memoryDigest, processesOf, readEpochMeta, reconstruct } from '../../src/image/store.js';
import { decodeRegs } from '../../src/image/show.js';
import { childrenOf, onCleanup, procState, runCleanups, settledState, startFixture, tmp, waitFor } from './helpers.js';

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
      expect(await settledState(child!)).toBe('S');
      // base + deltas == fresh full, for every process
      const inc = reconstruct(dir);
      const fresh = reconstruct(vdir);
      expect([...inc.memory.keys()].sort()).toEqual([...fresh.memory.keys()].sort());
      for (const [pid, pm] of inc.memory) expect(memoryDigest(pm), `pid ${pid}`).toBe(memoryDigest(fresh.memory.get(pid)!));
      // a dry run would re-protect pages without saving them: refused in a real chain
      await expect(engine.checkpoint({ imageDir: '', dryRun: true })).rejects.toMatchObject({
        code: 'E_USAGE',
        message: expect.stringMatching(/dry-run checkpoint would break the image chain/),
      });
      // one more epoch: the child is now tracked incrementally
      await fx.write(10, 4);
      const e2 = await engine.checkpoint({ imageDir: dir });
      expect(e2.epoch).toBe(2);
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

describe('signal state', () => {
  it('records handlers, the blocked mask and a pending blocked signal of a real interpreter', async () => {
    const code =
      'import os,signal,time\n' +
      'signal.signal(signal.SIGUSR2, lambda s,f: None)\n' +
      'signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])\n' +
      'os.kill(os.getpid(), signal.SIGUSR1)\n' +
      'os.closerange(0, 1024)\n' +
      'time.sleep(1000)\n';
    const p = spawn('python3', ['-c', code], { stdio: ['ignore', 'ignore', 'ignore'] });
    onCleanup(() => p.kill('SIGKILL'));
    await waitFor(
      'python ready with SIGUSR1 pending',
      () => {
        try {
          return /^ShdPnd:\s+0*200$/m.test(readFileSync(`/proc/${p.pid}/status`, 'utf8')) && readdirSync(`/proc/${p.pid}/fd`).length === 0 ? true : undefined;
        } catch {
          return undefined;
        }
      },
      10_000,
    );
    const engine = EngineClient.start();
    try {
      await engine.attach(p.pid!, { trackDirty: true });
      const dir = join(tmp('img'), 'py');
      const r = await engine.checkpoint({ imageDir: dir });
      const pr = processesOf(readEpochMeta(r.epochDir))[0]!;
      const usr2 = pr.sigactions.find((s) => s.signo === 12)!;
      expect(Number(usr2.handler)).toBeGreaterThan(1); // python's C-level handler
      expect(Number(usr2.flags) & 0x04000000).toBeTruthy(); // SA_RESTORER
      expect(pr.sharedPending.map((s) => s.signo)).toEqual([10]);
      const main = pr.threads.find((t) => t.tid === p.pid)!;
      expect(BigInt(main.sigmask as number) & (1n << 9n)).toBe(1n << 9n);
      expect(main.inSyscall).toBe(true); // in clock_nanosleep / select
    } finally {
      await engine.close();
    }
    expect(procState(p.pid!).tracer).toBe(0);
    expect(await settledState(p.pid!)).toBe('S');
  }, 60_000);
});

describe('exec', () => {
  it('a process that execs between barriers is captured anew: new exe, every region reset, still exact', async () => {
    const code = 'import os,time\nos.closerange(0, 1024)\ntime.sleep(1.0)\nos.execv("/bin/sleep", ["sleep", "1000"])\n';
    const p = spawn('python3', ['-c', code], { stdio: ['ignore', 'ignore', 'ignore'] });
    onCleanup(() => p.kill('SIGKILL'));
    await waitFor(
      'python closed its fds',
      () => {
        try {
          return readdirSync(`/proc/${p.pid}/fd`).length === 0 ? true : undefined;
        } catch {
          return undefined;
        }
      },
      10_000,
    );
    const engine = EngineClient.start();
    try {
      await engine.attach(p.pid!, { trackDirty: true });
      const dir = join(tmp('img'), 'exec');
      const e0 = await engine.checkpoint({ imageDir: dir });
      expect(processesOf(readEpochMeta(e0.epochDir))[0]!.exe!.path).toMatch(/python3/);
      await waitFor('exec', () => (readFileSync(`/proc/${p.pid}/comm`, 'utf8').trim() === 'sleep' ? true : undefined), 10_000);
      // let sleep reach its nanosleep
      await new Promise((r) => setTimeout(r, 100));
      const vdir = join(tmp('verify'), 'full');
      const e1 = await engine.checkpoint({ imageDir: dir, verifyFullDir: vdir });
      const pr = processesOf(readEpochMeta(e1.epochDir))[0]!;
      expect(pr.exe!.path).toBe('/usr/bin/sleep');
      expect(pr.threads).toHaveLength(1);
      expect(e1.perProcess[0]!.newRegions).toBe(pr.vmas.filter((v) => v.kind === 0 || v.kind === 1).length);
      const inc = reconstruct(dir).memory.get(p.pid!)!;
      expect(memoryDigest(inc)).toBe(memoryDigest(reconstruct(vdir).memory.get(p.pid!)!));
    } finally {
      await engine.close();
    }
    expect(procState(p.pid!).tracer).toBe(0);
  }, 60_000);
});
