// Starting a command so that it is traced from its first instruction: a shell
// shim waits on fd 3 until the tracer has put its pid in the kernel filter,
// then execs the command in place (same pid).
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { constants } from 'node:os';
import type { Writable } from 'node:stream';
import { UnderstudyError } from '../util/errors.js';

export interface HeldProcess {
  pid: number;
  child: ChildProcess;
  /** Lets the command run (exec). */
  release(): void;
  /** Resolves with the exit code (or 128+signal) when it ends. */
  exited: Promise<number>;
}

export function spawnHeld(argv: string[], stdio: 'inherit' | 'ignore' | 'pipe' = 'inherit'): HeldProcess {
  if (argv.length === 0) throw new UnderstudyError('E_USAGE', 'no command to run');
  const io: StdioOptions = [stdio, stdio, stdio, 'pipe'];
  const child = spawn('/bin/sh', ['-c', 'read _ <&3; exec 3<&-; exec "$@"', 'understudy-shim', ...argv], { stdio: io });
  if (child.pid === undefined) throw new UnderstudyError('E_NO_SUCH_PROCESS', `could not start ${argv[0]}`);
  const gate = child.stdio[3] as Writable;
  gate.on('error', () => {});
  const exited = new Promise<number>((res) => {
    child.on('exit', (code, sig) => res(code ?? 128 + (sig ? (constants.signals[sig] ?? 0) : 0)));
    child.on('error', () => res(127));
  });
  return {
    pid: child.pid,
    child,
    release: () => gate.end('go\n'),
    exited,
  };
}
