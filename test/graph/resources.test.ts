// One of each kernel object: anonymous-inode objects, memfd, socketpair, UDP,
// SysV shm/msg/sem, POSIX mq, dup/dup2 — each a node of the right kind with
// the right edges, and in the dirty set.
import { createSocket, type Socket } from 'node:dgram';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { snapshot } from '../../src/graph/sockets.js';
import { cleanupAll, fixture, settle, traceCommand } from '../trace/helpers.js';

describe('kernel objects as graph nodes', () => {
  let udp: Socket | undefined;
  const ipc: string[] = [];
  afterEach(async () => {
    await cleanupAll();
    udp?.close();
    udp = undefined;
    // the fixture removes its IPC objects when it ends normally; make sure on failure
    for (const a of ipc.splice(0)) await execa('ipcrm', a.split(' '), { reject: false });
  });

  /** The fixture traced, connected to a UDP socket of this test; its "ready" line's values. */
  async function startFixture(mqName: string, opts: { changeLog?: boolean } = {}) {
    udp = createSocket('udp4');
    await new Promise<void>((r) => udp!.bind(0, '127.0.0.1', () => r()));
    const port = udp.address().port;
    const t = await traceCommand([fixture('trace_resources'), String(port), mqName], opts);
    const line = (await t.out.waitFor(/^ready (.*)$/))[1]!;
    const v = Object.fromEntries(line.split(' ').map((kv) => kv.split('=') as [string, string]));
    const n = (k: string) => Number(v[k]);
    ipc.push(`-q ${n('msq')}`, `-s ${n('sem')}`);
    await settle(t);
    return { t, v, n, port };
  }

  it('shows every object with its kind, its owner fds and its edges', async () => {
    const { t, v, n, port } = await startFixture(`/understudy-test-${process.pid}`);
    const pid = t.session.rootPid;
    const g = t.session.graph;
    const fds = g.processes.get(pid)!.fds;

    expect(fds.get(n('efd'))).toBe(`anon:eventfd:${pid}:${n('efd')}`);
    expect(fds.get(n('dup'))).toBe(fds.get(n('efd'))); // dup: same object
    expect(fds.get(n('ep'))).toBe(`anon:eventpoll:${pid}:${n('ep')}`);
    expect(fds.get(n('tfd'))).toBe(`anon:timerfd:${pid}:${n('tfd')}`);
    expect(fds.get(100)).toBe(fds.get(n('tfd'))); // dup2 to 100
    expect(fds.get(n('sfd'))).toBe(`anon:signalfd:${pid}:${n('sfd')}`);
    expect(fds.get(n('ifd'))).toBe(`anon:inotify:${pid}:${n('ifd')}`);

    const snap = await snapshot(g);
    const node = (id: string | undefined) => snap.nodes.find((x) => x.id === id);
    expect(node(fds.get(n('efd')))).toMatchObject({ kind: 'anon', label: 'eventfd' });
    expect(node(fds.get(n('mfd')))).toMatchObject({ kind: 'file', label: '/memfd:understudy-memfd', attrs: { memfd: true } });
    expect(snap.edges).toContainEqual({ from: `process:${pid}`, to: fds.get(n('efd')), kind: 'owns', label: `fd ${n('efd')},${n('dup')}` });

    // socketpair: two unix sockets connected to each other
    const [s0, s1] = [fds.get(n('sp0'))!, fds.get(n('sp1'))!];
    expect(node(s0)).toMatchObject({ kind: 'socket', attrs: { family: 'unix', protocol: 'unix' } });
    expect(snap.edges).toContainEqual({ from: s0, to: s1, kind: 'connects-to' });
    expect(snap.edges).toContainEqual({ from: s1, to: s0, kind: 'connects-to' });

    // UDP connected to this test's socket: an external dependency
    const u = node(fds.get(n('udp')))!;
    expect(u.attrs).toMatchObject({ protocol: 'udp', remote: `127.0.0.1:${port}` });
    const dep = snap.externalDependencies.find((d) => d.resource === u.id);
    expect(dep).toMatchObject({ kind: 'udp', app: { pid, fd: n('udp') }, peer: { pid: process.pid } });

    // SysV: the attached segment is a shared region backed by the shm object; msg and sem are shared
    const shmId = `ipc:shm:${n('shm')}`;
    const addr = parseInt(v.shmaddr!, 16);
    const region = `region:${pid}:0x${addr.toString(16)}`;
    expect(node(region)).toMatchObject({ kind: 'region', attrs: { start: addr, end: addr + 3 * 4096, perms: 'rw-s', backing: shmId } });
    expect(snap.edges).toContainEqual({ from: region, to: shmId, kind: 'shares' });
    expect(node(shmId)).toMatchObject({ kind: 'ipc', attrs: { ipc: 'shm', id: n('shm') } });
    expect(snap.edges).toContainEqual({ from: `process:${pid}`, to: `ipc:msg:${n('msq')}`, kind: 'shares' });
    expect(snap.edges).toContainEqual({ from: `process:${pid}`, to: `ipc:sem:${n('sem')}`, kind: 'shares' });
    // POSIX mq: an fd on the queue
    const mqName = `/understudy-test-${process.pid}`;
    expect(fds.get(n('mq'))).toBe(`ipc:mq:${mqName}`);
    expect(node(`ipc:mq:${mqName}`)).toMatchObject({ kind: 'ipc', attrs: { ipc: 'mq', name: mqName } });

    const ds = await t.session.dirtySince(0);
    expect(ds.ipc).toContainEqual({ resource: shmId, pid, change: 'get' });
    expect(ds.ipc).toContainEqual({ resource: shmId, pid, change: 'attached' });
    expect(ds.ipc).toContainEqual({ resource: `ipc:msg:${n('msq')}`, pid, change: 'get' });
    expect(ds.regions).toContainEqual({ pid, start: addr, end: addr + 3 * 4096, change: 'mapped' });
    expect(ds.fds).toContainEqual({ pid, fd: 100, change: 'opened', resource: fds.get(n('tfd')) });

    // once the log is forgotten (epochs committed), the SysV edges are still there
    g.markEpoch();
    g.forget(g.epoch);
    expect(g.changeCount).toBe(0);
    const after = await snapshot(g);
    expect(after.edges).toContainEqual({ from: `process:${pid}`, to: `ipc:msg:${n('msq')}`, kind: 'shares' });
    expect(after.edges).toContainEqual({ from: `process:${pid}`, to: `ipc:sem:${n('sem')}`, kind: 'shares' });

    // a clean end removes the fixture's IPC objects
    t.session.held!.child.stdin!.end();
    await t.session.held!.exited;
    ipc.splice(0);
  });

  it('a session that keeps no change log (understudy trace) has the same graph, an empty log, and refuses dirty sets', async () => {
    const { t, n } = await startFixture(`/understudy-test-${process.pid}-nolog`, { changeLog: false });
    const pid = t.session.rootPid;
    const g = t.session.graph;
    expect(t.events.length).toBeGreaterThan(20);
    expect(g.changeCount).toBe(0);
    expect(g.processes.get(pid)!.fds.get(n('efd'))).toBe(`anon:eventfd:${pid}:${n('efd')}`);
    const snap = await snapshot(g);
    expect(snap.edges).toContainEqual({ from: `process:${pid}`, to: `ipc:msg:${n('msq')}`, kind: 'shares' });
    expect(snap.edges).toContainEqual({ from: `process:${pid}`, to: `ipc:sem:${n('sem')}`, kind: 'shares' });
    await expect(t.session.dirtySince(0)).rejects.toThrow(/keeps no change log/);
    t.session.held!.child.stdin!.end();
    await t.session.held!.exited;
    ipc.splice(0);
  });
});
