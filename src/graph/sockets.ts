// Sockets with their peers (/proc/net/{tcp,tcp6,udp,udp6,unix}; unix peers
// through sock_diag via `ss`), who holds an object outside the app (a scan of
// /proc/*/fd), and from both: the app's external dependencies, each named
// precisely, and a snapshot of the graph with their far ends.
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { execa } from 'execa';
import { logger } from '../util/log.js';
import type { AppGraph } from './graph.js';
import { listPids, readMaps, readStat } from '../proc/procfs.js';
import type { ExternalDependency, GraphEdge, GraphNode, GraphSnapshot } from './model.js';
import { TCP_STATES } from '../trace/records.js';

const log = logger('graph');

export interface NetSocket {
  ino: number;
  proto: 'tcp' | 'tcp6' | 'udp' | 'udp6' | 'unix';
  local: string;
  remote: string;
  state: string;
  path?: string;
  peerIno?: number;
}

function hexIp4(h: string): string {
  const n = parseInt(h, 16);
  return `${n & 0xff}.${(n >>> 8) & 0xff}.${(n >>> 16) & 0xff}.${(n >>> 24) & 0xff}`;
}

function hexIp6(h: string): string {
  const bytes: number[] = [];
  for (let w = 0; w < 4; w++) {
    const word = parseInt(h.slice(w * 8, w * 8 + 8), 16);
    bytes.push(word & 0xff, (word >>> 8) & 0xff, (word >>> 16) & 0xff, (word >>> 24) & 0xff);
  }
  if (bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) return `::ffff:${bytes.slice(12).join('.')}`;
  const parts: string[] = [];
  for (let i = 0; i < 16; i += 2) parts.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return parts.join(':').replace(/(^|:)0(:0)+(:|$)/, '::');
}

function addr(h: string, v6: boolean): string {
  const [ip, port] = h.split(':') as [string, string];
  const p = parseInt(port, 16);
  return v6 ? `[${hexIp6(ip)}]:${p}` : `${hexIp4(ip)}:${p}`;
}

