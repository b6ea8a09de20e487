// Timers in the image: interval timers (read by the engine's BPF task
// iterator, or by injected getitimer without it) and POSIX timers (from
// /proc/PID/timers and injected timer_gettime), with the values the fixture
// set; `understudy image show` lists them; and the timer states that cannot
// be restored exactly are refused, naming pid and timer. The round trips
// (rs_timers, rs_alarm) are in fixtures.test.ts.
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EngineClient } from '../../src/native/engine.js';
import { showImage } from '../../src/image/show.js';
import { processesOf, readEpochMeta } from '../../src/image/store.js';
import { understudy } from '../../src/gen/proto.js';
import { buildDir } from '../../src/util/paths.js';
import { killPids, onCleanup, runCleanups, startFixture, tmp, waitFor } from './helpers.js';

afterEach(runCleanups);

const MS = 1_000_000;
const SIGRTMIN = 34; // glibc's

async function captureTimers(noIter: boolean): Promise<{ pid: number; dir: string; proc: ReturnType<typeof processesOf>[number] }> {
  const ctl = tmp('tm');
  const fx = await startFixture('rs_timers', ctl);
  const engine = EngineClient.start({ env: { UNDERSTUDY_ENGINE_NO_TASKITER: noIter ? '1' : undefined } });
  onCleanup(() => engine.kill());
  const dir = join(tmp('tm-img'), 'image');
  try {
    await engine.attach(fx.pid, { trackDirty: true });
    await engine.checkpoint({ imageDir: dir });
    // a delta: the values are read again at every barrier
    const e1 = await engine.checkpoint({ imageDir: dir });
    await engine.detach();
    return { pid: fx.pid, dir, proc: processesOf(readEpochMeta(e1.epochDir))[0]! };
  } finally {
    await engine.close();
    killPids([fx.pid]);
  }
}

function checkTimers(pid: number, p: ReturnType<typeof processesOf>[number]): void {
  const W = understudy.v1.ITimer.Which;
  const it = Object.fromEntries(p.itimers.map((t) => [W[t.which ?? 0], { value: Number(t.valueNs), interval: Number(t.intervalNs) }]));
  expect(Object.keys(it).sort()).toEqual(['PROF', 'REAL', 'VIRTUAL']);
  expect(it.REAL!.interval).toBe(200 * MS);
  expect(it.REAL!.value).toBeGreaterThan(0);
  expect(it.REAL!.value).toBeLessThanOrEqual(200 * MS);
  expect(it.PROF!.interval).toBe(20 * MS);
  expect(it.PROF!.value).toBeGreaterThan(0);
  expect(it.PROF!.value).toBeLessThanOrEqual(25 * MS); // up to a tick (4 ms) over, as getitimer itself
  expect(it.VIRTUAL!.interval).toBe(30 * MS);
  expect(it.VIRTUAL!.value).toBeGreaterThan(0);
  expect(it.VIRTUAL!.value).toBeLessThanOrEqual(35 * MS);
  // timers 0 (A), 2 (C), 3 (D); 1 (B) was deleted
  const pt = [...p.posixTimers].sort((a, b) => (a.id ?? 0) - (b.id ?? 0));
  expect(pt.map((t) => t.id ?? 0)).toEqual([0, 2, 3]);
  const [a, c, d] = pt as [(typeof pt)[number], (typeof pt)[number], (typeof pt)[number]];
  expect({ clock: a.clockId ?? 0, notify: a.notify ?? 0, signo: a.signo, sival: Number(a.sival), interval: Number(a.intervalNs) }).toEqual({
    clock: 1,
    notify: 0,
    signo: SIGRTMIN + 1,
    sival: 0x5eed0001,
    interval: 100 * MS,
  });
  expect(Number(a.valueNs)).toBeGreaterThan(0);
  expect(Number(a.valueNs)).toBeLessThanOrEqual(100 * MS);
  expect(c.notify).toBe(1); // SIGEV_NONE
  expect(Number(c.intervalNs ?? 0)).toBe(0);
  expect(Number(c.valueNs)).toBeLessThan(60_000 * MS);
  expect(Number(c.valueNs)).toBeGreaterThan(40_000 * MS);
  expect({ notify: d.notify, signo: d.signo, sival: Number(d.sival), tid: d.targetTid, nsTid: d.nsTargetTid, interval: Number(d.intervalNs) }).toEqual({
    notify: 4, // SIGEV_THREAD_ID
    signo: SIGRTMIN + 2,
    sival: 0x7777,
    tid: pid,
    nsTid: pid,
    interval: 150 * MS,
  });
  for (const t of pt) expect(t.overrun ?? 0).toBe(0);
}

