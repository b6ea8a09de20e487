// The protect loop on a real app (the dirty_pages fixture), with the real
// engine and the real tracer: epoch 0 and deltas on its schedule, the graph's
// dirty set between two real barriers, an engine killed mid-loop and
// mid-checkpoint (the app keeps running; the failure has a code), and a stop
// that leaves nothing behind.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ProtectLoop, type EpochSink, type EpochTaken } from '../../src/agent/protect.js';
import { listEpochs } from '../../src/image/store.js';
import type { DirtySet } from '../../src/graph/model.js';
import { UnderstudyError } from '../../src/util/errors.js';
import { onCleanup, procState, runCleanups, settledState, startFixture, tmp, waitFor } from '../engine/helpers.js';

const alive = (pid: number): boolean => existsSync(`/proc/${pid}`);
/** eBPF objects this test process left pinned (its tracer sessions are named trace-<pid>-<n>). */
const pinnedByUs = (): string[] => {
  try {
    return readdirSync('/sys/fs/bpf/understudy').filter((n) => n.startsWith(`trace-${process.pid}-`));
  } catch {
    return [];
  }
};

function protect(o: ConstructorParameters<typeof ProtectLoop>[0]): ProtectLoop {
  const loop = new ProtectLoop(o);
  // whatever a test leaves, the app is released and the tracer unpinned
  onCleanup(() => loop.stop().catch(() => undefined));
  return loop;
}

const donePath = (ds: DirtySet | undefined, n: number): boolean => (ds?.paths ?? []).some((p) => p.op === 'rename' && p.path2?.endsWith(`/done-${n}`) === true);
const doneWritten = (ds: DirtySet | undefined, n: number): boolean => (ds?.files ?? []).some((f) => f.path.endsWith(`/.done-${n}.tmp`) && f.ranges.length > 0);

