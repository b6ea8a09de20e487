// Scheduling across checkpoint -> kill -> restore: each thread's policy (with
// SCHED_RESET_ON_FORK), real-time priority, nice and CPU affinity come back on
// its restored tid, and an image with values that cannot be valid is refused
// before anything is created.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { processesOf, rewriteEpochMeta } from '../../src/image/store.js';
import { showImage } from '../../src/image/show.js';
import { RestoreError, restore } from '../../src/native/restorer.js';
import { alive, dumpAndKill, epochDir, killPids, onCleanup, python, runCleanups, tmp, waitFor } from './helpers.js';

afterEach(runCleanups);

// main: SCHED_BATCH, nice 7, CPU 1; thread a: SCHED_RR priority 2 with
// SCHED_RESET_ON_FORK, CPU 0; thread b: SCHED_IDLE, nice 3 (the rest inherited)
const APP = `
import os, threading, time
os.closerange(3, 65536)  # only its own stdio: a runner's leaked fd would make it refused
os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
os.setpriority(os.PRIO_PROCESS, 0, 7)
os.sched_setaffinity(0, {1})
ids = []
def a():
    ids.append(threading.get_native_id())
    os.sched_setaffinity(0, {0})
    os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(2))
    while True: time.sleep(0.05)
def b():
    ids.append(threading.get_native_id())
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    os.setpriority(os.PRIO_PROCESS, 0, 3)
    while True: time.sleep(0.05)
threading.Thread(target=a, daemon=True).start()
time.sleep(0.1)
threading.Thread(target=b, daemon=True).start()
time.sleep(0.2)
open('ready', 'w').write(' '.join(map(str, ids)))
while True: time.sleep(0.05)
`;

/** What the kernel says of a tid: [policy with flags, priority, nice, sorted CPUs]. */
function schedOf(tid: number): [number, number, number, number[]] {
  const out = execFileSync('python3', [
    '-c',
    `import os,sys; t=int(sys.argv[1]); print(os.sched_getscheduler(t), os.sched_getparam(t).sched_priority, os.getpriority(os.PRIO_PROCESS, t), *sorted(os.sched_getaffinity(t)))`,
    String(tid),
  ]).toString();
  const [pol, prio, nice, ...cpus] = out.trim().split(' ').map(Number);
  return [pol!, prio!, nice!, cpus];
}

const RESET_ON_FORK = 0x40000000;

describe('scheduling attributes', () => {
  it('policy, reset-on-fork, priority, nice and affinity of every thread come back', async () => {
    const ctl = tmp('sched');
    const pid = python(APP, ctl);
    await waitFor('the app ready', () => existsSync(join(ctl, 'ready')) && readFileSync(join(ctl, 'ready'), 'utf8').includes(' '));
    const [ta, tb] = readFileSync(join(ctl, 'ready'), 'utf8').split(' ').map(Number) as [number, number];
    const before = [schedOf(pid), schedOf(ta), schedOf(tb)];
    // set as asked, so that a restore that keeps the defaults cannot pass
    expect(before).toEqual([
      [3, 0, 7, [1]],
      [2 | RESET_ON_FORK, 2, 7, [0]], // nice and affinity are inherited by a new thread
      [5, 0, 3, [1]],
    ]);
    const img = join(tmp('sched-img'), 'image');
    await dumpAndKill(pid, img, 1);
    // image show names them, per thread
    const shown = showImage(img, { epoch: 1, json: false });
    expect(shown).toContain(`sched BATCH nice 7 cpus 1`);
    expect(shown).toContain(`sched RR 2 reset-on-fork nice 7 cpus 0`);
    expect(shown).toContain(`sched IDLE nice 3 cpus 1`);
    const json = JSON.parse(showImage(img, { epoch: 1, json: true })) as { epochs: { processes: { threads: { tid: number; sched: unknown }[] }[] }[] };
    expect(json.epochs[0]!.processes[0]!.threads.find((t) => t.tid === ta)!.sched).toEqual({ policy: 2, resetOnFork: true, priority: 2, nice: 7, cpus: [0] });
    const r = await restore({ imageDir: img });
    onCleanup(() => killPids([r.reaper, ...r.pids]));
    expect(r.pids).toEqual([pid]);
    expect([schedOf(pid), schedOf(ta), schedOf(tb)]).toEqual(before);
  });

  it('an image with a scheduling value no kernel gives is refused before anything is created', async () => {
    const ctl = tmp('sched-bad');
    const pid = python(APP, ctl);
    await waitFor('the app ready', () => existsSync(join(ctl, 'ready')) && readFileSync(join(ctl, 'ready'), 'utf8').includes(' '));
    const img = join(tmp('sched-bad-img'), 'image');
    await dumpAndKill(pid, img, 0);
    const bad: [string, (s: { policy?: number | null; priority?: number | null; nice?: number | null }) => void][] = [
      ['SCHED_RR priority 0', (s) => Object.assign(s, { policy: 2, priority: 0 })],
      ['nice 40', (s) => (s.nice = 40)],
      ['policy 6 (SCHED_DEADLINE)', (s) => (s.policy = 6)],
    ];
    for (const [what, edit] of bad) {
      rewriteEpochMeta(epochDir(img, 0), (m) => edit(processesOf(m).find((p) => p.pid === pid)!.threads![0]!.sched!));
      const err = await restore({ imageDir: img }).then(
        (r) => void killPids([r.reaper, ...r.pids]),
        (e: unknown) => e,
      );
      expect(err, what).toBeInstanceOf(RestoreError);
      expect((err as RestoreError).code, what).toBe('E_IMAGE_CORRUPT');
      expect((err as RestoreError).message, what).toMatch(new RegExp(`^pid ${pid} tid ${pid}: scheduling policy .* is not a valid one`));
      expect((err as RestoreError).killed, what).toEqual([]);
      expect(alive(pid), what).toBe(false);
      // put the good values back for the next case
      rewriteEpochMeta(epochDir(img, 0), (m) => {
        const s = processesOf(m).find((p) => p.pid === pid)!.threads![0]!.sched!;
        [s.policy, s.priority, s.nice] = [3, 0, 7];
      });
    }
  });
});
