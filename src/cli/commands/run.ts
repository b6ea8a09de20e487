// `understudy run -- CMD`: start an app in its own PID namespace, as its pid 1,
// so that a restore can give it its PIDs back on any node (docs/restore.md).
// The app runs detached; its host pid is printed for `understudy dump --pid`.
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { UnderstudyError } from '../../util/errors.js';
import { nativeBinary } from '../../util/paths.js';
import type { Command } from '../command.js';

/** Starts CMD through native/run; resolves with the app's host pid. */
export function runApp(cmd: string[], output: string): Promise<number> {
  return new Promise((resolvePid, reject) => {
    const child = spawn(nativeBinary('run'), [output, '--', ...cmd], {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => reject(new UnderstudyError('E_NATIVE', `cannot start understudy-run: ${e.message}`)));
    // 'close': the process exited and all of its stderr has been read
    const exited = new Promise<void>((r) => child.once('close', () => r()));
    // stdout ends once the app is running (or failed to start)
    child.stdout.on('end', () => {
      const pid = Number(out.trim());
      if (Number.isInteger(pid) && pid > 1) {
        child.unref();
        child.stdout.destroy();
        child.stderr.destroy();
        resolvePid(pid);
        return;
      }
      void exited.then(() =>
        reject(new UnderstudyError('E_NATIVE', err.trim().replace(/^understudy-run: /, '') || 'the app did not start')),
      );
    });
  });
}

export const runCommand: Command = {
  name: 'run',
  summary: 'start an app in its own PID namespace, ready to be checkpointed and restored anywhere',
  usage: '[--output FILE] [--json] -- CMD [ARGS...]',
  help:
    '  --output FILE     append the app\'s stdout and stderr to FILE (default: /dev/null)\n' +
    '\n' +
    'The app is pid 1 of a new PID namespace, with stdin from /dev/null and no fd\n' +
    'inherited from the caller; it runs on after this command returns. Its host pid\n' +
    'is printed: checkpoint it with `understudy dump --pid PID`.',
  options: {
    output: { type: 'string' },
  },
  positionals: true,
  needsRoot: true,
  async run(ctx, values, positionals) {
    if (positionals.length === 0) {
      throw new UnderstudyError('E_USAGE', 'no command given: understudy run [--output FILE] -- CMD [ARGS...]');
    }
    const output = typeof values.output === 'string' ? resolve(values.output) : '/dev/null';
    const pid = await runApp(positionals, output);
    if (ctx.json) ctx.out(JSON.stringify({ pid, nsPid: 1, command: positionals, output }));
    else ctx.out(`app started: host pid ${pid} (pid 1 of its own PID namespace); output to ${output}`);
    return 0;
  },
};
