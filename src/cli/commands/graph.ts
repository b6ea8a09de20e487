import { writeFileSync } from 'node:fs';
import { UnderstudyError } from '../../util/errors.js';
import { intFlag, missingFlag, PID_MAX, type Command } from '../command.js';

export const graphCommand: Command = {
  name: 'graph',
  summary: 'the dependency graph of a process tree: processes, resources, external dependencies',
  usage: '--pid PID [--format json|dot|svg] [-o FILE] [--all-regions]',
  help:
    '  --pid PID         the root process; its descendants are included\n' +
    '  --format F        json (default with --json), dot, or svg (through Graphviz dot)\n' +
    '  -o, --output FILE write there instead of stdout\n' +
    '  --all-regions     draw every memory region (dot/svg; json always has them)',
  options: {
    pid: { type: 'string' },
    format: { type: 'string' },
    output: { type: 'string', short: 'o' },
    'all-regions': { type: 'boolean' },
  },
  needsRoot: true,
  async run(ctx, values) {
    const pid = intFlag(values, 'pid', 1, PID_MAX) ?? missingFlag('--pid PID');
    const format = typeof values.format === 'string' ? values.format : ctx.json ? 'json' : 'dot';
    if (!['json', 'dot', 'svg'].includes(format)) throw new UnderstudyError('E_USAGE', `--format must be json, dot or svg, got "${format}"`);
    const { seedAppGraph } = await import('../../agent/seed.js');
    const { toDot, toSvg } = await import('../../graph/render.js');
    const { snapshot } = await import('../../graph/sockets.js');
    const graph = seedAppGraph(pid);
    const snap = await snapshot(graph);
    let text: string;
    if (format === 'json') text = JSON.stringify(snap, null, 2) + '\n';
    else {
      const dot = toDot(snap, { allRegions: values['all-regions'] === true });
      text = format === 'dot' ? dot : await toSvg(dot);
    }
    if (typeof values.output === 'string') {
      writeFileSync(values.output, text);
      ctx.out(
        `graph of ${graph.pids().length} processes, ${snap.nodes.length} nodes, ${snap.externalDependencies.length} external dependencies written to ${values.output}`,
      );
    } else {
      ctx.out(text.trimEnd());
    }
    return 0;
  },
};
