// Shared by the trace and graph suites: run a real program under the tracer,
// read its stdout line by line, and always clean up (kill, unpin).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { TraceSession } from '../../src/trace/session.js';
import type { TraceEvent } from '../../src/trace/records.js';
import { buildDir } from '../../src/util/paths.js';

export const fixture = (name: string): string => resolve(buildDir, 'fixtures', name);

export class Lines {
  readonly lines: string[] = [];
  private buf = '';
  constructor(stream: Readable) {
    stream.setEncoding('utf8');
    stream.on('data', (c: string) => {
      this.buf += c;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        this.lines.push(this.buf.slice(0, i));
        this.buf = this.buf.slice(i + 1);
      }
    });
  }
  async waitFor(re: RegExp, timeoutMs = 15_000): Promise<RegExpExecArray> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      for (const l of this.lines) {
        const m = re.exec(l);
        if (m) return m;
      }
      if (Date.now() > end) throw new Error(`timed out waiting for ${re} in output: ${this.lines.slice(-5).join(' | ')}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

export interface Traced {
  session: TraceSession;
  out: Lines;
  events: TraceEvent[];
}

const cleanups: (() => Promise<void>)[] = [];

/** Runs argv traced from its first instruction, stdout piped for the test. */
export async function traceCommand(argv: string[], opts: { reconcileMs?: number; changeLog?: boolean } = {}): Promise<Traced> {
  const events: TraceEvent[] = [];
  const session = await TraceSession.start({
    command: argv,
    stdio: 'pipe',
    onEvent: (e) => events.push(e),
    staleGraceMs: 60_000,
    reconcileMs: opts.reconcileMs,
    changeLog: opts.changeLog,
  });
  cleanups.push(async () => {
    await session.stop({ kill: true });
  });
  const out = new Lines(session.held!.child.stdout as Readable);
  return { session, out, events };
}

/** A process outside the app (not traced), killed at cleanup. */
export function spawnOutside(argv: string[]): { child: ChildProcess; out: Lines } {
  // its own process group, so that cleanup takes its children too
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'inherit'], detached: true });
  cleanups.push(async () => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
  });
  return { child, out: new Lines(child.stdout!) };
}

/** A fresh folder under the system's temporary directory, removed by cleanupAll (after what was started later). */
export function tempDir(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `understudy-${name}-`));
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export async function cleanupAll(): Promise<void> {
  while (cleanups.length > 0) {
    const c = cleanups.pop()!;
    try {
      await c();
    } catch {
      // keep cleaning
    }
  }
}

/** Waits until the graph has every event the kernel produced so far (after `ms` for the app to act). */
export async function settle(t: Traced, ms = 50): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
  if (!(await t.session.sync(10_000))) throw new Error('the tracer did not deliver the kernel\'s records within 10 s');
}
