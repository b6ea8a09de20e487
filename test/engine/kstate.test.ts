// Kernel-held state the engine reads with a BPF task iterator instead of
// injected syscalls (docs/engine.md): signal handlers, clear-child-tid,
// sigaltstack, brk and thread names. Changes made after a thread's first
// barrier are captured at the next one, and the values equal, field for
// field, what the injected syscalls report (UNDERSTUDY_ENGINE_NO_TASKITER=1).
import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineClient } from '../../src/native/engine.js';
import { processesOf, readEpochMeta } from '../../src/image/store.js';
import { onCleanup, runCleanups, tmp, waitFor } from './helpers.js';

afterAll(runCleanups);

// Python changes its kernel-held state when CTL/go appears, then says done.
const script = (ctl: string): string =>
  [
    'import ctypes,faulthandler,os,signal,time',
    'libc = ctypes.CDLL(None, use_errno=True)',
    'os.closerange(0, 1024)',
    `ctl = ${JSON.stringify(ctl)}`,
    'open(ctl + "/ready", "w").close()',
    'while not os.path.exists(ctl + "/go"): time.sleep(0.005)',
    'signal.signal(signal.SIGUSR1, lambda s, f: None)',
    'signal.signal(signal.SIGHUP, signal.SIG_IGN)',
    'faulthandler.enable()', // installs a sigaltstack
    'libc.prctl(15, b"renamed-main", 0, 0, 0)', // PR_SET_NAME
    'libc.sbrk.restype = ctypes.c_void_p',
    'libc.sbrk(4 << 20)',
    'open(ctl + "/done", "w").close()',
    'time.sleep(1000)',
  ].join('\n');

interface Seen {
  handlers: Record<number, { handler: string; flags: string; restorer: string; mask: string }>;
  brk: string;
  threads: { comm: string; clearTid: string; ss: string }[];
}

async function capture(noIter: boolean): Promise<[Seen, Seen]> {
  const ctl = tmp('kstate');
  const p = spawn('python3', ['-c', script(ctl)], { stdio: ['ignore', 'ignore', 'ignore'] });
  onCleanup(() => p.kill('SIGKILL'));
  await waitFor('python ready', () => existsSync(join(ctl, 'ready')) || undefined, 10_000);
  const engine = EngineClient.start({ env: { UNDERSTUDY_ENGINE_NO_TASKITER: noIter ? '1' : undefined } });
  const dir = join(tmp('img'), 'k');
  const seen = (epochDir: string): Seen => {
    const pr = processesOf(readEpochMeta(epochDir))[0]!;
    const handlers: Seen['handlers'] = {};
    for (const s of pr.sigactions)
      handlers[s.signo ?? 0] = { handler: String(s.handler), flags: String(s.flags), restorer: String(s.restorer), mask: String(s.mask) };
    return {
      handlers,
      brk: String(pr.mm!.brk),
      threads: pr.threads.map((t) => ({
        comm: t.comm ?? '',
        clearTid: String(t.clearTid),
        ss: `${String(t.sigaltstack!.sp)}/${String(t.sigaltstack!.size)}/${t.sigaltstack!.flags}`,
      })),
    };
  };
  try {
    await engine.attach(p.pid!, { trackDirty: true });
    const e0 = await engine.checkpoint({ imageDir: dir });
    writeFileSync(join(ctl, 'go'), '');
    await waitFor('python changed its state', () => existsSync(join(ctl, 'done')) || undefined, 10_000);
    const e1 = await engine.checkpoint({ imageDir: dir });
    return [seen(e0.epochDir), seen(e1.epochDir)];
  } finally {
    await engine.close();
    p.kill('SIGKILL');
  }
}

describe('kernel-held task state', () => {
  it('captures handler, sigaltstack, name and brk changes made after the first barrier, as injection reports them', async () => {
    const [i0, i1] = await capture(false);
    // epoch 0: no SIGUSR1 handler, no alternate stack yet
    expect(i0.handlers[10]).toBeUndefined();
    expect(i0.threads[0]!.ss).toMatch(/\/0\/2$/); // SS_DISABLE, size 0
    // epoch 1: every change is there
    expect(BigInt(i1.handlers[10]!.handler)).toBeGreaterThan(1n);
    expect(BigInt(i1.handlers[10]!.flags) & 0x04000000n).toBe(0x04000000n); // SA_RESTORER
    expect(i1.handlers[1]!.handler).toBe('1'); // SIGHUP: SIG_IGN
    expect(Number(i1.threads[0]!.ss.split('/')[1])).toBeGreaterThan(0);
    expect(i1.threads[0]!.comm).toBe('renamed-main');
    expect(BigInt(i1.brk) - BigInt(i0.brk)).toBeGreaterThanOrEqual(BigInt(4 << 20));
    expect(BigInt(i1.threads[0]!.clearTid)).toBeGreaterThan(0n);

    // the same, read by injected syscalls only: identical handler tables,
    // and the same shape everywhere else (addresses differ between runs)
    const [j0, j1] = await capture(true);
    expect(Object.keys(j1.handlers).sort()).toEqual(Object.keys(i1.handlers).sort());
    for (const [sig, h] of Object.entries(i1.handlers)) {
      expect(j1.handlers[Number(sig)]!.flags, `signal ${sig} flags`).toBe(h.flags);
      expect(j1.handlers[Number(sig)]!.mask, `signal ${sig} mask`).toBe(h.mask);
      expect(j1.handlers[Number(sig)]!.handler === '1', `signal ${sig} ignored`).toBe(h.handler === '1');
    }
    expect(j1.threads[0]!.comm).toBe('renamed-main');
    expect(BigInt(j1.brk) - BigInt(j0.brk)).toBeGreaterThanOrEqual(BigInt(4 << 20));
    // injection reads sigaltstack and clear_tid only at a thread's first barrier
    expect(j1.threads[0]!.ss).toBe(j0.threads[0]!.ss);
  }, 60_000);
});
