// Collection: resources nothing refers to any more are dropped, so that the
// graph's memory follows what the app holds, not what it ever held.
import type { GraphState } from './store.js';

/**
 * Drops the resources no fd, no mapping and no change still in the log refers
 * to (a closed socket of every served connection would otherwise stay for the
 * life of the graph). SysV and POSIX IPC objects outlive their users and stay.
 * Returns how many were dropped.
 */
export function collect(g: GraphState): number {
  const keep = new Set<string>();
  for (const p of g.processes.values()) {
    for (const r of p.fds.values()) keep.add(r);
    for (const r of p.regions) if (r.backing) keep.add(r.backing);
  }
  for (const r of g.changes?.resources() ?? []) keep.add(r);
  let n = 0;
  for (const [id, r] of g.resources) {
    if (keep.has(id) || r.kind === 'ipc') continue;
    g.resources.delete(id);
    n++;
  }
  for (const [sk, id] of g.skToSocket) if (!g.resources.has(id)) g.skToSocket.delete(sk);
  return n;
}
