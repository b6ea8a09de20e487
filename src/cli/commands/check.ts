import { intFlag, type Command } from '../command.js';

export const checkCommand: Command = {
  name: 'check',
  summary: 'test, on this kernel, every feature Understudy relies on',
  usage: '[--only ID[,ID...]] [--timeout-ms N] [--verbose] [--json]',
  help:
    '  --only IDS        run only these probes (comma-separated ids, see --json output)\n' +
    '  --timeout-ms N    give each probe at most N ms (default 10000)\n' +
    '  -v, --verbose     also say what each passing probe observed',
  options: {
    only: { type: 'string' },
    'timeout-ms': { type: 'string' },
    verbose: { type: 'boolean', short: 'v' },
  },
  needsRoot: true,
  async run(ctx, values) {
    const { formatCheck, runCheck } = await import('../../check/check.js');
    const only = typeof values.only === 'string' ? values.only.split(',').filter((s) => s !== '') : undefined;
    const timeoutMs = intFlag(values, 'timeout-ms', 100, 600_000);
    const report = await runCheck({ only, timeoutMs });
    ctx.out(ctx.json ? JSON.stringify(report, null, 2) : formatCheck(report, values.verbose === true));
    return report.ok ? 0 : 1;
  },
};
