// The dependency graph of a running process tree, read once from /proc: what
// `understudy graph` draws and what a protect loop without tracing keeps. No
// tracer and no change log (nobody asks it for a dirty set).
import { AppGraph } from '../graph/graph.js';
import { descendantsOf, requireProcess } from '../proc/procfs.js';

export function seedAppGraph(pid: number, opts: { includeChildren?: boolean } = {}): AppGraph {
  requireProcess(pid);
  const graph = new AppGraph({ changeLog: false });
  graph.seedFromProc(opts.includeChildren === false ? [pid] : descendantsOf([pid]));
  return graph;
}
