// Shared by the trace and graph suites: run a real program under the tracer,
// read its stdout line by line, and always clean up (kill, unpin).
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { TraceSession } from '../../src/trace/session.js';
import type { TraceEvent } from '../../src/trace/records.js';
import { buildDir } from '../../src/util/paths.js';
import { killAtCleanup, onCleanup, tmpDir } from '../helpers/cleanup.js';
import { waitFor } from '../helpers/wait.js';

export { runCleanups as cleanupAll } from '../helpers/cleanup.js';

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
    const match = (): RegExpExecArray | undefined => {
      for (const l of this.lines) {
        const m = re.exec(l);
        if (m) return m;
      }
      return undefined;
    };
    try {
      return await waitFor(`${re} in output`, match, timeoutMs, 20);
    } catch (e) {
      throw new Error(`${(e as Error).message}: ${this.lines.slice(-5).join(' | ')}`);
    }
  }
}

export interface Traced {
  session: TraceSession;
  out: Lines;
  events: TraceEvent[];
}

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
  onCleanup(async () => {
    await session.stop({ kill: true });
  });
  const out = new Lines(session.held!.child.stdout as Readable);
  return { session, out, events };
}

/** A process outside the app (not traced), killed at cleanup. */
export function spawnOutside(argv: string[]): { child: ChildProcess; out: Lines } {
  // its own process group, so that cleanup takes its children too
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'inherit'], detached: true });
  killAtCleanup(child, { group: true });
  return { child, out: new Lines(child.stdout!) };
}

/** A fresh folder under the system's temporary directory, removed by cleanupAll (after what was started later). */
export const tempDir = (name: string): string => tmpDir(name);

/** Waits until the graph has every event the kernel produced so far (after `ms` for the app to act). */
export async function settle(t: Traced, ms = 50): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
  if (!(await t.session.sync(10_000))) throw new Error("the tracer did not deliver the kernel's records within 10 s");
}