function readText(p: string): string {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

/** Sockets of the network namespace of `pid` (default: ours), by inode. */
export async function readNetSockets(pid?: number): Promise<Map<number, NetSocket>> {
  const base = pid === undefined ? '/proc/net' : `/proc/${pid}/net`;
  const out = new Map<number, NetSocket>();
  for (const proto of ['tcp', 'tcp6', 'udp', 'udp6'] as const) {
    const lines = readText(`${base}/${proto}`).split('\n').slice(1);
    for (const l of lines) {
      const f = l.trim().split(/\s+/);
      if (f.length < 10) continue;
      const ino = Number(f[9]);
      if (!ino) continue;
      const v6 = proto.endsWith('6');
      const st = parseInt(f[3]!, 16);
      out.set(ino, {
        ino,
        proto,
        local: addr(f[1]!, v6),
        remote: addr(f[2]!, v6),
        state: proto.startsWith('tcp') ? (TCP_STATES[st] ?? String(st)) : st === 1 ? 'ESTABLISHED' : 'UNCONN',
      });
    }
  }
  for (const l of readText(`${base}/unix`).split('\n').slice(1)) {
    const f = l.trim().split(/\s+/);
    if (f.length < 7) continue;
    const ino = Number(f[6]);
    const st = Number(f[5]);
    out.set(ino, {
      ino,
      proto: 'unix',
      local: f[7] ?? '',
      remote: '',
      state: st === 3 ? 'CONNECTED' : st === 1 ? (parseInt(f[3]!, 16) & 0x10000 ? 'LISTEN' : 'UNCONNECTED') : String(st),
      path: f[7],
    });
  }
  // unix peers: sock_diag (UNIX_DIAG_PEER), as ss reports it
  const ss = await execa('ss', ['-x', '-a', '-n', '-H'], { reject: false, stdin: 'ignore' });
  if (ss.exitCode === 0) {
    for (const l of ss.stdout.split('\n')) {
      const f = l.trim().split(/\s+/);
      if (f.length < 8) continue;
      const ino = Number(f[5]);
      const peer = Number(f[7]);
      const s = out.get(ino);
      if (s && peer > 0) s.peerIno = peer;
    }
  } else {
    log.warn({ stderr: ss.stderr }, 'ss failed: unix socket peers unknown');
  }
  return out;
}

export interface Holder {
  pid: number;
  fd: number;
  comm: string;
}

/** Processes outside `exclude` holding any of the given objects ("socket:[N]", "pipe:[N]"). */
export function findHolders(targets: Set<string>, exclude: Set<number>): Map<string, Holder[]> {
  const out = new Map<string, Holder[]>();
  if (targets.size === 0) return out;
  for (const pid of listPids()) {
    if (exclude.has(pid)) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let t: string;
      try {
        t = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      if (!targets.has(t)) continue;
      const list = out.get(t) ?? [];
      list.push({ pid, fd: Number(fd), comm: readStat(pid)?.comm ?? '?' });
      out.set(t, list);
    }
  }
  return out;
}

function isLoopback(a: string): boolean {
  return a.startsWith('127.') || a.startsWith('[::1]') || a.startsWith('[::ffff:127.');
}

function firstFd(graph: AppGraph, resource: string): { pid: number; fd?: number; comm: string } {
  for (const p of graph.processes.values()) {
    for (const [fd, r] of p.fds) if (r === resource) return { pid: p.pid, fd, comm: p.comm };
  }
  return { pid: 0, comm: '?' };
}

/**
 * Completes the app's sockets with their kernel state and peers, finds the
 * app's external dependencies, and returns the whole graph with their far ends.
 */
export async function snapshot(graph: AppGraph): Promise<GraphSnapshot> {
  const { nodes, edges } = graph.closure();
  const appPids = new Set(graph.pids());
  const anyPid = graph.pids()[0];
  const net = await readNetSockets(anyPid);
  const byNode = new Map(nodes.map((n) => [n.id, n]));
  const sockets = nodes.filter((n) => n.kind === 'socket');
  const pipes = nodes.filter((n) => n.kind === 'pipe');

  // The peer inode of each app socket.
  const peerOf = new Map<string, number>();
  for (const n of sockets) {
    const ino = Number(n.attrs.ino);
    const s = net.get(ino);
    if (!s) continue;
    n.attrs.protocol = s.proto;
    n.attrs.state = s.state;
    if (s.proto === 'unix') {
      if (s.path) n.attrs.path = s.path;
      n.label = `unix ${s.path ? s.path + ' ' : ''}(${ino}) ${s.state}`;
      if (s.peerIno) peerOf.set(n.id, s.peerIno);
    } else {
      n.attrs.local = s.local;
      n.attrs.remote = s.remote;
      n.label = `${s.proto} ${s.local}${s.state === 'LISTEN' || s.remote.endsWith(':0') ? '' : ' -> ' + s.remote} ${s.state}`;
      if (s.state !== 'LISTEN' && !s.remote.endsWith(':0')) {
        for (const o of net.values()) {
          if (o.proto === s.proto && o.local === s.remote && o.remote === s.local) peerOf.set(n.id, o.ino);
        }
        // UDP: a connected socket's peer may be bound without being connected back
        if (!peerOf.has(n.id) && s.proto.startsWith('udp')) {
          for (const o of net.values()) {
            if (o.proto === s.proto && o.local === s.remote && o.remote.endsWith(':0')) peerOf.set(n.id, o.ino);
          }
        }
      }
    }
  }

  const targets = new Set<string>();
  for (const ino of peerOf.values()) targets.add(`socket:[${ino}]`);
  for (const p of pipes) targets.add(`pipe:[${p.attrs.ino}]`);
  const holders = findHolders(targets, appPids);

  const deps: ExternalDependency[] = [];
  const extraNodes: GraphNode[] = [];
  const extraEdges: GraphEdge[] = [];
  const addExternalProcess = (h: Holder): string => {
    const id = `process:${h.pid}`;
    if (!byNode.has(id) && !extraNodes.some((n) => n.id === id)) {
      extraNodes.push({ id, kind: 'process', label: `${h.comm} (${h.pid})`, external: true, attrs: { pid: h.pid, comm: h.comm } });
    }
    return id;
  };

  for (const n of sockets) {
    const peer = peerOf.get(n.id);
    if (peer === undefined) {
      const remote = String(n.attrs.remote ?? '');
      const state = String(n.attrs.state ?? '');
      if (remote !== '' && !remote.endsWith(':0') && state !== 'LISTEN' && !isLoopback(remote) && n.attrs.protocol !== 'unix') {
        const epId = `endpoint:${n.attrs.protocol}:${remote}`;
        extraNodes.push({ id: epId, kind: 'endpoint', label: `${n.attrs.protocol} ${remote}`, external: true, attrs: { address: remote } });
        extraEdges.push({ from: n.id, to: epId, kind: 'connects-to' });
        const app = firstFd(graph, n.id);
        deps.push({
          kind: 'remote',
          resource: n.id,
          app,
          peer: { address: remote },
          description: `${n.attrs.protocol} ${n.attrs.local} -> ${remote} (${state}): pid ${app.pid} (${app.comm}) fd ${app.fd}, socket inode ${n.attrs.ino}, connected to a remote host`,
        });
      }
      continue;
    }
    const peerId = `socket:${peer}`;
    if (byNode.has(peerId)) {
      if (!edges.some((e) => e.from === n.id && e.to === peerId && e.kind === 'connects-to')) extraEdges.push({ from: n.id, to: peerId, kind: 'connects-to' });
      continue;
    }
    const hs = holders.get(`socket:[${peer}]`) ?? [];
    const s = net.get(peer);
    extraNodes.push({
      id: peerId,
      kind: 'socket',
      label: s ? (s.proto === 'unix' ? `unix (${peer})` : `${s.proto} ${s.local} -> ${s.remote}`) : `socket ${peer}`,
      external: true,
      attrs: { ino: peer, ...(s ? { protocol: s.proto, local: s.local, remote: s.remote, state: s.state } : {}) },
    });
    extraEdges.push({ from: n.id, to: peerId, kind: 'connects-to' });
    const app = firstFd(graph, n.id);
    const kind = n.attrs.protocol === 'unix' ? 'unix' : String(n.attrs.protocol).startsWith('udp') ? 'udp' : 'tcp';
    const what =
      kind === 'unix'
        ? `unix socket${n.attrs.path ? ' ' + String(n.attrs.path) : ''} (inode ${n.attrs.ino})`
        : `${n.attrs.protocol} ${n.attrs.local} <-> ${n.attrs.remote} (inode ${n.attrs.ino})`;
    if (hs.length === 0) {
      deps.push({
        kind,
        resource: n.id,
        app,
        peer: { resource: peerId },
        description: `${what} of pid ${app.pid} (${app.comm}) fd ${app.fd} connected to socket inode ${peer}, held by no visible process`,
      });
    }
    for (const h of hs) {
      const pnode = addExternalProcess(h);
      extraEdges.push({ from: pnode, to: peerId, kind: 'owns', label: `fd ${h.fd}` });
      deps.push({
        kind,
        resource: n.id,
        app,
        peer: { pid: h.pid, comm: h.comm, fd: h.fd, resource: peerId },
        description: `${what} of pid ${app.pid} (${app.comm}) fd ${app.fd} is connected to pid ${h.pid} (${h.comm}) fd ${h.fd}, socket inode ${peer}, outside the app`,
      });
    }
  }

  for (const n of pipes) {
    for (const h of holders.get(`pipe:[${n.attrs.ino}]`) ?? []) {
      const pnode = addExternalProcess(h);
      extraEdges.push({ from: pnode, to: n.id, kind: 'owns', label: `fd ${h.fd}` });
      const app = firstFd(graph, n.id);
      deps.push({
        kind: 'pipe',
        resource: n.id,
        app,
        peer: { pid: h.pid, comm: h.comm, fd: h.fd },
        description: `pipe inode ${n.attrs.ino} of pid ${app.pid} (${app.comm}) fd ${app.fd} is shared with pid ${h.pid} (${h.comm}) fd ${h.fd}, outside the app`,
      });
    }
  }

  // SysV shared memory attached by processes outside the app.
  const shms = nodes.filter((n) => n.kind === 'ipc' && n.attrs.ipc === 'shm');
  if (shms.length > 0) {
    for (const pid of listPids()) {
      if (appPids.has(pid)) continue;
      for (const m of readMaps(pid)) {
        if (!m.path.startsWith('/SYSV')) continue;
        const n = shms.find((s) => Number(s.attrs.id) === m.inode);
        if (!n) continue;
        const comm = readStat(pid)?.comm ?? '?';
        const pnode = addExternalProcess({ pid, fd: -1, comm });
        extraEdges.push({ from: pnode, to: n.id, kind: 'shares' });
        const user = graph.pids().find((p) => graph.processes.get(p)!.regions.some((r) => r.backing === n.id)) ?? 0;
        deps.push({
          kind: 'shm',
          resource: n.id,
          app: { pid: user, comm: graph.processes.get(user)?.comm ?? '?' },
          peer: { pid, comm },
          description: `SysV shared memory segment ${n.attrs.id} is attached by pid ${pid} (${comm}) outside the app at ${'0x' + m.start.toString(16)}`,
        });
      }
    }
  }

  for (const e of extraEdges) edges.push(e);
  return { epoch: graph.epoch, roots: graph.rootPids, nodes: [...nodes, ...extraNodes], edges, externalDependencies: deps };
}
