import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { describe, expect, it, onTestFinished } from 'vitest';
import { PROBES } from '../../src/check/probes.js';
import { CLI, runCli } from '../helpers/cli.js';

interface DemoJson {
  check: { ok: boolean };
  config: { dataDir: string };
  demo: {
    workDir: string;
    app: { pid: number; graphNodes: number };
    epochs: { epoch: number; full: boolean; pages: number; pauseMs: number }[];
    crashedAt: number;
    restored: { pids: number[]; epoch: number; countAfterRestore: number; countAtRestore: number };
  };
}

describe('understudy demo (the quick start main job)', () => {
  it('checks the kernel, then checkpoints, crashes and restores a demo app that counts on', async () => {
    const j = await runCli(['demo', '--json']);
    expect(j.exitCode, j.stderr).toBe(0);
    const r = JSON.parse(j.stdout) as DemoJson;
    expect(r.check.ok).toBe(true);
    expect(r.config.dataDir).toBe('/var/lib/understudy');
    expect(r.demo.workDir).toBe('/var/lib/understudy/demo');
    expect(r.demo.app.graphNodes).toBeGreaterThan(10);
    expect(r.demo.epochs.map((e) => e.full)).toEqual([true, false, false, false, false, false]);
    // deltas carry only what the app wrote: far fewer pages than the full epoch
    for (const e of r.demo.epochs.slice(1)) expect(e.pages).toBeLessThan(r.demo.epochs[0]!.pages / 4);
    expect(r.demo.restored.pids).toEqual([r.demo.app.pid]);
    expect(r.demo.restored.epoch).toBe(5);
    // It resumed from its memory (a fresh start would count 1, 2, 3... again),
    // and it counted on after the restore.
    expect(r.demo.restored.countAfterRestore).toBeGreaterThan(10);
    expect(r.demo.restored.countAfterRestore).toBeGreaterThan(r.demo.restored.countAtRestore);
    // The demo leaves nothing running.
    expect(existsSync(`/proc/${r.demo.app.pid}`)).toBe(false);
  });

  it('tells a person what it does, step by step', async () => {
    const r = await runCli(['demo']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.split('\n').filter((l) => l.startsWith('✓ '))).toHaveLength(PROBES.length);
    expect(r.stdout).toMatch(/epoch 0 \(full\): \d+ pages, app paused [\d.]+ ms/);
    expect(r.stdout).toMatch(/Restored epoch 5 in [\d.]+ ms with the same pid \d+/);
    expect(r.stdout).toContain('Configuration: embedded default (data in /var/lib/understudy)');
  });

  it('interrupted (Ctrl-C), it still leaves nothing running', async () => {
    const cli = execa(process.execPath, [CLI, 'demo'], { reject: false, stdin: 'ignore' });
    let appPid = 0;
    onTestFinished(() => {
      cli.kill('SIGKILL');
      if (appPid > 1 && existsSync(`/proc/${appPid}`)) process.kill(appPid, 'SIGKILL');
    });
    let out = '';
    await new Promise<void>((resolve, reject) => {
      cli.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /Started a demo app \(python3, pid (\d+)\)/.exec(out);
        if (m) {
          appPid = Number(m[1]);
          resolve();
        }
      });
      void cli.then(() => reject(new Error(`demo ended before starting its app: ${out}`)));
    });
    expect(existsSync(`/proc/${appPid}`)).toBe(true);
    cli.kill('SIGINT');
    const r = await cli;
    expect(r.signal).toBe('SIGINT');
    // the app was killed by the demo; once reaped (the demo was its parent) it is gone
    const until = Date.now() + 5_000;
    while (existsSync(`/proc/${appPid}`) && Date.now() < until) await new Promise((res) => setTimeout(res, 50));
    expect(existsSync(`/proc/${appPid}`)).toBe(false);
  }, 60_000);
});
