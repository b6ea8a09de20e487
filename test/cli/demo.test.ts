import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { PROBES } from '../../src/check/probes.js';
import { runCli } from '../helpers/cli.js';

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
});
