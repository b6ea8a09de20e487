// The app's safety comes first: whatever fails in the engine (killed mid
// capture, disk full), the app is released and keeps running unchanged, with
// no injected fd or mapping left behind and no half-written epoch.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineClient } from '../../src/native/engine.js';
import { reconstruct } from '../../src/image/store.js';
import { fdTargets, mapsOf, onCleanup, procState, runCleanups, startFixture, tmp, waitFor } from './helpers.js';

afterAll(runCleanups);

async function expectReleased(pid: number, fdsBefore: string[], mapsBefore: string): Promise<void> {
  // the kernel detaches a dead tracer's tracees and resumes them
  const st = await waitFor(
    `pid ${pid} released`,
    () => {
      const s = procState(pid);
      return s.tracer === 0 && s.state !== 't' && s.state !== 'T' ? s : undefined;
    },
    5000,
  );
  expect(st.tracer).toBe(0);
  expect(['S', 'R']).toContain(st.state);
  expect(fdTargets(pid)).toEqual(fdsBefore);
  expect(fdTargets(pid).join('\n')).not.toMatch(/userfaultfd/);
  expect(mapsOf(pid)).toBe(mapsBefore);
}

describe('engine failures leave the app running unchanged', () => {
  it('SIGKILL of the engine in the middle of a full capture', async () => {
    const fx = await startFixture({ mb: 64, threads: 2 });
    const fds = fdTargets(fx.pid);
    const maps = mapsOf(fx.pid);
    const engine = EngineClient.start();
    await engine.attach(fx.pid, { trackDirty: true });
    const dir = join(tmp('img'), 'chain');
    let stalled = false;
    const p = engine.checkpoint({
      imageDir: dir,
      debugStallMs: 10_000,
      onProgress: (stage) => {
        if (stage === 'capture-stall') {
          stalled = true;
          // the app is stopped right now, with its uffd registered
          expect(procState(fx.pid).state).toBe('t');
          engine.kill('SIGKILL');
        }
      },
    });
    await expect(p).rejects.toMatchObject({ code: 'E_ENGINE_DIED' });
    expect(stalled).toBe(true);
    await expectReleased(fx.pid, fds, maps);
    // no epoch, not even a temporary one
    expect(existsSync(dir) ? readdirSync(dir) : []).toEqual([]);
    // and it still works: it answers a command
    expect(await fx.write(3, 1)).toHaveLength(3);
    fx.kill();
  }, 60_000);

  it('SIGKILL of the engine in the middle of an incremental capture keeps the earlier epochs valid', async () => {
    const fx = await startFixture({ mb: 16, threads: 1 });
    const fds = fdTargets(fx.pid);
    const engine = EngineClient.start();
    await engine.attach(fx.pid, { trackDirty: true });
    const dir = join(tmp('img'), 'chain');
    await engine.checkpoint({ imageDir: dir });
    await fx.write(50, 2);
    await engine.checkpoint({ imageDir: dir });
    const maps = mapsOf(fx.pid);
    await fx.write(50, 3);
    const p = engine.checkpoint({
      imageDir: dir,
      debugStallMs: 10_000,
      onProgress: (stage) => stage === 'capture-stall' && engine.kill('SIGKILL'),
    });
    await expect(p).rejects.toMatchObject({ code: 'E_ENGINE_DIED' });
    await expectReleased(fx.pid, fds, maps);
    expect(readdirSync(dir).sort()).toEqual(['epoch-000000', 'epoch-000001']);
    expect(reconstruct(dir).epoch).toBe(1);
    expect(await fx.write(2, 4)).toHaveLength(2);
    fx.kill();
  }, 60_000);

  it('a request that does not answer in time kills the engine and releases the app', async () => {
    const fx = await startFixture({ mb: 8 });
    const fds = fdTargets(fx.pid);
    const maps = mapsOf(fx.pid);
    const engine = EngineClient.start();
    await engine.attach(fx.pid, { trackDirty: true });
    const dir = join(tmp('img'), 'chain');
    await expect(engine.checkpoint({ imageDir: dir, debugStallMs: 20_000, timeoutMs: 500 })).rejects.toMatchObject({
      code: 'E_TIMEOUT',
      message: expect.stringMatching(/did not answer within 500 ms; it was killed and the app released/),
    });
    await engine.waitExit();
    expect(engine.alive).toBe(false);
    await expectReleased(fx.pid, fds, maps);
    await expect(engine.status()).rejects.toMatchObject({ code: 'E_ENGINE_DIED' });
    expect(await fx.write(1, 1)).toHaveLength(1);
    fx.kill();
  }, 60_000);

  it('the app is served while an epoch is written: a fork during a long write does not wait for it', async () => {
    const fx = await startFixture({ mb: 8 });
    const engine = EngineClient.start();
    try {
      await engine.attach(fx.pid, { trackDirty: true });
      const dir = join(tmp('img'), 'chain');
      let released = 0;
      let forked = 0;
      let forkDone: Promise<number[]> | undefined;
      const r = await engine.checkpoint({
        imageDir: dir,
        debugWriteDelayMs: 1500, // a long write
        onProgress: (stage) => {
          if (stage !== 'released') return;
          released = Date.now();
          // the fork stops the parent (fork event) and the child (first stop)
          // until the engine resumes them
          forkDone = fx.write(1, 1, 'f').then((x) => {
            forked = Date.now();
            return x;
          });
        },
      });
      const written = Date.now();
      const [child] = await forkDone!;
      onCleanup(() => process.kill(child!, 'SIGKILL'));
      expect(r.writeNs / 1e6).toBeGreaterThan(1500);
      expect(forked).toBeGreaterThan(0);
      expect(forked).toBeLessThan(written);
      expect(forked - released).toBeLessThan(1000);
    } finally {
      await engine.close();
      fx.kill();
    }
  }, 60_000);

  it('a thread blocked in vfork() cannot stop: the barrier releases at once with a clear error', async () => {
    const fx = await startFixture({ mb: 4 });
    const engine = EngineClient.start();
    try {
      await engine.attach(fx.pid, { trackDirty: true });
      const dir = join(tmp('img'), 'chain');
      await engine.checkpoint({ imageDir: dir });
      // the child sleeps 1.5 s before _exit; the parent is blocked in vfork meanwhile
      const done = fx.write(1500, 0, 'v');
      await new Promise((r) => setTimeout(r, 200));
      const t0 = Date.now();
      await expect(engine.checkpoint({ imageDir: dir })).rejects.toMatchObject({
        code: 'E_BARRIER',
        message: expect.stringMatching(new RegExp(`thread ${fx.pid} is inside vfork\\(\\), waiting for child \\d+`)),
      });
      expect(Date.now() - t0).toBeLessThan(1000);
      // released: the child finishes its sleep, the parent goes on
      await done;
      expect(procState(fx.pid).state).toMatch(/[SR]/);
      // and the next checkpoint works, still incremental: the failed barrier scanned nothing
      const r = await engine.checkpoint({ imageDir: dir });
      expect(r.epoch).toBe(1);
      expect(r.full).toBe(false);
    } finally {
      await engine.close();
      fx.kill();
    }
  }, 60_000);

  it('a thread already blocked in vfork() when the engine attaches: the first checkpoint fails at once, naming it', async () => {
    const fx = await startFixture({ mb: 4 });
    // the child sleeps 4 s before _exit; the parent is blocked in vfork before the engine comes
    const done = fx.write(4000, 0, 'v');
    await waitFor('the fixture to block in vfork()', () => (procState(fx.pid).state === 'D' ? true : undefined), 3000);
    const engine = EngineClient.start();
    try {
      const t0 = Date.now();
      await expect(
        (async () => {
          await engine.attach(fx.pid, { trackDirty: true });
          await engine.checkpoint({ imageDir: join(tmp('img'), 'chain') });
        })(),
      ).rejects.toMatchObject({
        code: 'E_BARRIER',
        message: expect.stringMatching(new RegExp(`thread ${fx.pid} is inside vfork\\(\\), waiting for child \\d+`)),
      });
      expect(Date.now() - t0).toBeLessThan(1500);
      // released: the child finishes its sleep, the parent goes on, and a checkpoint then works
      await done;
      expect(procState(fx.pid).state).toMatch(/[SR]/);
      const r = await engine.checkpoint({ imageDir: join(tmp('img'), 'after') });
      expect(r.full).toBe(true);
    } finally {
      await engine.close();
      fx.kill();
    }
  }, 60_000);

  it('a full disk: clear error, no partial epoch, app running; the engine recovers with a full epoch', async () => {
    const mnt = tmp('small');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt]);
    onCleanup(() => execFileSync('umount', ['-l', mnt]));
    const fx = await startFixture({ mb: 8 });
    const fds = fdTargets(fx.pid);
    const engine = EngineClient.start();
    try {
      await engine.attach(fx.pid, { trackDirty: true });
      const dir = join(mnt, 'img');
      await expect(engine.checkpoint({ imageDir: dir })).rejects.toMatchObject({
        code: 'E_IMAGE_WRITE',
        message: expect.stringMatching(/No space left on device/),
      });
      // nothing half-written: no epoch, no temporary directory
      expect(readdirSync(dir)).toEqual([]);
      const st = procState(fx.pid);
      expect(st.state).toMatch(/[SR]/);
      expect(await fx.write(5, 9)).toHaveLength(5);
      // the engine is still usable: the next checkpoint, elsewhere, is a full one
      const big = join(tmp('img'), 'chain');
      const r = await engine.checkpoint({ imageDir: big });
      expect(r.epoch).toBe(0);
      expect(r.full).toBe(true);
      expect(reconstruct(big).memory.get(fx.pid)!.size).toBeGreaterThan(fx.pages);
    } finally {
      await engine.close();
    }
    await expectReleased(fx.pid, fds, mapsOf(fx.pid));
    fx.kill();
  }, 60_000);

  it('a full disk during an incremental epoch: that epoch is not written and the next one is full', async () => {
    const mnt = tmp('small2');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=6m', 'tmpfs', mnt]);
    onCleanup(() => execFileSync('umount', ['-l', mnt]));
    const fx = await startFixture({ mb: 4 });
    const engine = EngineClient.start();
    try {
      await engine.attach(fx.pid, { trackDirty: true });
      const dir = join(mnt, 'img');
      mkdirSync(dir);
      await engine.checkpoint({ imageDir: dir }); // ~4.2 MB
      await fx.write(1024, 3); // every page: the delta does not fit
      await expect(engine.checkpoint({ imageDir: dir })).rejects.toMatchObject({ code: 'E_IMAGE_WRITE' });
      expect(readdirSync(dir)).toEqual(['epoch-000000']);
      // the written pages were re-protected but never saved: the engine
      // knows, and makes the next epoch full rather than miss them
      execFileSync('rm', ['-rf', join(dir, 'epoch-000000')]);
      const r = await engine.checkpoint({ imageDir: dir });
      expect(r.epoch).toBe(1);
      expect(r.full).toBe(true);
      expect(reconstruct(dir).used).toEqual(['epoch-000001']);
    } finally {
      await engine.close();
      fx.kill();
    }
  }, 60_000);
});
