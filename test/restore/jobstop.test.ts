// An app in a job-control stop (SIGSTOP, Ctrl-Z) at the checkpoint comes back
// stopped, every thread of it, and goes on counting on SIGCONT — as it would
// have without the checkpoint.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { restore } from '../../src/native/restorer.js';
import { dumpAndKill, killPids, onCleanup, python, runCleanups, sleep, tmp, waitFor } from './helpers.js';

afterEach(runCleanups);

// two threads each count in a file of their own, every 20 ms
const APP = `
import os, threading, time
os.closerange(3, 65536)
def count(name):
    n = 0
    while True:
        n += 1
        with open(name + '.tmp', 'w') as f: f.write(str(n))
        os.rename(name + '.tmp', name)
        time.sleep(0.02)
threading.Thread(target=count, args=('b',), daemon=True).start()
count('a')
`;

const states = (pid: number): string[] =>
  readdirSync(`/proc/${pid}/task`).map((t) => readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8').replace(/^.*\) /s, '')[0]!);
const counts = (dir: string): number[] => ['a', 'b'].map((n) => Number(readFileSync(join(dir, n), 'utf8')));

describe('job-control stop', () => {
  it('an app stopped (SIGSTOP) at the checkpoint comes back stopped, all its threads, and counts on after SIGCONT', async () => {
    const ctl = tmp('jobstop');
    const pid = python(APP, ctl);
    await waitFor('both threads counting', () => existsSync(join(ctl, 'a')) && existsSync(join(ctl, 'b')));
    process.kill(pid, 'SIGSTOP');
    await waitFor('the app stopped', () => states(pid).every((s) => s === 'T'));
    expect(states(pid)).toHaveLength(2);
    const img = join(tmp('jobstop-img'), 'image');
    await dumpAndKill(pid, img, 1);
    const atDump = counts(ctl);
    const r = await restore({ imageDir: img });
    onCleanup(() => killPids([r.reaper, ...r.pids]));
    expect(r.pids).toEqual([pid]);
    await waitFor('the restored app stopped', () => states(pid).every((s) => s === 'T'), 3000);
    expect(states(pid)).toHaveLength(2);
    await sleep(300);
    expect(counts(ctl), 'nothing counted while stopped').toEqual(atDump);
    expect(states(pid)).toEqual(['T', 'T']);
    process.kill(pid, 'SIGCONT');
    await waitFor('both threads counting on', () => counts(ctl).every((c, i) => c > atDump[i]! + 2), 5000);
  });
});
