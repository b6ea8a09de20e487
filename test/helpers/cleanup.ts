// One cleanup registry for every test file: what a test starts or creates
// (processes, engines, folders, namespaces) is registered here as it is made,
// and undone in reverse order by runCleanups, which keeps going past a
// failing step. test/helpers/setup.ts runs it after each file's last test
// whatever happened; a file that needs a clean slate between tests adds
// `afterEach(runCleanups)`.
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type Cleanup = () => unknown;

const cleanups: Cleanup[] = [];

/** Register `f` to run at the next runCleanups (last registered, first run). */
export function onCleanup(f: Cleanup): void {
  cleanups.push(f);
}

/** Runs every registered cleanup, newest first; an error in one does not stop the others. */
export async function runCleanups(): Promise<void> {
  while (cleanups.length > 0) {
    const f = cleanups.pop()!;
    try {
      await f();
    } catch {
      // keep cleaning
    }
  }
}

/** A fresh folder under the system's temporary directory (`us-<prefix>-XXXXXX`), removed at cleanup. */
export function tmpDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), `us-${prefix}-`));
  onCleanup(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** SIGKILL each pid, ignoring those already gone. */
export function killPids(pids: readonly number[]): void {
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

/**
 * SIGKILL a process at cleanup: a child process or a pid; with `group`, its
 * whole process group (a child spawned `detached` leads its own).
 */
export function killAtCleanup(p: ChildProcess | number, opts: { group?: boolean } = {}): void {
  onCleanup(() => {
    const pid = typeof p === 'number' ? p : p.pid;
    if (pid === undefined) return;
    killPids([opts.group ? -pid : pid]);
  });
}
