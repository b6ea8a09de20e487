// The graph for people: Graphviz dot (and SVG through `dot`), with the app's
// processes, their resources, and external dependencies drawn in red.
import { execa } from 'execa';
import { UnderstudyError } from '../util/errors.js';
import type { GraphSnapshot, NodeKind } from './model.js';

const SHAPES: Record<NodeKind, string> = {
  process: 'box',
  thread: 'plaintext',
  region: 'note',
  file: 'folder',
  pipe: 'cds',
  socket: 'ellipse',
  ipc: 'hexagon',
  anon: 'component',
  endpoint: 'doublecircle',
};

function q(s: string): string {
  return '"' + s.replace(/\\/g, '\\\\').replace(/"/g, '\\"') + '"';
}

export interface DotOptions {
  /** Memory regions make big graphs; by default only shared and file-less writable ones are drawn. */
  allRegions?: boolean;
}

export function toDot(s: GraphSnapshot, opts: DotOptions = {}): string {
  const extRes = new Set(s.externalDependencies.map((d) => d.resource));
  const keep = new Set<string>();
  for (const n of s.nodes) {
    if (n.kind !== 'region') keep.add(n.id);
    else if (opts.allRegions || String(n.attrs.perms).endsWith('s')) keep.add(n.id);
  }
  // files only reached through regions not drawn (libraries, locale files) would float alone
  const linked = new Set<string>();
  for (const e of s.edges) {
    if (keep.has(e.from) && keep.has(e.to)) {
      linked.add(e.from);
      linked.add(e.to);
    }
  }
  for (const n of s.nodes) if (n.kind !== 'process' && !linked.has(n.id)) keep.delete(n.id);
  const lines = [
    'digraph understudy {',
    '  graph [rankdir=LR, fontname="Helvetica", label="Understudy dependency graph (epoch ' + s.epoch + '); red: external dependencies", labelloc=t];',
    '  node [fontname="Helvetica", fontsize=10];',
    '  edge [fontname="Helvetica", fontsize=8];',
  ];
  for (const n of s.nodes) {
    if (!keep.has(n.id)) continue;
    const attrs = [`label=${q(n.label)}`, `shape=${SHAPES[n.kind]}`];
    if (n.kind === 'process' && !n.external) attrs.push('style="filled,bold"', 'fillcolor="#dde8ff"');
    if (n.external) attrs.push('color=red', 'fontcolor=red', 'style="dashed,bold"');
    else if (extRes.has(n.id)) attrs.push('color=red', 'penwidth=2');
    lines.push(`  ${q(n.id)} [${attrs.join(', ')}];`);
  }
  for (const e of s.edges) {
    if (!keep.has(e.from) || !keep.has(e.to)) continue;
    const attrs = [`label=${q(e.label ? `${e.kind} ${e.label}` : e.kind)}`];
    if (e.kind === 'parent-of') attrs.push('style=bold');
    if (e.kind === 'connects-to') attrs.push('dir=both', 'color=blue');
    if (extRes.has(e.from) && e.kind === 'connects-to') attrs.push('color=red');
    lines.push(`  ${q(e.from)} -> ${q(e.to)} [${attrs.join(', ')}];`);
  }
  lines.push('}');
  return lines.join('\n') + '\n';
}

export async function toSvg(dot: string): Promise<string> {
  const r = await execa('dot', ['-Tsvg'], { input: dot, reject: false });
  if (r.exitCode !== 0) {
    throw new UnderstudyError(
      'E_NATIVE',
      r.failed && r.exitCode === undefined
        ? 'Graphviz `dot` is not installed: install the Debian package graphviz (scripts/setup does), or use --format dot'
        : `Graphviz dot failed: ${r.stderr.trim()}`,
    );
  }
  return r.stdout;
}
