// The key property of incremental checkpoints: over many epochs of a program
// writing random pages at known addresses, the pages captured in its region
// are exactly the pages it wrote (no miss, no extra), and epoch 0 + every
// delta equals, byte for byte, a fresh full checkpoint of the same barrier.
import { openSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineClient } from '../../src/native/engine.js';
import { listEpochs, memoryDigest, processesOf, readEpochMeta, reconstruct, runsOf } from '../../src/image/store.js';
import { runCleanups, startFixture, tmp } from './helpers.js';

afterAll(runCleanups);

function capturedIndices(dir: string, epoch: number, pid: number, region: number, pages: number): number[] {
  const e = listEpochs(dir).find((x) => x.kind === 'epoch' && x.epoch === epoch)!;
  const meta = readEpochMeta(e.path);
  const p = processesOf(meta).find((x) => x.pid === pid)!;
  const out: number[] = [];
  for (const r of runsOf(p)) {
    for (let i = 0; i < r.npages; i++) {
      const a = Number(r.vaddr) + i * 4096;
      if (a >= region && a < region + pages * 4096) out.push((a - region) / 4096);
    }
  }
  return out.sort((a, b) => a - b);
}

describe('incremental checkpoints are exact', () => {
  it('captures exactly the written pages over 25 epochs, and base + deltas == a fresh full checkpoint', async () => {
    const fx = await startFixture({ mb: 80, threads: 2 }); // > 2 slices: the parallel scan path
    const engine = EngineClient.start({ timeoutMs: 30_000 });
    try {
      await engine.attach(fx.pid, { trackDirty: true });
      const dir = join(tmp('img'), 'chain');
      const e0 = await engine.checkpoint({ imageDir: dir });
      expect(e0.epoch).toBe(0);
      expect(e0.full).toBe(true);
      // every page of the region was filled before epoch 0
      expect(capturedIndices(dir, 0, fx.pid, fx.region, fx.pages)).toHaveLength(fx.pages);

      let seed = 12345;
      const verifyAt = new Set([3, 12, 25]);
      for (let epoch = 1; epoch <= 25; epoch++) {
        // vary the batch: none, one page, a few, many (up to ~6% of the region)
        const count = epoch % 7 === 0 ? 0 : epoch % 5 === 0 ? 1 : ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % 500) + 1;
        const written = (await fx.write(count, epoch * 7919)).sort((a, b) => a - b);
        expect(written).toHaveLength(count);
        const vdir = verifyAt.has(epoch) ? join(tmp('verify'), 'full') : undefined;
        const r = await engine.checkpoint({ imageDir: dir, verifyFullDir: vdir });
        expect(r.epoch).toBe(epoch);
        expect(r.full).toBe(false);
        expect(capturedIndices(dir, epoch, fx.pid, fx.region, fx.pages)).toEqual(written);
        if (vdir) {
          const inc = reconstruct(dir, epoch);
          const fresh = reconstruct(vdir);
          expect(fresh.epoch).toBe(epoch);
          expect(inc.used).toHaveLength(epoch + 1);
          const a = inc.memory.get(fx.pid)!;
          const b = fresh.memory.get(fx.pid)!;
          // the same set of data pages, the same bytes in each
          expect([...a.keys()].sort((x, y) => x - y)).toEqual([...b.keys()].sort((x, y) => x - y));
          expect(memoryDigest(a)).toBe(memoryDigest(b));
          expect(a.size).toBeGreaterThan(fx.pages);
        }
      }
      // and the rebuilt region equals the app's live memory now (it is idle
      // between commands, so its region has not changed since the barrier)
      const last = reconstruct(dir).memory.get(fx.pid)!;
      const live = Buffer.alloc(fx.pages * 4096);
      const fd = openSync(`/proc/${fx.pid}/mem`, 'r');
      try {
        let off = 0;
        while (off < live.length) off += readSync(fd, live, off, live.length - off, fx.region + off);
      } finally {
        closeSync(fd);
      }
      for (let i = 0; i < fx.pages; i++) {
        const page = last.get(fx.region + i * 4096);
        expect(page, `page ${i}`).toBeDefined();
        if (!page!.equals(live.subarray(i * 4096, (i + 1) * 4096))) throw new Error(`rebuilt page ${i} differs from the live app`);
      }
    } finally {
      await engine.close();
      fx.kill();
    }
  }, 120_000);

  it('stays exact when pages are discarded (MADV_DONTNEED) and new regions appear', async () => {
    const fx = await startFixture({ mb: 8 });
    const engine = EngineClient.start({ timeoutMs: 30_000 });
    try {
      await engine.attach(fx.pid, { trackDirty: true });
      const dir = join(tmp('img'), 'chain');
      await engine.checkpoint({ imageDir: dir });
      // discarded pages: not "written", but they read as zero now
      const zeroed = await fx.write(40, 99, 'z');
      let vdir = join(tmp('verify'), 'full');
      let r = await engine.checkpoint({ imageDir: dir, verifyFullDir: vdir });
      expect(capturedIndices(dir, r.epoch, fx.pid, fx.region, fx.pages)).toEqual([]);
      let inc = reconstruct(dir).memory.get(fx.pid)!;
      for (const z of zeroed) expect(inc.has(fx.region + z * 4096)).toBe(false);
      expect(memoryDigest(inc)).toBe(memoryDigest(reconstruct(vdir).memory.get(fx.pid)!));
      // a discarded page written again is captured again
      const again = await fx.write(20, 5);
      r = await engine.checkpoint({ imageDir: dir });
      expect(capturedIndices(dir, r.epoch, fx.pid, fx.region, fx.pages)).toEqual(again.sort((a, b) => a - b));
      // a new region: all its pages are in the delta that finds it
      const [addr] = await fx.write(64, 7, 'm');
      vdir = join(tmp('verify'), 'full');
      r = await engine.checkpoint({ imageDir: dir, verifyFullDir: vdir });
      expect(r.perProcess[0]!.newRegions).toBeGreaterThanOrEqual(1);
      const meta = readEpochMeta(listEpochs(dir).find((e) => e.epoch === r.epoch)!.path);
      const p = processesOf(meta)[0]!;
      const inNew = runsOf(p).reduce((s, run) => {
        let k = 0;
        for (let i = 0; i < run.npages; i++) {
          const a = Number(run.vaddr) + i * 4096;
          if (a >= addr! && a < addr! + 64 * 4096) k++;
        }
        return s + k;
      }, 0);
      expect(inNew).toBe(64);
      inc = reconstruct(dir).memory.get(fx.pid)!;
      expect(memoryDigest(inc)).toBe(memoryDigest(reconstruct(vdir).memory.get(fx.pid)!));
    } finally {
      await engine.close();
      fx.kill();
    }
  }, 60_000);
});
