import { formatCheck, runCheck } from '../../check/check.js';
import type { Command } from '../command.js';

// The quick start's main job on the embedded default configuration. It grows
// with the product: today it checks the kernel and tours the CLI.
export const demoCommand: Command = {
  name: 'demo',
  summary: 'the quick start: check this kernel, then a short tour',
  usage: '[--json]',
  options: {},
  needsRoot: true,
  async run(ctx) {
    const report = await runCheck();
    if (ctx.json) {
      ctx.out(JSON.stringify({ check: report, config: ctx.config }, null, 2));
      return report.ok ? 0 : 1;
    }
    ctx.out('Understudy — checking this kernel for every feature the design relies on:\n');
    ctx.out(formatCheck(report));
    ctx.out(
      [
        '',
        `Configuration: embedded default (data in ${ctx.config.dataDir}); pass --config FILE to change it.`,
        '',
        'A short tour:',
        '  understudy check [--json]      the kernel features, one line each (like `criu check`)',
        '  understudy --help              every command',
        '  understudy COMMAND --help      one command, its flags',
        '  npm test                       the test suite against the real kernel',
      ].join('\n'),
    );
    return report.ok ? 0 : 1;
  },
};
