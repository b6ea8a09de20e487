// Epochs as a stream, and written while the next ones are captured: the
// stream sink carries exactly what the directory sink writes for the same
// barrier; an epoch does not wait for an earlier one's write; a full writer
// queue refuses the checkpoint before its barrier (E_BUSY) and loses nothing.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineClient } from '../../src/native/engine.js';
import { frameEpochMeta, listEpochs, memoryDigest, processesOf, readEpochMeta, reconstruct, runsOf } from '../../src/image/store.js';
import { readEpochStream, storeStreamedEpoch, streamedPages, type StreamedEpoch } from '../../src/image/stream.js';
import { onCleanup, procState, runCleanups, startFixture, tmp, waitFor } from './helpers.js';

afterAll(runCleanups);

/** Epochs from the engine's stream, by request order; `next()` waits for the next one. */
function collect(engine: EngineClient): { next(): Promise<StreamedEpoch> } {
  const got: StreamedEpoch[] = [];
  const waiting: ((e: StreamedEpoch) => void)[] = [];
  let failed: Error | undefined;
  readEpochStream(
    engine.epochStream!,
    (e) => {
      const w = waiting.shift();
      if (w) w(e);
      else got.push(e);
    },
    (e) => {
      failed = e;
    },
  );
  return {
    next: () => {
      if (failed) return Promise.reject(failed);
      const e = got.shift();
      return e ? Promise.resolve(e) : new Promise((r) => waiting.push(r));
    },
  };
}

function regionPages(dir: string, epoch: number, pid: number, region: number, pages: number): number[] {
  const meta = readEpochMeta(listEpochs(dir).find((x) => x.epoch === epoch)!.path);
  const out: number[] = [];
  for (const r of runsOf(processesOf(meta).find((p) => p.pid === pid)!)) {
    for (let i = 0; i < r.npages; i++) {
      const a = Number(r.vaddr) + i * 4096;
      if (a >= region && a < region + pages * 4096) out.push((a - region) / 4096);
    }
  }
  return out.sort((a, b) => a - b);
}

describe('epochs as a stream', () => {
  it('the stream carries byte for byte what the directory sink writes for the same barrier', async () => {
    const fx = await startFixture({ mb: 24 });
    const engine = EngineClient.start({ epochStream: true });
    onCleanup(() => engine.kill());
    const stream = collect(engine);
    const dir = join(tmp('img'), 'chain');
    const standby = join(tmp('standby'), 'chain');
    try {
      await engine.attach(fx.pid, { trackDirty: true });
      for (let n = 0; n <= 3; n++) {
        if (n) await fx.write(200 * n, n);
        const r = await engine.checkpoint({ imageDir: dir, sink: 'both' });
        expect(r).toMatchObject({ epoch: n, streamed: true, fsynced: true });
        const e = await stream.next();
        expect(e.header.epoch).toBe(n);
        expect(e.header.imageId).toBe(r.imageId);
        // the same metadata bytes (meta.pb frames them) and the same pages
        expect(frameEpochMeta(e.metaBody).equals(readFileSync(join(r.epochDir, 'meta.pb')))).toBe(true);
        expect(e.pages.equals(readFileSync(join(r.epochDir, 'pages.bin')))).toBe(true);
        expect(e.pages.length).toBe(r.bytes);
        // every page's crc checks out on the receiving side too
        expect(streamedPages(e).get(fx.pid)!.size).toBeGreaterThan(0);
        // a standby stores what it receives: an image the readers take as is
        storeStreamedEpoch(standby, e);
      }
      expect(memoryDigest(reconstruct(standby).memory.get(fx.pid)!)).toBe(memoryDigest(reconstruct(dir).memory.get(fx.pid)!));
      // stream only: nothing written to the directory, the chain goes on
      await fx.write(10, 77);
      const r4 = await engine.checkpoint({ imageDir: '', sink: 'stream', chain: { imageId: '', epoch: 0 } });
      expect(r4).toMatchObject({ epoch: 0, full: true, streamed: true, fsynced: false, epochDir: '' });
      const e4 = await stream.next();
      expect(Number(e4.header.requestId)).toBeGreaterThan(0);
      expect(e4.meta.full).toBe(true);
      expect(Number(e4.header.pagesBytes)).toBe(r4.bytes);
    } finally {
      await engine.close();
      fx.kill();
    }
  }, 60_000);

  it('an engine started without a stream refuses the stream sink before any barrier', async () => {
    const fx = await startFixture({ mb: 4 });
    const engine = EngineClient.start();
    try {
      await engine.attach(fx.pid, { trackDirty: true });
      await expect(engine.checkpoint({ imageDir: '', sink: 'stream' })).rejects.toMatchObject({
        code: 'E_USAGE',
        message: expect.stringMatching(/--epoch-stream-fd/),
      });
    } finally {
      await engine.close();
      fx.kill();
    }
  }, 30_000);
});

