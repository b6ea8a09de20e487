// A server in the app and a client outside it, over TCP and over a unix
// socket: the client shows as an external dependency, named precisely.
import { join } from 'node:path';
import { createServer, type AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { sockaddrString } from '../../src/trace/records.js';
import { snapshot } from '../../src/graph/sockets.js';
import { toDot } from '../../src/graph/render.js';
import { cleanupAll, settle, spawnOutside, tempDir, traceCommand } from '../trace/helpers.js';

const SERVER = `
import socket, sys
kind = sys.argv[1]
if kind == 'tcp':
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(('127.0.0.1', 0))
    addr = str(s.getsockname()[1])
else:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sys.argv[2])
    addr = sys.argv[2]
s.listen(4)
print('listening', addr, s.fileno(), flush=True)
c, _ = s.accept()
print('accepted', c.fileno(), flush=True)
sys.stdin.read()
`;

const CLIENT = `
import socket, sys, time
if sys.argv[1] == 'tcp':
    c = socket.create_connection(('127.0.0.1', int(sys.argv[2])))
else:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(sys.argv[2])
print('connected', c.fileno(), flush=True)
time.sleep(120)
`;

const TCP_CLIENT_APP = `
import socket, sys
# as glibc does where nscd is configured: a unix connect on an fd that the TCP socket then reuses
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try: u.connect('/var/run/nscd/socket')
except OSError: pass
u.close()
c = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
print('connected', c.fileno(), c.getsockname()[1], flush=True)
sys.stdin.read()
`;

describe('sockets and external dependencies', () => {
  afterEach(cleanupAll);

  it('TCP: a client outside the app is an external dependency of the accepted socket', async () => {
    const t = await traceCommand(['python3', '-c', SERVER, 'tcp']);
    const m = await t.out.waitFor(/^listening (\d+) (\d+)/);
    const port = Number(m[1]);
    const listenFd = Number(m[2]);
    const client = spawnOutside(['python3', '-c', CLIENT, 'tcp', String(port)]);
    const cfd = Number((await client.out.waitFor(/^connected (\d+)/))[1]);
    const afd = Number((await t.out.waitFor(/^accepted (\d+)/))[1]);
    await settle(t);
    const pid = t.session.rootPid;

    // events: the listen transition, seen in the kernel
    expect(t.events.some((e) => e.type === 'tcp_state' && e.newState === 'LISTEN' && e.local === `127.0.0.1:${port}`)).toBe(true);

    const snap = await snapshot(t.session.graph);
    const p = t.session.graph.processes.get(pid)!;
    const listener = snap.nodes.find((n) => n.id === p.fds.get(listenFd))!;
    expect(listener).toMatchObject({ kind: 'socket', attrs: { protocol: 'tcp', state: 'LISTEN', local: `127.0.0.1:${port}` } });
    const accepted = snap.nodes.find((n) => n.id === p.fds.get(afd))!;
    expect(accepted.attrs).toMatchObject({ protocol: 'tcp', state: 'ESTABLISHED', local: `127.0.0.1:${port}` });

    const deps = snap.externalDependencies;
    // (the app's stdio are socketpairs to this test process: external too, and named so)
    expect(deps.filter((d) => d.kind === 'unix').map((d) => d.peer.pid)).toEqual([process.pid, process.pid, process.pid]);
    const tcp = deps.filter((d) => d.kind === 'tcp' || d.kind === 'remote');
    expect(tcp).toHaveLength(1);
    expect(tcp[0]).toMatchObject({ kind: 'tcp', resource: accepted.id, app: { pid, fd: afd }, peer: { pid: client.child.pid, fd: cfd } });
    expect(tcp[0]!.description).toContain(`pid ${client.child.pid} (python3) fd ${cfd}`);
    expect(tcp[0]!.description).toContain(`127.0.0.1:${port}`);
    const ext = snap.nodes.find((n) => n.id === `process:${client.child.pid}`);
    expect(ext?.external).toBe(true);
    expect(snap.edges).toContainEqual({ from: accepted.id, to: tcp[0]!.peer.resource, kind: 'connects-to' });
    // drawn in red
    expect(toDot(snap)).toMatch(new RegExp(`"process:${client.child.pid}" \\[[^\\]]*color=red`));
  });

  it('unix socket: the client outside the app is named with the socket path', async () => {
    const dir = tempDir('sock');
    const path = join(dir, 'db.sock');
    const t = await traceCommand(['python3', '-c', SERVER, 'unix', path]);
    await t.out.waitFor(/^listening/);
    const client = spawnOutside(['python3', '-c', CLIENT, 'unix', path]);
    const cfd = Number((await client.out.waitFor(/^connected (\d+)/))[1]);
    const afd = Number((await t.out.waitFor(/^accepted (\d+)/))[1]);
    await settle(t);
    const pid = t.session.rootPid;

    // bind was traced with its address
    const bind = t.events.find((e) => e.type === 'syscall' && e.name === 'bind' && e.tgid === pid);
    expect(bind).toBeDefined();
    const snap = await snapshot(t.session.graph);
    const listener = snap.nodes.find((n) => n.kind === 'socket' && n.attrs.state === 'LISTEN');
    expect(listener?.attrs.path).toBe(path);
    const deps = snap.externalDependencies.filter((d) => d.kind === 'unix' && d.peer.pid !== process.pid);
    expect(deps).toHaveLength(1);
    expect(deps[0]).toMatchObject({ kind: 'unix', app: { pid, fd: afd }, peer: { pid: client.child.pid, fd: cfd, comm: 'python3' } });
    expect(deps[0]!.description).toContain(`is connected to pid ${client.child.pid} (python3) fd ${cfd}`);
  });

  it('TCP client in the app: its state changes are traced, and the server outside is the dependency', async () => {
    const server = createServer(() => {});
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as AddressInfo).port;
    try {
      const t = await traceCommand(['python3', '-c', TCP_CLIENT_APP, String(port)]);
      const m = await t.out.waitFor(/^connected (\d+) (\d+)/);
      const [fd, lport] = [Number(m[1]), Number(m[2])];
      await settle(t);
      const pid = t.session.rootPid;
      // (the first change comes before the kernel picks the local port: follow the socket by its address)
      const est = t.events.find((e) => e.type === 'tcp_state' && e.local === `127.0.0.1:${lport}`);
      const sk = est?.type === 'tcp_state' ? est.sk : '?';
      const states = t.events
        .filter((e) => e.type === 'tcp_state' && e.sk === sk)
        .map((e) => e.type === 'tcp_state' && `${e.oldState}->${e.newState}@${e.tgid}`);
      expect(states).toEqual([`CLOSE->SYN_SENT@${pid}`, `SYN_SENT->ESTABLISHED@${pid}`]);
      // (the last connect on the connected socket's fd: where nscd is configured, glibc first
      // connects to its unix socket, closes it, and the TCP socket then gets the same fd number)
      const connect = t.events.filter((e) => e.type === 'syscall' && e.name === 'connect' && e.tgid === pid && e.args[0] === fd).at(-1);
      expect(connect && connect.type === 'syscall' && connect.sockaddr && sockaddrString(connect.sockaddr)).toBe(`127.0.0.1:${port}`);
      const sock = t.session.graph.processes.get(pid)!.fds.get(fd)!;
      expect(t.session.graph.resources.get(sock)?.attrs).toMatchObject({ state: 'ESTABLISHED', remote: `127.0.0.1:${port}` });
      const snap = await snapshot(t.session.graph);
      const dep = snap.externalDependencies.find((d) => d.resource === sock);
      expect(dep).toMatchObject({ kind: 'tcp', app: { pid, fd }, peer: { pid: process.pid } });
    } finally {
      server.close();
    }
  });
});
