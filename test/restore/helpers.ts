// Harness for restore fixtures (the zdtm pattern): start a fixture, wait for
// its ready marker, checkpoint it with the engine (full, or epoch 0 + N
// deltas), kill it, wait until its PIDs are free, restore, tell it to go,
// read its verdict. Every process started here is registered for cleanup,
// which runs even when a test fails.
import { spawn } from 'node:child_process';
import { existsSync, openSync, closeSync, readdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { expect } from 'vitest';
import { EngineClient } from '../../src/native/engine.js';
import type { ProcessMeta } from '../../src/image/store.js';
import { buildDir, packageRoot } from '../../src/util/paths.js';
import { killPids, onCleanup, tmpDir } from '../helpers/cleanup.js';
import { sleep, waitFor } from '../helpers/wait.js';

export { killPids, onCleanup, runCleanups } from '../helpers/cleanup.js';
export { sleep, waitFor } from '../helpers/wait.js';

export const tmp = (prefix: string): string => tmpDir(`rs-${prefix}`);

/** The pid is in use (a zombie holds its pid until reaped). */
export function exists(pid: number): boolean {
  return existsSync(`/proc/${pid}/status`);
}

/** Running (a zombie waiting for its reaper counts as gone). */
export function alive(pid: number): boolean {
  try {
    return !/^State:\s+[ZX]/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

/** Starts python3 -c code in dir, detached, killed (with its group) at cleanup; its pid. */
export function python(code: string, dir: string): number {
  const p = spawn('python3', ['-c', code], { stdio: ['ignore', 'ignore', 'ignore'], cwd: dir, detached: true });
  onCleanup(() => {
    try {
      process.kill(-p.pid!, 'SIGKILL');
    } catch {
      // gone
    }
  });
  return p.pid!;
}

export interface Fixture {
  name: string;
  ctl: string;
  pid: number;
  log: string;
}

/** Starts build/fixtures/<name> (or a command) with the control dir as its first argument. */
export async function startFixture(name: string, ctl: string, cmd?: string[]): Promise<Fixture> {
  const log = join(ctl, 'log');
  const fd = openSync(log, 'a');
  const argv = cmd ?? [resolve(buildDir, 'fixtures', name), ctl];
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  child.on('error', () => undefined);
  const pid = child.pid!;
  child.unref();
  onCleanup(() => killPids([pid]));
  if (!cmd) await waitFor(`${name} to be ready`, () => existsSync(join(ctl, 'ready')));
  return { name, ctl, pid, log };
}

export interface Dumped {
  pids: number[];
  lastEpoch: number;
}

/** Epoch 0 (+ `deltas` incremental epochs), then kill the app and wait until all its pids are free. */
export async function dumpAndKill(pid: number, imageDir: string, deltas = 0, gapMs = 10, between?: (epoch: number) => Promise<void>): Promise<Dumped> {
  const engine = EngineClient.start();
  onCleanup(() => engine.kill());
  let pids: number[] = [];
  let last = 0;
  try {
    await engine.attach(pid, { trackDirty: true, includeChildren: true });
    last = (await engine.checkpoint({ imageDir })).epoch;
    for (let i = 0; i < deltas; i++) {
      await sleep(gapMs);
      if (between) await between(last);
      last = (await engine.checkpoint({ imageDir })).epoch;
    }
    pids = (await engine.status()).pids;
    await engine.killApp();
  } finally {
    await engine.close();
  }
  killPids(pids);
  await waitFor(`pids ${pids.join(',')} to be free`, () => pids.every((p) => !exists(p)), 10_000);
  return { pids, lastEpoch: last };
}

/**
 * rs_latefork checkpointed into `img` over 20 deltas, told to fork a child
 * and start a thread at epoch 5; the app is killed after. Returns the
 * fixture, the dump and the child's pid (the chain's process born mid-way).
 */
export async function lateForkChain(ctl: string, img: string): Promise<{ fx: Fixture; dumped: Dumped; child: number }> {
  const fx = await startFixture('rs_latefork', ctl);
  let child = 0;
  const dumped = await dumpAndKill(fx.pid, img, 20, 10, async (epoch) => {
    if (epoch === 5) {
      writeFileSync(join(ctl, 'fork'), '');
      await waitFor('the late fork', () => existsSync(join(ctl, 'forked')));
      child = Number(readFileSync(join(ctl, 'forked'), 'utf8').trim());
    }
  });
  expect(child).toBeGreaterThan(0);
  expect([...dumped.pids].sort()).toEqual([fx.pid, child].sort());
  return { fx, dumped, child };
}

/**
 * Starts fixture `name` in a control dir tmp(prefix), then dumpAndKill into
 * an image dir under tmp(`${prefix}-img`) with `deltas` incremental epochs.
 */
export async function startAndDump(name: string, prefix: string, deltas = 0): Promise<{ ctl: string; img: string; fx: Fixture; d: Dumped }> {
  const ctl = tmp(prefix);
  const img = join(tmp(`${prefix}-img`), 'image');
  const fx = await startFixture(name, ctl);
  const d = await dumpAndKill(fx.pid, img, deltas);
  return { ctl, img, fx, d };
}

export async function verdict(ctl: string, ms = 15_000): Promise<string> {
  const v = join(ctl, 'verdict');
  writeFileSync(join(ctl, 'go'), '');
  await waitFor(`a verdict in ${ctl}`, () => existsSync(v), ms);
  return readFileSync(v, 'utf8').trim();
}

/**
 * Starts build/fixtures/<name> as pid 1 of a new PID namespace (unshare forks
 * it; killing unshare, as the cleanup does, kills the namespace); its host pid.
 */
export async function startInOwnNamespace(name: string, ctl: string): Promise<number> {
  await startFixture('unshare', ctl, ['unshare', '--pid', '--fork', '--kill-child', resolve(buildDir, 'fixtures', name), ctl]);
  await waitFor('the fixture to be ready', () => existsSync(join(ctl, 'ready')));
  const seen = readFileSync(join(ctl, 'ready'), 'utf8').trim();
  if (seen !== '1') throw new Error(`${name} sees itself as pid ${seen}, not 1 of its namespace`);
  // its host pid: the process with the fixture's command line that is pid 1 of its namespace
  const found = readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .filter((n) => {
      try {
        return (
          readFileSync(`/proc/${n}/cmdline`, 'utf8').split('\0').join(' ').trim().endsWith(`${name} ${ctl}`) &&
          readFileSync(`/proc/${n}/comm`, 'utf8').trim() === name &&
          /^NSpid:\s+\d+\s+1$/m.test(readFileSync(`/proc/${n}/status`, 'utf8'))
        );
      } catch {
        return false;
      }
    })
    .map(Number);
  if (found.length !== 1) throw new Error(`${found.length} processes look like ${name} as pid 1 of its namespace, not 1`);
  const hostPid = found[0]!;
  onCleanup(() => killPids([hostPid]));
  if (!new RegExp(`NSpid:\\s+${hostPid}\\s+1\\n`).test(readFileSync(`/proc/${hostPid}/status`, 'utf8')))
    throw new Error(`pid ${hostPid} is not pid 1 of its namespace`);
  return hostPid;
}

/** An epoch's directory in an image. */
export const epochDir = (img: string, n: number): string => join(img, `epoch-${String(n).padStart(6, '0')}`);

/**
 * Lines the original wrote after the checkpoint are not part of the image:
 * cuts `file` back to where proc's fd on `path` (the name the image knows it
 * by; default `file`) was at the checkpoint, as a data folder replicated with
 * the epochs would be. Returns the lines it then holds.
 */
export function cutToCheckpoint(proc: ProcessMeta, file: string, path = file): string[] {
  const fd = proc.fds.find((f) => f.path === path);
  expect(fd, 'the output file is an fd of the image').toBeDefined();
  truncateSync(file, Number(fd!.pos));
  return readFileSync(file, 'utf8').trim().split('\n');
}

export const fixturePython = join(packageRoot, 'test', 'fixtures', 'rs_python.py');