describe('pipelined writing', () => {
  it('the next epoch is taken while the previous one is written; a full queue refuses with E_BUSY and loses nothing', async () => {
    const fx = await startFixture({ mb: 8 });
    const engine = EngineClient.start();
    onCleanup(() => engine.kill());
    const dir = join(tmp('img'), 'chain');
    try {
      await engine.attach(fx.pid, { trackDirty: true });
      let released0 = 0;
      let released1 = 0;
      let written0 = 0;
      const p0 = engine
        .checkpoint({
          imageDir: dir,
          debugWriteDelayMs: 1500,
          onProgress: (s) => {
            if (s === 'released') released0 = Date.now();
          },
        })
        .then((r) => {
          written0 = Date.now();
          return r;
        });
      while (!released0) await new Promise((r) => setTimeout(r, 5));
      const w1 = (await fx.write(20, 1)).sort((a, b) => a - b);
      const p1 = engine.checkpoint({
        imageDir: dir,
        maxEpochsInFlight: 2,
        onProgress: (s) => {
          if (s === 'released') released1 = Date.now();
        },
      });
      while (!released1) await new Promise((r) => setTimeout(r, 5));
      // epoch 1 was captured while epoch 0 was still being written
      expect(written0).toBe(0);
      // two epochs in flight, the bound is 2: refused before any barrier
      const w2 = (await fx.write(30, 2)).sort((a, b) => a - b);
      await expect(engine.checkpoint({ imageDir: dir, maxEpochsInFlight: 2 })).rejects.toMatchObject({
        code: 'E_BUSY',
        message: expect.stringMatching(/2 epochs .* wait to be written.*not taken.*the app was not stopped/),
      });
      // the app was not stopped: it still answers
      const w3 = (await fx.write(5, 3)).sort((a, b) => a - b);
      const [r0, r1] = await Promise.all([p0, p1]);
      expect(r0.epoch).toBe(0);
      expect(r1.epoch).toBe(1);
      expect(released1).toBeLessThan(written0);
      expect(r1.epochsInFlight).toBe(1);
      expect(r1.queuedNs).toBeGreaterThan(500e6); // waited behind epoch 0's write
      expect(regionPages(dir, 1, fx.pid, fx.region, fx.pages)).toEqual(w1);
      // nothing lost: the refused epoch's writes are in the next one
      const r2 = await engine.checkpoint({ imageDir: dir });
      expect(r2.epoch).toBe(2);
      expect(regionPages(dir, 2, fx.pid, fx.region, fx.pages)).toEqual([...new Set([...w2, ...w3])].sort((a, b) => a - b));
      expect(reconstruct(dir).used).toEqual(['epoch-000000', 'epoch-000001', 'epoch-000002']);
      const st = await engine.status();
      expect(st).toMatchObject({ epochsInFlight: 0, hasWritten: true, lastWrittenEpoch: 2, lastEpoch: 2 });
    } finally {
      await engine.close();
      fx.kill();
    }
  }, 60_000);

  it('a failed write drops the epochs queued after it, says so, and the chain goes on with a full epoch', async () => {
    const mnt = tmp('small');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=6m', 'tmpfs', mnt]);
    onCleanup(() => execFileSync('umount', ['-l', mnt]));
    const fx = await startFixture({ mb: 4 });
    const engine = EngineClient.start();
    onCleanup(() => engine.kill());
    const dir = join(mnt, 'img');
    mkdirSync(dir);
    try {
      await engine.attach(fx.pid, { trackDirty: true });
      expect((await engine.checkpoint({ imageDir: dir })).epoch).toBe(0); // ~4.2 MB
      await fx.write(1024, 3); // every page: the delta does not fit
      let released = false;
      const p1 = engine.checkpoint({
        imageDir: dir,
        debugWriteDelayMs: 500,
        onProgress: (st) => {
          if (st === 'released') released = true;
        },
      });
      while (!released) await new Promise((r) => setTimeout(r, 5));
      await fx.write(3, 4);
      const p2 = engine.checkpoint({ imageDir: dir }); // a delta over epoch 1, captured while 1 waits
      await expect(p1).rejects.toMatchObject({ code: 'E_IMAGE_WRITE', message: expect.stringMatching(/No space left on device/) });
      await expect(p2).rejects.toMatchObject({
        code: 'E_IMAGE_WRITE',
        message: expect.stringMatching(/epoch 2 was captured but not written: an earlier epoch of its chain could not be written/),
      });
      expect(readdirSync(dir)).toEqual(['epoch-000000']);
      const st = await engine.status();
      expect(st).toMatchObject({ lastEpoch: 0, lastWrittenEpoch: 0, epochsInFlight: 0 });
      // the chain goes on from epoch 0 with a full epoch (the pages of 1 and 2 were re-protected)
      execFileSync('rm', ['-rf', join(dir, 'epoch-000000')]);
      const r = await engine.checkpoint({ imageDir: dir });
      expect(r).toMatchObject({ epoch: 1, full: true });
      expect(reconstruct(dir).used).toEqual(['epoch-000001']);
    } finally {
      await engine.close();
      fx.kill();
    }
  }, 60_000);

  it('an engine told to leave (end of its stdin) detaches the app, then finishes the epochs it holds', async () => {
    const fx = await startFixture({ mb: 8 });
    const engine = EngineClient.start();
    onCleanup(() => engine.kill());
    const dir = join(tmp('img'), 'chain');
    await engine.attach(fx.pid, { trackDirty: true });
    let released = false;
    const p = engine.checkpoint({
      imageDir: dir,
      debugWriteDelayMs: 700,
      onProgress: (st) => {
        if (st === 'released') released = true;
      },
    });
    while (!released) await new Promise((r) => setTimeout(r, 5));
    let written = false;
    void p.then(() => {
      written = true;
    });
    const closed = engine.close();
    // the app is let go at once, before the epoch is written
    await waitFor(() => (procState(fx.pid).tracer === 0 ? true : undefined), 3000, 'the app to be detached');
    expect(written).toBe(false);
    await closed;
    // the reply still came (stdout was open), and the epoch is whole on disk
    expect((await p).epoch).toBe(0);
    expect(readdirSync(dir)).toEqual(['epoch-000000']);
    expect(reconstruct(dir).memory.get(fx.pid)!.size).toBeGreaterThan(fx.pages);
    fx.kill();
  }, 30_000);
});
