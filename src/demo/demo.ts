// The quick start's main job on the embedded default: check the kernel, then
// protect a small demo app end to end — its dependency graph, an epoch-0
// checkpoint and incremental epochs with exact dirty tracking, a crash (the
// app is killed), and a restore from the last epoch with the same PID that
// carries on counting from where that epoch left it.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ProtectLoop } from '../agent/protect.js';
import { snapshot } from '../graph/sockets.js';
import { restore, type RestoreResult } from '../native/restorer.js';
import { UnderstudyError } from '../util/errors.js';

/**
 * The demo app: a counter held in memory, written in place (fixed width) to a
 * file it keeps open, 20 times a second. (It used to write a temporary file and
 * rename it over the count: a checkpoint that fell between the open and the
 * rename held an fd on a path gone by the time of the restore, which refuses
 * it — a file renamed under an open fd is not carried yet.)
 */
const DEMO_APP = [
  'import os, sys, time',
  // fds a shell may have leaked into the agent (and so into the app) are not the app's
  'os.closerange(3, 4096)',
  'out = sys.argv[1]',
  'fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)',
  'n = 0',
  'while True:',
  '    n += 1',
  '    os.pwrite(fd, b"%012d" % n, 0)',
  '    time.sleep(0.05)',
].join('\n');

export interface DemoReport {
  workDir: string;
  app?: { pid: number; processes: number; graphNodes: number; externalDependencies: number };
  epochs?: { epoch: number; full: boolean; pages: number; pauseMs: number }[];
  crashedAt?: number;
  restored?: { pids: number[]; epoch: number; restoreMs: number; countAfterRestore: number; countAtRestore: number };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function readCount(file: string): number {
  try {
    return Number(readFileSync(file, 'utf8'));
  } catch {
    return 0;
  }
}

async function waitFor(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > until) throw new UnderstudyError('E_INTERNAL', `demo: timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** Waits until none of pids is listed in /proc any more; the ones still listed after ms. */
async function waitGone(pids: number[], ms: number): Promise<number[]> {
  const listed = (): number[] => pids.filter((p) => p > 1 && existsSync(`/proc/${p}`));
  const until = Date.now() + ms;
  while (listed().length && Date.now() < until) await sleep(20);
  return listed();
}

function kill(pids: number[]): void {
  for (const p of pids) {
    // 0 or -1 would signal our own process group or every process
    if (!(p > 1)) continue;
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // gone already
    }
  }
}

/**
 * Runs the demo app through checkpoint, crash and restore; `say` gets a line
 * for a person as each step completes. Whatever fails, the demo app and its
 * restored copy are killed before this returns.
 */
export async function runDemo(dataDir: string, say: (line: string) => void): Promise<DemoReport> {
  const work = join(dataDir, 'demo');
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const report: DemoReport = { workDir: work };
  const counter = join(work, 'count');
  const imageDir = join(work, 'image');
  const toKill: number[] = [];
  let reaper = 0;
  // Ctrl-C or SIGTERM would end the agent without running the finally below,
  // leaving the demo app (its own process group, so not signalled with us)
  // counting for ever: kill what we started, then die of the signal as usual.
  // The app is our child: it must be reaped (by us, while we live) before we
  // go, or it stays a zombie of whatever adopts it.
  const onSignal = (sig: NodeJS.Signals): void => {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    kill(toKill);
    void waitGone(appPids(), 3_000).finally(() => process.kill(process.pid, sig));
  };
  // the reaper of a restored copy is reaped by whoever adopted it: not waited for
  const appPids = (): number[] => report.restored?.pids ?? toKill.filter((p) => p !== reaper);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const child = spawn('python3', ['-c', DEMO_APP, counter], { stdio: 'ignore', detached: true, cwd: work });
    const pid = child.pid;
    if (pid === undefined) throw new UnderstudyError('E_INTERNAL', 'demo: could not start python3');
    child.unref();
    toKill.push(pid);
    await waitFor('the demo app to start counting', () => readCount(counter) >= 3);
    say(`\nStarted a demo app (python3, pid ${pid}) that counts in memory and writes the count to ${counter}.`);

    // the protect loop: a graph seeded from /proc, epoch 0, then 5 deltas 150 ms apart
    const loop = new ProtectLoop({ pid, imageDir, graph: 'seed', schedule: { intervalMs: 150, maxDeltas: 5 } });
    loop.on('epoch', ({ record: r }) =>
      say(`  epoch ${r.epoch} (${r.full ? 'full' : 'delta'}): ${r.pages} pages, app paused ${(r.pauseNs / 1e6).toFixed(2)} ms`),
    );
    try {
      await loop.attach();
      const graph = loop.graph!;
      const snap = await snapshot(graph);
      report.app = {
        pid,
        processes: graph.pids().length,
        graphNodes: snap.nodes.length,
        externalDependencies: snap.externalDependencies.length,
      };
      say(`Its dependency graph: ${snap.nodes.length} nodes (try: understudy graph --pid ${pid} --format svg -o app.svg).`);
      await loop.start();
      await loop.scheduleDone;
    } finally {
      // releases the app (or reports why it was released already)
      await loop.stop();
    }
    const epochs = loop.epochs;
    report.epochs = epochs.map((r) => ({ epoch: r.epoch, full: r.full, pages: r.pages, pauseMs: r.pauseNs / 1e6 }));
    say(`Checkpointed into ${imageDir}: epoch 0 in full, then only the pages written since the epoch before.`);

    await sleep(200);
    kill([pid]);
    // gone entirely (reaped, not a zombie), so that its pid is free for the restore
    await waitFor('the demo app to die and be reaped', () => !existsSync(`/proc/${pid}`));
    // its pid is free now and may go to any process: never signal it again unless the restore takes it back
    toKill.splice(toKill.indexOf(pid), 1);
    const crashedAt = readCount(counter);
    report.crashedAt = crashedAt;
    say(`Killed the app at count ${crashedAt} (a crash, as far as it knows).`);

    const last = epochs.at(-1)!;
    const r: RestoreResult = await restore({ imageDir });
    reaper = r.reaper;
    toKill.push(...r.pids, r.reaper);
    const atRestore = readCount(counter);
    await waitFor('the restored app to count on', () => readCount(counter) > atRestore && readCount(counter) !== crashedAt);
    await sleep(200);
    const after = readCount(counter);
    report.restored = { pids: r.pids, epoch: r.epoch, restoreMs: r.restoreNs / 1e6, countAfterRestore: after, countAtRestore: atRestore };
    say(
      `Restored epoch ${r.epoch} in ${(r.restoreNs / 1e6).toFixed(1)} ms with the same pid ${r.pids.join(', ')}: ` +
        `it counts on from its memory at epoch ${last.epoch} (now ${after}).`,
    );
    if (!existsSync(counter)) throw new UnderstudyError('E_INTERNAL', 'demo: the restored app did not write its count');
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    kill(toKill);
    // SIGKILL is delivered, not done: return when nothing of the app is left
    const left = await waitGone(appPids(), 5_000);
    if (left.length) say(`Note: pid(s) ${left.join(', ')} still listed 5 s after SIGKILL.`);
  }
  say('Stopped the restored app. The image stays in ' + imageDir + ' (try: understudy image show ' + imageDir + ').');
  return report;
}
