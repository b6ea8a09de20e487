// The process tree and the live-process check that trace/, graph/ and the CLI share.
import { spawn } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import type { UnderstudyError } from '../../src/util/errors.js';
import { descendantsOf, isLive, readStat, requireProcess } from '../../src/proc/procfs.js';

describe('proc: the process tree', () => {
  const kill: number[] = [];
  afterEach(() => {
    for (const pid of kill.splice(0)) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  });

  it('descendantsOf finds children and grandchildren, and nothing outside', async () => {
    // sh -> (sleep, sh -> sleep): two levels below the root
    const root = spawn('/bin/sh', ['-c', 'sleep 30 & /bin/sh -c "sleep 30 & wait" & wait'], { stdio: 'ignore', detached: true });
    kill.push(root.pid!);
    let all: number[] = [];
    for (let i = 0; i < 100 && all.length < 4; i++) {
      await new Promise((r) => setTimeout(r, 20));
      all = descendantsOf([root.pid!]);
    }
    expect(all[0]).toBe(root.pid);
    expect(all).toHaveLength(4);
    expect(all.map((p) => readStat(p)!.comm).sort()).toEqual(['sh', 'sh', 'sleep', 'sleep']);
    // every one's parent is in the set (or is the root's own parent)
    for (const p of all.slice(1)) expect(all).toContain(readStat(p)!.ppid);
    expect(all).not.toContain(process.pid);
    expect(descendantsOf([999_999_999])).toEqual([999_999_999]); // a root is returned as given
  });

  it('requireProcess refuses what is not a live process, with what to do', async () => {
    expect(() => requireProcess(process.pid)).not.toThrow();
    expect(() => requireProcess(0)).toThrow(expect.objectContaining({ code: 'E_USAGE' }) as UnderstudyError);
    const z = spawn('true', { stdio: 'ignore' });
    // exited: a zombie until reaped, then gone; not live either way
    await new Promise((r) => setTimeout(r, 200));
    expect(readStat(z.pid!)?.state === 'Z' || readStat(z.pid!) === undefined).toBe(true);
    expect(isLive(z.pid!)).toBe(false);
    expect(() => requireProcess(999_999)).toThrow(/no running process with PID 999999.*understudy check/);
  });
});
