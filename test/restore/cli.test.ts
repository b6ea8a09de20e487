// The CLI end to end: `understudy dump` then `understudy restore -D DIR --json`,
// and its refusals (usage, a corrupted image) with their exit statuses.
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { alive, killPids, onCleanup, runCleanups, startFixture, tmp, verdict, waitFor } from './helpers.js';

afterEach(runCleanups);

describe('understudy restore', () => {
  it('restores what `understudy dump` wrote, same pid, detached, and prints the pids', async () => {
    const ctl = tmp('cli');
    const img = join(tmp('cli-img'), 'image');
    const fx = await startFixture('rs_threads', ctl);
    const d = await runCli(['dump', '--pid', String(fx.pid), '-D', img, '--epochs', '2', '--interval-ms', '20']);
    expect(d.exitCode, d.stderr).toBe(0);
    await waitFor('the dumped app to be gone', () => !alive(fx.pid));
    const c = await runCli(['restore', '-D', img, '--check']);
    expect(c.exitCode, c.stderr).toBe(0);
    expect(c.stdout).toContain(`pids ${fx.pid} are free`);
    const r = await runCli(['restore', '-D', img, '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
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
    const d = await runCli(['dump', '--pid', String(fx.pid), '-D', img]);
    expect(d.exitCode, d.stderr).toBe(0);
    await waitFor('the dumped app to be gone', () => !alive(fx.pid));
    const r = await runCli(['restore', '-D', img, '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout) as { pids: number[]; reaper: number; epoch: number };
    onCleanup(() => killPids([rep.reaper, ...rep.pids]));
    expect(rep.pids).toEqual([fx.pid]);
    expect(rep.epoch).toBe(0);
    expect(await verdict(ctl)).toBe('PASS');
  });

  it('usage errors exit 2; a refused restore exits 1 with the error code and message', async () => {
    const u = await runCli(['restore']);
    expect(u.exitCode).toBe(2);
    expect(u.stderr + u.stdout).toContain('-D/--dir is required');
    const e = await runCli(['restore', '-D', img0(), '--epoch', 'x']);
    expect(e.exitCode).toBe(2);
    const n = await runCli(['restore', '-D', tmp('none')]);
    expect(n.exitCode).toBe(1);
    expect(n.stderr + n.stdout).toMatch(/not an image/);
  });
});

function img0(): string {
  return tmp('img0');
}
