// `understudy run -- CMD`: start an app in its own PID namespace, as its pid 1,
// so that a restore can give it its PIDs back on any node (docs/restore.md).
// The app runs detached; its host pid is printed for `understudy dump --pid`.
import { resolve } from 'node:path';
import { UnderstudyError } from '../../util/errors.js';
import type { Command } from '../command.js';

export const runCommand: Command = {
  name: 'run',
  summary: 'start an app in its own PID namespace, ready to be checkpointed and restored anywhere',
  usage: '[--output FILE] [--json] -- CMD [ARGS...]',
  help:
    "  --output FILE     append the app's stdout and stderr to FILE (default: /dev/null)\n" +
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
    const { runApp } = await import('../../native/run.js');
    const { pid, nsPid } = await runApp(positionals, output);
    if (ctx.json) ctx.out(JSON.stringify({ pid, nsPid, command: positionals, output }));
    else ctx.out(`app started: host pid ${pid} (pid ${nsPid} of its own PID namespace); output to ${output}`);
    return 0;
  },
};
