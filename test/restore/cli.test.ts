// The CLI end to end: `understudy dump` then `understudy restore -D DIR --json`,
// and its refusals (usage, a corrupted image) with their exit statuses.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/util/paths.js';
import { alive, killPids, onCleanup, runCleanups, startFixture, tmp, verdict, waitFor } from './helpers.js';

const run = promisify(execFile);
const cli = join(packageRoot, 'bin', 'understudy.js');

afterEach(runCleanups);

async function understudy(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run('node', [cli, ...args]);
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

describe('understudy restore', () => {
  it('restores what `understudy dump` wrote, same pid, detached, and prints the pids', async () => {
    const ctl = tmp('cli');
    const img = join(tmp('cli-img'), 'image');
    const fx = await startFixture('rs_threads', ctl);
    const d = await understudy(['dump', '--pid', String(fx.pid), '-D', img, '--epochs', '2', '--interval-ms', '20']);
    expect(d.code, d.stderr).toBe(0);
    await waitFor('the dumped app to be gone', () => !alive(fx.pid));
    const c = await understudy(['restore', '-D', img, '--check']);
    expect(c.code, c.stderr).toBe(0);
    expect(c.stdout).toContain(`pids ${fx.pid} are free`);
    const r = await understudy(['restore', '-D', img, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout) as { pids: number[]; reaper: number; threads: number; epoch: number };
    onCleanup(() => killPids([rep.reaper, ...rep.pids]));
    expect(rep.pids).toEqual([fx.pid]);
    expect(rep.threads).toBe(5);
    expect(rep.epoch).toBe(2);
    // the CLI has exited; the app runs on by itself
    expect(alive(fx.pid)).toBe(true);
    expect(await verdict(ctl)).toBe('PASS');
  });

  it('restores a plain full `understudy dump` (no dirty tracking), like CRIU dump then restore', async () => {
    const ctl = tmp('cli-full');
    const img = join(tmp('cli-full-img'), 'image');
    const fx = await startFixture('rs_counter', ctl);
    const d = await understudy(['dump', '--pid', String(fx.pid), '-D', img]);
    expect(d.code, d.stderr).toBe(0);
    await waitFor('the dumped app to be gone', () => !alive(fx.pid));
    const r = await understudy(['restore', '-D', img, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout) as { pids: number[]; reaper: number; epoch: number };
    onCleanup(() => killPids([rep.reaper, ...rep.pids]));
    expect(rep.pids).toEqual([fx.pid]);
    expect(rep.epoch).toBe(0);
    expect(await verdict(ctl)).toBe('PASS');
  });

  it('usage errors exit 2; a refused restore exits 1 with the error code and message', async () => {
    const u = await understudy(['restore']);
    expect(u.code).toBe(2);
    expect(u.stderr + u.stdout).toContain('-D/--dir is required');
    const e = await understudy(['restore', '-D', img0(), '--epoch', 'x']);
    expect(e.code).toBe(2);
    const n = await understudy(['restore', '-D', tmp('none')]);
    expect(n.code).toBe(1);
    expect(n.stderr + n.stdout).toMatch(/not an image/);
  });
});

function img0(): string {
  return tmp('img0');
}
