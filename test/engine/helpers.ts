// Shared by the engine tests: a dirty_pages fixture driven through its control
// directory, temporary directories, and /proc observations of the app.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { onCleanup, tmpDir } from '../helpers/cleanup.js';
import { waitFor } from '../helpers/wait.js';

export { onCleanup, runCleanups } from '../helpers/cleanup.js';
export { waitFor } from '../helpers/wait.js';

export const root = resolve(import.meta.dirname, '..', '..');
export const fixtureBin = join(root, 'build', 'fixtures', 'dirty_pages');

export const tmp = (prefix: string): string => tmpDir(prefix);

export interface Fixture {
  pid: number;
  region: number;
  pages: number;
  proc: ChildProcess;
  /** Writes `count` distinct random pages; resolves with their indices once done. */
  write(count: number, seed: number, op?: 'w' | 'z' | 'm' | 'f' | 't' | 'v'): Promise<number[]>;
  kill(): void;
}

export async function startFixture(opts: { mb: number; threads?: number; children?: number }): Promise<Fixture> {
  const ctl = tmp('ctl');
  const args = ['--ctl', ctl, '--mb', String(opts.mb), '--threads', String(opts.threads ?? 0), '--children', String(opts.children ?? 0)];
  const proc = spawn(fixtureBin, args, { stdio: 'ignore' });
  const kill = (): void => {
    try {
      if (opts.children) {
        for (const c of childrenOf(proc.pid!)) process.kill(c, 'SIGKILL');
      }
      proc.kill('SIGKILL');
    } catch {
      /* gone */
    }
  };
  onCleanup(kill);
  const ready = await waitFor('fixture ready', () => (existsSync(join(ctl, 'ready')) ? readFileSync(join(ctl, 'ready'), 'utf8') : undefined), 20_000);
  const [pid, region, pages] = ready.trim().split(' ').map(Number) as [number, number, number];
  let n = 0;
  return {
    pid,
    region,
    pages,
    proc,
    kill,
    async write(count, seed, op = 'w') {
      const i = n++;
      writeFileSync(join(ctl, `.cmd-${i}`), `${count} ${seed} ${op}\n`);
      // rename: the fixture must never read a half-written command
      const { renameSync } = await import('node:fs');
      renameSync(join(ctl, `.cmd-${i}`), join(ctl, `cmd-${i}`));
      const done = join(ctl, `done-${i}`);
      const text = await waitFor(`fixture command ${i}`, () => (existsSync(done) ? readFileSync(done, 'utf8') : undefined), 20_000);
      return text.trim() === '' ? [] : text.trim().split('\n').map(Number);
    },
  };
}

export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const t of readdirSync(`/proc/${pid}/task`)) {
      const c = readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim();
      if (c) out.push(...c.split(' ').map(Number));
    }
  } catch {
    /* gone */
  }
  return out;
}

/** The state letter of pid once it settles: a thread just resumed (by a
 * detach or a release) is briefly 'R' until it is back in its sleep, longer
 * on a loaded machine. A process left stopped stays 'T'/'t' and is returned. */
export async function settledState(pid: number, want = 'S', ms = 3000): Promise<string> {
  const until = Date.now() + ms;
  for (;;) {
    const s = procState(pid).state;
    if (s === want || Date.now() > until) return s;
    await new Promise((r) => setTimeout(r, 5));
  }
}

export function procState(pid: number): { state: string; tracer: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  return { state: /^State:\s+(\S)/m.exec(s)![1]!, tracer: Number(/^TracerPid:\s+(\d+)/m.exec(s)![1]) };
}

export function fdTargets(pid: number): string[] {
  return readdirSync(`/proc/${pid}/fd`)
    .map((fd) => {
      try {
        return `${fd} -> ${readlinkSync(`/proc/${pid}/fd/${fd}`)}`;
      } catch {
        return `${fd} -> ?`;
      }
    })
    .sort();
}

export function mapsOf(pid: number): string {
  return readFileSync(`/proc/${pid}/maps`, 'utf8');
}