describe('timers in the image', () => {
  it('interval and POSIX timers read by the task iterator carry the values the app set; image show lists them', async () => {
    const { pid, dir, proc } = await captureTimers(false);
    checkTimers(pid, proc);
    const text = showImage(dir, { epoch: 1, json: false });
    expect(text).toMatch(/timers 6/);
    expect(text).toMatch(/itimer REAL: 0\.\d+ s left, interval 0\.200000 s/);
    expect(text).toMatch(/itimer PROF: 0\.\d+ s left, interval 0\.020000 s/);
    expect(text).toMatch(/posix timer 0: MONOTONIC SIGEV_SIGNAL signal 35 sival 0x5eed0001, 0\.\d+ s left, interval 0\.100000 s, overrun 0/);
    expect(text).toMatch(/posix timer 2: MONOTONIC SIGEV_NONE, [45]\d\.\d+ s left/);
    expect(text).toMatch(new RegExp(`posix timer 3: MONOTONIC SIGEV_THREAD_ID tid ${pid} \\(ns ${pid}\\) signal 36 sival 0x7777`));
    const json = JSON.parse(showImage(dir, { epoch: 1, json: true })) as {
      epochs: { processes: { itimers: { which: string; intervalNs: number }[]; posixTimers: { id: number; sival: number }[] }[] }[];
    };
    const jp = json.epochs[0]!.processes[0]!;
    expect(jp.itimers.find((t) => t.which === 'REAL')!.intervalNs).toBe(200 * MS);
    expect(jp.posixTimers.map((t) => t.id).sort()).toEqual([0, 2, 3]);
  });

  it('without the task iterator, injected getitimer gives the same interval timers', async () => {
    const { pid, proc } = await captureTimers(true);
    checkTimers(pid, proc);
  });
});

async function refused(mode: string): Promise<{ pid: number; engine: EngineClient }> {
  const ctl = tmp(`tr-${mode}`);
  const fx = await startFixture('timers_refused', ctl, [resolve(buildDir, 'fixtures', 'timers_refused'), ctl, mode]);
  await waitFor(`timers_refused ${mode} to be ready`, () => existsSync(join(ctl, 'ready')));
  const engine = EngineClient.start();
  onCleanup(() => engine.kill());
  return { pid: fx.pid, engine };
}

function tracerOf(pid: number): number {
  return Number(/TracerPid:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

/** Attach succeeds, the checkpoint is refused with E_UNSUPPORTED and `message(pid)`, no epoch is written, and the app is let go. */
async function refusedAtCheckpoint(mode: string, message: (pid: number) => string): Promise<void> {
  const { pid, engine } = await refused(mode);
  const dir = join(tmp('tr-img'), 'image');
  try {
    await engine.attach(pid, { trackDirty: true });
    await expect(engine.checkpoint({ imageDir: dir })).rejects.toMatchObject({
      code: 'E_UNSUPPORTED',
      message: expect.stringMatching(new RegExp(message(pid))),
    });
    expect(existsSync(join(dir, 'epoch-000000'))).toBe(false);
  } finally {
    await engine.close();
  }
  expect(tracerOf(pid)).toBe(0);
}

describe('timer states that cannot be restored exactly are refused', () => {
  it('a glibc SIGEV_THREAD POSIX timer: refused at attach, naming pid, timer and why', async () => {
    const { pid, engine } = await refused('thread');
    try {
      await expect(engine.attach(pid, { trackDirty: true })).rejects.toMatchObject({
        code: 'E_UNSUPPORTED',
        message: expect.stringMatching(new RegExp(`pid ${pid} has POSIX timer 0 with SIGEV_THREAD notification \\(glibc`)),
      });
    } finally {
      await engine.close();
    }
    expect(tracerOf(pid)).toBe(0);
  });

  it('a timer on the CPU clock of the calling thread in a process of two threads: refused at attach', async () => {
    const { pid, engine } = await refused('threadclock');
    try {
      await expect(engine.attach(pid, { trackDirty: true })).rejects.toMatchObject({
        code: 'E_UNSUPPORTED',
        message: expect.stringMatching(new RegExp(`pid ${pid} has POSIX timer 0 on the CPU-time clock of the thread that created it .* 2 threads`)),
      });
    } finally {
      await engine.close();
    }
    expect(tracerOf(pid)).toBe(0);
  });

  it('a POSIX timer whose last signal carried overruns: refused at the checkpoint, no epoch written', async () => {
    await refusedAtCheckpoint('overrun', (pid) => `pid ${pid}: POSIX timer 0's last signal carried \\d+ overruns`);
  });

  it('an ITIMER_REAL that expired while SIGALRM was ignored (never re-armed): refused at the checkpoint', async () => {
    await refusedAtCheckpoint('ignored', (pid) => `pid ${pid}: its ITIMER_REAL \\(interval 1000000000 ns\\) expired while SIGALRM was ignored`);
  });
});
