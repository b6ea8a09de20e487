// TCP state changes applied to the graph: which socket a kernel sock is, and
// its state and addresses (a connect's handshake may end before connect returns).
import type { TcpStateEvent } from '../trace/records.js';
import type { GraphState } from './store.js';

/** Learns which socket a struct sock is; applies the TCP state seen before (a connect's handshake ends before connect returns). */
export function bindSock(g: GraphState, sk: string, id: string): void {
  g.skToSocket.set(sk, id);
  const early = g.skEarly.get(sk);
  if (early) {
    g.skEarly.delete(sk);
    setTcpAttrs(g, id, early);
  }
}

function setTcpAttrs(g: GraphState, id: string, ev: TcpStateEvent): void {
  const r = g.resources.get(id);
  if (!r) return;
  r.attrs.state = ev.newState;
  if (!ev.local.endsWith(':0')) r.attrs.local = ev.local;
  r.attrs.remote = ev.remote;
  r.attrs.family = ev.family === 10 ? 'inet6' : 'inet';
  r.attrs.protocol = 'tcp';
}

export function onTcpState(g: GraphState, ev: TcpStateEvent): void {
  let id = g.skToSocket.get(ev.sk);
  if (!id) {
    // Find the socket by its local address among the process's sockets.
    const p = g.processes.get(ev.tgid);
    for (const r of p ? [...p.fds.values()] : []) {
      const res = g.resources.get(r);
      if (res?.kind === 'socket' && (res.attrs.local === ev.local || res.attrs.remote === ev.remote)) id = r;
    }
  }
  if (id) {
    g.skToSocket.set(ev.sk, id);
    setTcpAttrs(g, id, ev);
  } else {
    g.skEarly.set(ev.sk, ev);
    if (g.skEarly.size > 4096) g.skEarly.delete(g.skEarly.keys().next().value!); // bounded: oldest out
  }
  if (ev.newState === 'CLOSE') {
    g.skToSocket.delete(ev.sk);
    g.skEarly.delete(ev.sk);
  }
  g.log({ k: 'socket', resource: id ?? `sk:${ev.sk}`, change: `${ev.oldState}->${ev.newState} ${ev.local} ${ev.remote}` });
}