describe('the protect loop', () => {
  afterEach(runCleanups);

  it('takes epoch 0 and then a delta every interval, each recorded, handed to the sinks in order, chained on disk', async () => {
    const fx = await startFixture({ mb: 8, threads: 1 });
    const img = join(tmp('img'), 'image');
    const shipped: EpochTaken[] = [];
    const sink: EpochSink = { name: 'test', epoch: (e) => void shipped.push(e) };
    const loop = protect({ pid: fx.pid, imageDir: img, graph: 'live', schedule: { intervalMs: 150, maxDeltas: 3 }, sinks: [sink] });
    const heard: number[] = [];
    loop.on('epoch', (e) => heard.push(e.record.epoch));
    const t0 = Date.now();
    const first = await loop.start();
    expect(first.record).toMatchObject({ epoch: 0, parent: undefined, full: true, trigger: 'start' });
    // all of the 8 MiB region was filled at start: epoch 0 holds it
    expect(first.record.pages).toBeGreaterThanOrEqual(2048);
    expect(first.dirty).toBeUndefined();
    await loop.scheduleDone;
    // three intervals at least, end to end
    expect(Date.now() - t0).toBeGreaterThanOrEqual(3 * 150);
    expect(loop.epochs.map((e) => [e.epoch, e.parent, e.full, e.trigger])).toEqual([
      [0, undefined, true, 'start'],
      [1, 0, false, 'interval'],
      [2, 1, false, 'interval'],
      [3, 2, false, 'interval'],
    ]);
    expect(shipped.map((e) => e.record.epoch)).toEqual([0, 1, 2, 3]);
    expect(heard).toEqual([0, 1, 2, 3]);
    for (const e of loop.epochs) {
      expect(e.pauseNs).toBeGreaterThan(0);
      expect(e.pauseNs).toBeLessThan(2e9);
      expect(e.bytes).toBe(e.pages * 4096);
    }
    // barriers in order, at least an interval apart (the interval counts from the end of the epoch before)
    for (let i = 1; i < 4; i++) expect(loop.epochs[i]!.barrierAtNs - loop.epochs[i - 1]!.barrierAtNs).toBeGreaterThanOrEqual(150e6);
    // deltas of an app that only sleeps between commands: a few pages, not the region
    for (const e of loop.epochs.slice(1)) expect(e.pages).toBeLessThan(256);
    expect(listEpochs(img).map((e) => `${e.kind}-${e.epoch}`)).toEqual(['epoch-0', 'epoch-1', 'epoch-2', 'epoch-3']);
    // the schedule is done, the loop still protects: an explicit request takes epoch 4
    const r = await loop.requestEpoch();
    expect(r.record).toMatchObject({ epoch: 4, parent: 3, trigger: 'request' });
    expect(await loop.stop()).toEqual({ reason: 'stopped', epochs: 5 });
    expect(alive(fx.pid)).toBe(true);
  });

  it("the graph's dirty set between two real barriers names what the app changed in between, and nothing from the epoch before", async () => {
    const fx = await startFixture({ mb: 4 });
    const img = join(tmp('img'), 'image');
    const loop = protect({ pid: fx.pid, imageDir: img, graph: 'live', debug: { writeDelayMs: 600 } });
    await loop.start();

    // between epoch 0 and 1: 10 pages of the region written, done-0 written and renamed
    const pages = await fx.write(10, 7);
    expect(pages).toHaveLength(10);
    // epoch 1; while the engine writes it (held 600 ms by the test hook) the app, released, does command 1
    let released: () => void = () => {};
    const wasReleased = new Promise<void>((res) => (released = res));
    const off = loop.on('stage', (s) => s.epoch === 1 && s.stage === 'released' && released());
    const e1p = loop.requestEpoch();
    await wasReleased;
    off();
    await fx.write(5, 8);
    const e1 = await e1p;
    expect(e1.record.writeNs).toBeGreaterThanOrEqual(600e6); // command 1 was done while the epoch was still being written
    expect(e1.record.pages).toBeGreaterThanOrEqual(10);
    expect(doneWritten(e1.dirty, 0)).toBe(true);
    expect(donePath(e1.dirty, 0)).toBe(true);
    const written = e1.dirty!.regions.filter((r) => r.pid === fx.pid && r.change === 'written' && r.start <= fx.region && r.end > fx.region);
    expect(written).toHaveLength(1);
    expect(written[0]!.writeFaults).toBeGreaterThanOrEqual(10);
    // command 1 came after barrier 1, though before its reply: not in epoch 1's dirty set...
    expect(doneWritten(e1.dirty, 1)).toBe(false);
    expect(donePath(e1.dirty, 1)).toBe(false);

    // ...but in epoch 2's, which has nothing of command 0
    const e2 = await loop.requestEpoch();
    expect(e2.record).toMatchObject({ epoch: 2, parent: 1 });
    expect(e2.dirty).toMatchObject({ since: 1, epoch: 2 });
    expect(doneWritten(e2.dirty, 1)).toBe(true);
    expect(donePath(e2.dirty, 1)).toBe(true);
    expect(doneWritten(e2.dirty, 0)).toBe(false);
    expect(donePath(e2.dirty, 0)).toBe(false);
    expect(e2.record.pages).toBeGreaterThanOrEqual(5);
    // the log keeps only what came after the last barrier: older dirty sets are refused, not given short
    expect(() => loop.graph!.dirtySince(0)).toThrow(/forgotten/);
    await loop.stop();
  });

  it('an engine killed between epochs: the app keeps running untraced, the failure is E_ENGINE_DIED, emitted and thrown', async () => {
    const fx = await startFixture({ mb: 4, threads: 2 });
    const img = join(tmp('img'), 'image');
    // without restartEngine (test/agent/restart.test.ts has the restart)
    const loop = protect({ pid: fx.pid, imageDir: img, graph: 'live', schedule: { intervalMs: 100 }, restartEngine: false });
    const failed: string[] = [];
    loop.on('failed', (e) => failed.push(e.code));
    await loop.start();
    await waitFor('a delta', () => loop.epochs.length >= 2 || undefined, 10_000);
    const enginePid = loop.enginePid!;
    const tracerPid = loop.tracerPid!;
    process.kill(enginePid, 'SIGKILL');
    const end = await loop.ended;
    expect(end.reason).toBe('failed');
    expect(end.error?.code).toBe('E_ENGINE_DIED');
    expect(end.error?.message).toMatch(/keeps running/);
    expect(failed).toEqual(['E_ENGINE_DIED']);
    expect(loop.state).toBe('failed');
    await expect(loop.stop()).rejects.toMatchObject({ code: 'E_ENGINE_DIED' });
    await expect(loop.requestEpoch()).rejects.toMatchObject({ code: 'E_ENGINE_DIED' });
    // released by the kernel, running, and doing what it is told
    expect(procState(fx.pid).tracer).toBe(0);
    expect(await settledState(fx.pid)).toBe('S');
    expect(await fx.write(3, 1)).toHaveLength(3);
    // the tracer was stopped with it
    expect(pinnedByUs()).toEqual([]);
    await waitFor('the tracer to exit', () => !alive(tracerPid) || undefined, 30_000);
  });

  it('an engine killed inside the barrier (app paused): start fails with a code and the app comes back running', async () => {
    const fx = await startFixture({ mb: 4 });
    const img = join(tmp('img'), 'image');
    const loop = protect({ pid: fx.pid, imageDir: img, graph: 'none', debug: { stallMs: 5000 } });
    let stateInBarrier = '';
    loop.on('stage', (s) => {
      if (s.stage === 'capture-stall') {
        // the app is stopped at the barrier right now
        stateInBarrier = procState(fx.pid).state;
        process.kill(loop.enginePid!, 'SIGKILL');
      }
    });
    await expect(loop.start()).rejects.toMatchObject({ code: 'E_ENGINE_DIED' });
    expect(stateInBarrier).toMatch(/^[tT]$/);
    expect(loop.state).toBe('failed');
    expect(loop.epochs).toHaveLength(0);
    expect(procState(fx.pid).tracer).toBe(0);
    expect(await settledState(fx.pid)).toBe('S');
    expect(await fx.write(2, 3)).toHaveLength(2);
  });

  it('captures run ahead of slow sinks up to maxAhead epochs, then wait; epochs are still shipped in order', async () => {
    const fx = await startFixture({ mb: 1 });
    const shipped: number[] = [];
    const slow: EpochSink = {
      name: 'slow',
      epoch: async (e) => {
        await new Promise((r) => setTimeout(r, 300));
        shipped.push(e.record.epoch);
      },
    };
    const loop = protect({
      pid: fx.pid,
      imageDir: join(tmp('img'), 'image'),
      graph: 'none',
      schedule: { intervalMs: 20, maxDeltas: 3 },
      sinks: [slow],
      maxAhead: 2,
    });
    const t0 = Date.now();
    await loop.start(); // epoch 0, shipped (start waits for its whole handling)
    await loop.scheduleDone;
    expect(shipped).toEqual([0, 1, 2, 3]);
    const b = loop.epochs.map((e) => e.barrierAtNs);
    // epoch 2 was captured while epoch 1 was still being shipped (one ahead), not 300 ms after it
    expect(b[2]! - b[1]!).toBeLessThan(250e6);
    // epoch 3 waited for epoch 1 to be shipped: two ahead at most
    expect(b[3]! - b[1]!).toBeGreaterThanOrEqual(300e6);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(4 * 300);
    await loop.stop();
  });

  it("the next barrier comes while the engine's writer still writes the epoch before; results come back in order, chained", async () => {
    const fx = await startFixture({ mb: 2 });
    const img = join(tmp('img'), 'image');
    // each epoch's write held 400 ms by the engine's test hook; epochs due every 20 ms
    const loop = protect({ pid: fx.pid, imageDir: img, graph: 'none', schedule: { intervalMs: 20, maxDeltas: 3 }, debug: { writeDelayMs: 400 } });
    const order: string[] = [];
    loop.on('stage', (s) => s.stage === 'released' && order.push(`released-${s.epoch}`));
    const inFlight = new Map<number, number>();
    loop.on('epoch', (e) => {
      order.push(`written-${e.record.epoch}`);
      inFlight.set(e.record.epoch, e.result.epochsInFlight);
    });
    await loop.start();
    await loop.scheduleDone;
    const es = loop.epochs;
    expect(es.map((e) => [e.epoch, e.parent])).toEqual([
      [0, undefined],
      [1, 0],
      [2, 1],
      [3, 2],
    ]);
    // epoch 2 captured (released) before epoch 1 was written, and 3 before 2
    expect(order.indexOf('released-2')).toBeLessThan(order.indexOf('written-1'));
    expect(order.indexOf('released-3')).toBeLessThan(order.indexOf('written-2'));
    expect(order.filter((o) => o.startsWith('written'))).toEqual(['written-0', 'written-1', 'written-2', 'written-3']);
    for (const k of [2, 3]) {
      const prev = es[k - 1]!;
      // the barrier of epoch k fell inside the write of epoch k-1 (its release + writeNs) ...
      expect(es[k]!.barrierAtNs).toBeLessThan(prev.barrierAtNs + prev.pauseNs + prev.writeNs);
      expect(es[k]!.barrierAtNs - prev.barrierAtNs).toBeLessThan(300e6);
    }
    // ... as the engine says: an earlier epoch was in flight at its capture
    expect(inFlight.get(0)).toBe(0);
    expect(inFlight.get(2)).toBeGreaterThanOrEqual(1);
    expect(inFlight.get(3)).toBeGreaterThanOrEqual(1);
    expect(es[2]!.writeNs).toBeGreaterThanOrEqual(400e6);
    expect(listEpochs(img).map((e) => e.epoch)).toEqual([0, 1, 2, 3]);
    await loop.stop();
  });

  it('with maxAhead 1 each epoch is shipped before the next barrier; a sink that fails ends the loop with its code, the app released', async () => {
    const fx = await startFixture({ mb: 1 });
    const seen: number[] = [];
    const slow: EpochSink = {
      name: 'slow',
      epoch: async (e) => {
        seen.push(e.record.epoch);
        await new Promise((r) => setTimeout(r, 300));
        if (e.record.epoch === 2) throw new UnderstudyError('E_TIMEOUT', 'the standby did not answer');
      },
    };
    const loop = protect({ pid: fx.pid, imageDir: join(tmp('img'), 'image'), graph: 'none', schedule: { intervalMs: 20 }, sinks: [slow], maxAhead: 1 });
    await loop.start();
    const end = await loop.ended;
    expect(end).toMatchObject({
      reason: 'failed',
      epochs: 3,
      error: { code: 'E_TIMEOUT', message: 'epoch 2: the slow sink failed: the standby did not answer' },
    });
    expect(seen).toEqual([0, 1, 2]);
    // each barrier waited for the sink of the epoch before (300 ms), not only the 20 ms interval
    for (let i = 1; i < 3; i++) expect(loop.epochs[i]!.barrierAtNs - loop.epochs[i - 1]!.barrierAtNs).toBeGreaterThanOrEqual(300e6);
    expect(procState(fx.pid).tracer).toBe(0);
    expect(await settledState(fx.pid)).toBe('S');
    expect(await fx.write(2, 4)).toHaveLength(2);
  });

  it('a checkpoint the engine calls busy (E_BUSY) is tried again, then fails with its code, the app running', async () => {
    const fx = await startFixture({ mb: 1 });
    // the engine's test hook: every read of ITIMER_REAL looks raced by its firing, so every capture is E_BUSY
    const loop = protect({ pid: fx.pid, imageDir: join(tmp('img'), 'image'), graph: 'none', engine: { env: { UNDERSTUDY_ENGINE_ITIMER_RACE: '1' } } });
    const retries: number[] = [];
    loop.on('stage', (s) => s.stage === 'retry' && retries.push(s.epoch));
    await expect(loop.start()).rejects.toMatchObject({ code: 'E_BUSY', message: expect.stringMatching(/try the checkpoint again/) });
    expect(retries).toEqual([0, 0]); // three attempts in all
    expect(loop.epochs).toHaveLength(0);
    expect(procState(fx.pid).tracer).toBe(0);
    expect(await settledState(fx.pid)).toBe('S');
    expect(await fx.write(2, 9)).toHaveLength(2);
  });

  it('ends by itself when the app exits: no failure, engine and tracer gone', async () => {
    const fx = await startFixture({ mb: 1 });
    const loop = protect({ pid: fx.pid, imageDir: join(tmp('img'), 'image'), graph: 'live', schedule: { intervalMs: 20 } });
    const failed: string[] = [];
    loop.on('failed', (e) => failed.push(e.code));
    await loop.start();
    // exits while epochs come every 20 ms: whether its exit is seen by the tracer or by a checkpoint, the loop ends, not fails
    const enginePid = loop.enginePid!;
    const tracerPid = loop.tracerPid!;
    fx.kill();
    const end = await loop.ended;
    expect(end.reason).toBe('app-exited');
    expect(end.error).toBeUndefined();
    expect(failed).toEqual([]);
    expect(alive(enginePid)).toBe(false);
    expect(pinnedByUs()).toEqual([]);
    await waitFor('the tracer to exit', () => !alive(tracerPid) || undefined, 30_000);
    expect(await loop.stop()).toMatchObject({ reason: 'app-exited' });
  });

  it('stop leaves nothing behind: engine exited, tracer stopped and unpinned, app running untraced (or killed when asked)', async () => {
    const fx = await startFixture({ mb: 2 });
    const loop = protect({ pid: fx.pid, imageDir: join(tmp('img'), 'image'), graph: 'live', schedule: { intervalMs: 50 } });
    await loop.start();
    await waitFor('two deltas', () => loop.epochs.length >= 3 || undefined, 10_000);
    const enginePid = loop.enginePid!;
    const helperPid = loop.tracerPid!;
    expect(alive(enginePid) && alive(helperPid)).toBe(true);
    const end = await loop.stop();
    expect(end.reason).toBe('stopped');
    const n = loop.epochs.length;
    expect(end.epochs).toBe(n);
    expect(alive(enginePid)).toBe(false);
    expect(pinnedByUs()).toEqual([]);
    // the streamer detaches its programs after its stream ended (a grace period each), then exits
    await waitFor('the tracer helper to exit', () => !alive(helperPid) || undefined, 30_000);
    expect(procState(fx.pid).tracer).toBe(0);
    expect(await settledState(fx.pid)).toBe('S');
    // no epoch after the stop
    await new Promise((r) => setTimeout(r, 200));
    expect(loop.epochs).toHaveLength(n);
    expect(await fx.write(2, 5)).toHaveLength(2);
    await expect(loop.requestEpoch()).rejects.toMatchObject({ code: 'E_USAGE' });

    // kill: CRIU's default after a dump
    const fx2 = await startFixture({ mb: 1 });
    const loop2 = protect({ pid: fx2.pid, imageDir: join(tmp('img'), 'image'), graph: 'none', incremental: false });
    await loop2.start();
    await loop2.stop({ app: 'kill' });
    await waitFor('the app killed', () => fx2.proc.signalCode ?? undefined, 5000);
    expect(fx2.proc.signalCode).toBe('SIGKILL');
  });
});
