// The round trip every restore fixture goes through (the zdtm pattern), shared
// by the files that run it for each fixture: fixtures-full, fixtures-deltas
// and fixtures-node2 (one file each, so that vitest runs them in parallel).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { restore } from '../../src/native/restorer.js';
import { alive, dumpAndKill, killPids, onCleanup, startFixture, tmp, verdict, waitFor } from './helpers.js';

export const FIXTURES = [
  'rs_counter',
  'rs_threads',
  'rs_malloc',
  'rs_sleepers',
  'rs_signals',
  'rs_files',
  'rs_mprotect',
  'rs_vdso',
  'rs_recursion',
  'rs_forktree',
  'rs_sharedfile',
  'rs_pipes',
  'rs_timers',
  'rs_timers_pending',
  'rs_alarm',
  'rs_locks',
];

/** Starts fixture `name`, checkpoints it (full, or epoch 0 + `deltas`), kills it, restores it here, and expects PASS. */
export async function roundTrip(name: string, deltas: number): Promise<void> {
  const ctl = tmp(name);
  const img = join(tmp(`${name}-img`), 'image');
  const fx = await startFixture(name, ctl);
  const d = await dumpAndKill(fx.pid, img, deltas);
  expect(d.lastEpoch).toBe(deltas);
  const r = await restore({ imageDir: img });
  onCleanup(() => killPids([r.reaper, ...r.pids]));
  expect(r.epoch).toBe(deltas);
  expect([...r.pids].sort()).toEqual([...d.pids].sort());
  expect(r.pids[0]).toBe(fx.pid);
  expect(r.nsPid1).toBe('reaper');
  for (const p of r.pids) expect(alive(p), `pid ${p} runs again`).toBe(true);
  // the restored process is not traced by anyone
  const status = readFileSync(`/proc/${fx.pid}/status`, 'utf8');
  expect(status).toMatch(/TracerPid:\s+0\n/);
  // it sees itself with the same pid inside its new namespace
  expect(status).toMatch(new RegExp(`NSpid:\\s+${fx.pid}\\s+${fx.pid}\\n`));
  expect(await verdict(ctl), `${name} verdict`).toBe('PASS');
  // the app ends; its namespace with it
  await waitFor('the restored app to exit', () => r.pids.every((p) => !alive(p)) && !alive(r.reaper));
}
