import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { killPids, onCleanup, runCleanups, tmpDir } from '../helpers/cleanup.js';
import { runCli } from '../helpers/cli.js';
import { waitFor } from '../helpers/wait.js';

// `understudy run`: an app in its own PID namespace, as its pid 1, with no fd
// from the caller; then the dump -> kill -> restore cycle it exists for.
afterEach(runCleanups);

const COUNTER = 'import time\ni = 0\nwhile True:\n    i += 1\n    print(i, flush=True)\n    time.sleep(0.05)\n';

function lines(file: string): number[] {
  return readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map(Number);
}

describe('understudy run', () => {
  it('starts the app as pid 1 of its own PID namespace, with only its own stdio, then it survives dump -> kill -> restore', async () => {
    const dir = tmpDir('run');
    const out = join(dir, 'out');
    const r = await runCli(['run', '--json', '--output', out, '--', '/usr/bin/python3', '-c', COUNTER]);
    expect(r.exitCode, r.stderr).toBe(0);
    const { pid, nsPid } = JSON.parse(r.stdout) as { pid: number; nsPid: number };
    onCleanup(() => killPids([pid]));
    expect(nsPid).toBe(1);
    expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(new RegExp(`\\nNSpid:\\t${pid}\\t1\\n`));
    await waitFor('the app to count', () => existsSync(out) && lines(out).length >= 5);
    // The test runner's own fds (vitest's pipes) did not leak into the app.
    expect(readdirSync(`/proc/${pid}/fd`).sort()).toEqual(['0', '1', '2']);

    const img = join(dir, 'image');
    const d = await runCli(['dump', '--pid', String(pid), '-D', img, '--epochs', '2', '--interval-ms', '50']);
    expect(d.exitCode, d.stderr).toBe(0);
    await waitFor('the app to be gone', () => !existsSync(`/proc/${pid}`));
    const before = lines(out).at(-1)!;
    const printedBefore = lines(out).length;

    const rs = await runCli(['restore', '-D', img, '--json']);
    expect(rs.exitCode, rs.stderr).toBe(0);
    const rep = JSON.parse(rs.stdout) as { pids: number[]; nsPid1: string };
    onCleanup(() => killPids(rep.pids));
    expect(rep.pids).toHaveLength(1);
    expect(rep.nsPid1).toBe('root');
    // pid 1 of a new namespace again; its host pid is whatever this node gave
    expect(readFileSync(`/proc/${rep.pids[0]}/status`, 'utf8')).toMatch(new RegExp(`\\nNSpid:\\t${rep.pids[0]}\\t1\\n`));
    // It counts on from its memory at the last epoch (at most the count it had when killed), in sequence.
    await waitFor('the restored app to count on', () => lines(out).length >= 5 && lines(out).at(-1)! > before + 3);
    const all = lines(out);
    const first = all[printedBefore]!;
    expect(first).toBeGreaterThan(5); // a fresh start would print 1
    expect(first).toBeLessThanOrEqual(before + 1); // never ahead of what it had done
    for (let i = printedBefore + 1; i < all.length; i++) expect(all[i]).toBe(all[i - 1]! + 1);
  });

  it('refuses no command (exit 2) and reports a command that cannot start (exit 1)', async () => {
    const none = await runCli(['run']);
    expect(none.exitCode).toBe(2);
    expect(none.stderr).toMatch(/no command given/);
    const bad = await runCli(['run', '--', '/nonexistent/app']);
    expect(bad.exitCode).toBe(1);
    expect(bad.stderr).toMatch(/exec \/nonexistent\/app: No such file or directory/);
  });
});
