// The agent owns the chain: every checkpoint names its image, epoch and
// parent, so an engine restarted by the agent continues a chain (its first
// epoch is full: dirty tracking starts anew with it), and a parent that is
// not the chain's newest epoch is refused with E_IMAGE_CHAIN.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineClient, type ChainPosition } from '../../src/native/engine.js';
import { memoryDigest, readEpochMeta, reconstruct } from '../../src/image/store.js';
import { restore } from '../../src/native/restorer.js';
import * as rs from '../restore/helpers.js';
import { onCleanup, runCleanups, startFixture, tmp } from './helpers.js';

afterAll(async () => {
  runCleanups();
  await rs.runCleanups();
});

const at = (imageId: string, epoch: number): ChainPosition => ({ imageId, epoch, parentEpoch: epoch - 1 });

describe('the chain across an engine restart', () => {
  it('a new engine continues the chain with a full epoch, then deltas; base + deltas == a fresh full', async () => {
    const fx = await startFixture({ mb: 16 });
    const dir = join(tmp('img'), 'chain');
    const a = EngineClient.start();
    onCleanup(() => a.kill());
    await a.attach(fx.pid, { trackDirty: true });
    const e0 = await a.checkpoint({ imageDir: dir, chain: { imageId: '', epoch: 0 } });
    expect(e0).toMatchObject({ epoch: 0, full: true, parentEpoch: 0 });
    expect(e0.imageId).toMatch(/^[0-9a-f]{32}$/);
    const id = e0.imageId;
    for (let n = 1; n <= 3; n++) {
      await fx.write(50, n);
      // epoch 1 asked before the id is known (a pipelining agent): this engine's own chain
      const r = await a.checkpoint({ imageDir: dir, chain: at(n === 1 ? '' : id, n) });
      expect(r).toMatchObject({ epoch: n, full: false, parentEpoch: n - 1, imageId: id });
    }
    // the agent's engine dies; the kernel releases the app, which runs on
    a.kill('SIGKILL');
    await a.waitExit();
    const written = await fx.write(30, 99);
    expect(written).toHaveLength(30);

    const b = EngineClient.start();
    onCleanup(() => b.kill());
    try {
      await b.attach(fx.pid, { trackDirty: true });
      // not the newest epoch on disk, another image, a gap: refused, nothing written
      await expect(b.checkpoint({ imageDir: dir, chain: at(id, 3) })).rejects.toMatchObject({
        code: 'E_IMAGE_CHAIN',
        message: expect.stringMatching(/parent epoch 2 is not the newest epoch in .* which is 3/),
      });
      await expect(b.checkpoint({ imageDir: dir, chain: at('0'.repeat(32), 4) })).rejects.toMatchObject({
        code: 'E_IMAGE_CHAIN',
        message: expect.stringMatching(new RegExp(`epoch-000003 belongs to image ${id}, not 0{32}`)),
      });
      await expect(b.checkpoint({ imageDir: dir, chain: { imageId: id, epoch: 5, parentEpoch: 3 } })).rejects.toMatchObject({
        code: 'E_IMAGE_CHAIN',
      });
      // a chain this engine did not start must be named
      await expect(b.checkpoint({ imageDir: dir, chain: at('', 4) })).rejects.toMatchObject({
        code: 'E_USAGE',
        message: expect.stringMatching(/did not start: the request must name its image id/),
      });
      expect(readdirSync(dir).sort()).toEqual(['epoch-000000', 'epoch-000001', 'epoch-000002', 'epoch-000003']);

      // the chain's next epoch, full: this engine has no tracking before it
      const e4 = await b.checkpoint({ imageDir: dir, chain: at(id, 4) });
      expect(e4).toMatchObject({ epoch: 4, full: true, parentEpoch: 3, imageId: id });
      expect(readEpochMeta(join(dir, 'epoch-000004'))).toMatchObject({ epoch: 4, full: true, parentEpoch: 3, imageId: id });
      for (let n = 5; n <= 6; n++) {
        await fx.write(40, 100 + n);
        const vdir = n === 6 ? join(tmp('verify'), 'full') : undefined;
        const r = await b.checkpoint({ imageDir: dir, chain: at(id, n), verifyFullDir: vdir });
        expect(r).toMatchObject({ epoch: n, full: false, parentEpoch: n - 1 });
        if (vdir) {
          const inc = reconstruct(dir, 6);
          expect(inc.used).toEqual(['epoch-000004', 'epoch-000005', 'epoch-000006']);
          const fresh = reconstruct(vdir);
          expect(memoryDigest(inc.memory.get(fx.pid)!)).toBe(memoryDigest(fresh.memory.get(fx.pid)!));
        }
      }
      // this engine's own chain: the parent must be its newest epoch
      await expect(b.checkpoint({ imageDir: dir, chain: at(id, 6) })).rejects.toMatchObject({
        code: 'E_IMAGE_CHAIN',
        message: expect.stringMatching(/parent epoch 5 is not the newest epoch of image [0-9a-f]+, which is 6/),
      });
      // older epochs read as before: epoch 3 from epochs 0..3
      expect(reconstruct(dir, 3).used).toHaveLength(4);
    } finally {
      await b.close();
      fx.kill();
    }
  }, 60_000);

  it('a restore of the last epoch of a chain continued by a restarted engine gives the app back', async () => {
    const ctl = rs.tmp('chain');
    const img = join(rs.tmp('chain-img'), 'image');
    const fx = await rs.startFixture('rs_counter', ctl);
    const a = EngineClient.start();
    rs.onCleanup(() => a.kill());
    await a.attach(fx.pid, { trackDirty: true });
    const id = (await a.checkpoint({ imageDir: img, chain: { imageId: '', epoch: 0 } })).imageId;
    for (let n = 1; n <= 3; n++) {
      await rs.sleep(20);
      await a.checkpoint({ imageDir: img, chain: at(id, n) });
    }
    a.kill('SIGKILL');
    await a.waitExit();
    await rs.sleep(50);
    const b = EngineClient.start();
    rs.onCleanup(() => b.kill());
    let pids: number[] = [];
    try {
      await b.attach(fx.pid, { trackDirty: true });
      expect((await b.checkpoint({ imageDir: img, chain: at(id, 4) })).full).toBe(true);
      for (let n = 5; n <= 7; n++) {
        await rs.sleep(20);
        expect((await b.checkpoint({ imageDir: img, chain: at(id, n) })).full).toBe(false);
      }
      pids = (await b.status()).pids;
      await b.killApp();
    } finally {
      await b.close();
    }
    rs.killPids(pids);
    await rs.waitFor('the app to be gone', () => pids.every((p) => !rs.exists(p)));
    const r = await restore({ imageDir: img });
    rs.onCleanup(() => rs.killPids([r.reaper, ...r.pids]));
    expect(r.epoch).toBe(7);
    expect(r.imageId).toBe(id);
    expect(r.pids[0]).toBe(fx.pid);
    expect(await rs.verdict(ctl)).toBe('PASS');
  }, 60_000);
});
