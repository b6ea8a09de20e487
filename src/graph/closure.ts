// The app's closure: every node and edge of the app, without external ends
// (those are added by snapshot() in sockets.ts).
import type { GraphEdge, GraphNode } from './model.js';
import { hex } from './regions.js';
import type { GraphState } from './store.js';

/** Every node and edge of the app (its closure), without external ends. */
export function closure(g: GraphState): { nodes: GraphNode[]; edges: GraphEdge[] } {
  const nodes: GraphNode[] = [];
  const edges: GraphEdge[] = [];
  const used = new Set<string>();
  for (const p of [...g.processes.values()].sort((a, b) => a.pid - b.pid)) {
    const pid = `process:${p.pid}`;
    nodes.push({ id: pid, kind: 'process', label: `${p.comm} (${p.pid})`, attrs: { pid: p.pid, ppid: p.ppid, comm: p.comm, exe: p.exe ?? '?' } });
    if (g.processes.has(p.ppid)) edges.push({ from: `process:${p.ppid}`, to: pid, kind: 'parent-of' });
    for (const t of [...p.threads].sort((a, b) => a - b)) {
      nodes.push({ id: `thread:${t}`, kind: 'thread', label: `thread ${t}`, attrs: { tid: t, pid: p.pid } });
      edges.push({ from: pid, to: `thread:${t}`, kind: 'owns' });
    }
    const byRes = new Map<string, number[]>();
    for (const [fd, r] of p.fds) byRes.set(r, [...(byRes.get(r) ?? []), fd]);
    for (const [r, fds] of byRes) {
      used.add(r);
      edges.push({ from: pid, to: r, kind: 'owns', label: `fd ${fds.sort((a, b) => a - b).join(',')}` });
    }
    for (const r of p.regions) {
      const rid = `region:${p.pid}:${hex(r.start)}`;
      nodes.push({
        id: rid,
        kind: 'region',
        label: `${hex(r.start)}-${hex(r.end)} ${r.perms}${r.backing?.startsWith('[') ? ' ' + r.backing : ''}`,
        attrs: { pid: p.pid, start: r.start, end: r.end, perms: r.perms, offset: r.offset, ...(r.backing ? { backing: r.backing } : {}) },
      });
      edges.push({ from: pid, to: rid, kind: 'maps' });
      if (r.backing && !r.backing.startsWith('[')) {
        used.add(r.backing);
        edges.push({ from: rid, to: r.backing, kind: r.perms[3] === 's' ? 'shares' : 'maps' });
      }
    }
  }
  for (const r of g.resources.values()) {
    if (r.kind === 'ipc' && !used.has(r.id)) {
      for (const u of g.ipcUsers.get(r.id) ?? [])
        if (g.processes.has(u)) {
          used.add(r.id);
          edges.push({ from: `process:${u}`, to: r.id, kind: 'shares' });
        }
    }
  }
  for (const id of used) {
    const r = g.resources.get(id);
    if (r) nodes.push({ id: r.id, kind: r.kind, label: r.label, attrs: { ...r.attrs } });
  }
  // sockets connected to sockets of the app (socketpairs, local connections)
  for (const id of used) {
    const r = g.resources.get(id);
    const peer = r?.attrs.peerInode;
    if (peer !== undefined && used.has(`socket:${peer}`)) edges.push({ from: id, to: `socket:${peer}`, kind: 'connects-to' });
  }
  return { nodes, edges };
}
