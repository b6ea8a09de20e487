import type { DemoReport } from '../../demo/demo.js';
import type { Command } from '../command.js';

// The quick start's main job on the embedded default configuration: check the
// kernel, then protect a small demo app end to end (src/demo/demo.ts).
export const demoCommand: Command = {
  name: 'demo',
  summary: 'the quick start: check this kernel, then checkpoint, crash and restore a demo app',
  usage: '[--json]',
  options: {},
  needsRoot: true,
  async run(ctx) {
    const { formatCheck, runCheck } = await import('../../check/check.js');
    const { runDemo } = await import('../../demo/demo.js');
    const check = await runCheck();
    if (!ctx.json) {
      ctx.out('Understudy — checking this kernel for every feature the design relies on:\n');
      ctx.out(formatCheck(check));
    }
    let demo: DemoReport | undefined;
    if (check.ok) demo = await runDemo(ctx.config.dataDir, ctx.json ? () => undefined : ctx.out);
    if (ctx.json) {
      ctx.out(JSON.stringify({ check, demo, config: ctx.config }, null, 2));
      return check.ok ? 0 : 1;
    }
    ctx.out(
      [
        '',
        `Configuration: embedded default (data in ${ctx.config.dataDir}); pass --config FILE to change it.`,
        '',
        'A short tour:',
        '  understudy check [--json]      the kernel features, one line each (like `criu check`)',
        '  understudy trace -- CMD        what an app does, as it happens (eBPF)',
        '  understudy graph --pid PID     what an app is made of, and what it depends on outside',
        '  understudy dump / restore      checkpoint and bring back, like CRIU, with incremental epochs',
        '  understudy --help              every command; understudy COMMAND --help for its flags',
        '  npm test                       the test suite against the real kernel',
      ].join('\n'),
    );
    return check.ok ? 0 : 1;
  },
};
