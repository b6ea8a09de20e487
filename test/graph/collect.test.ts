// A long-running app opens and closes thousands of sockets: the graph keeps
// the resources that an fd, a mapping or the change log still names, and drops
// the others, so its memory follows what the app holds, not what it ever held.
import { afterEach, describe, expect, it } from 'vitest';
import { cleanupAll, settle, traceCommand } from '../trace/helpers.js';

const CHURN = `
import socket, sys
keep = [socket.socket() for i in range(5)]
for i in range(3000):
    socket.socket().close()
print('churned', ' '.join(str(s.fileno()) for s in keep), flush=True)
sys.stdin.readline()
`;

const sockets = (ids: Iterable<string>) => [...ids].filter((id) => id.startsWith('socket:'));

describe('resources nothing refers to any more', () => {
  afterEach(cleanupAll);

  it('without a change log: 3000 closed sockets are dropped as they go, the 5 held stay', async () => {
    const t = await traceCommand(['python3', '-c', CHURN], { changeLog: false });
    const fds = (await t.out.waitFor(/^churned ((?:\d+ ?){5})$/))[1]!.split(' ').map(Number);
    await settle(t);
    const g = t.session.graph;
    const held = fds.map((fd) => g.processes.get(t.session.rootPid)!.fds.get(fd)!);
    expect(sockets(held)).toHaveLength(5);
    for (const id of held) expect(g.resources.has(id)).toBe(true);
    // collected along the way: never more than the threshold's worth of closed sockets at once
    expect(sockets(g.resources.keys()).length).toBeLessThan(1100);
    g.collect();
    expect(sockets(g.resources.keys()).sort()).toEqual(sockets(g.processes.get(t.session.rootPid)!.fds.values()).sort()); // the 5, and stdio (Node's pipes are socketpairs)
  });

  it('with a change log: closed sockets stay while the log names them, and go with forget()', async () => {
    const t = await traceCommand(['python3', '-c', CHURN]);
    await t.out.waitFor(/^churned /);
    await settle(t);
    const g = t.session.graph;
    expect(sockets(g.resources.keys()).length).toBeGreaterThanOrEqual(3005);
    // the dirty set still names every closed socket
    const ds = await t.session.dirtySince(0);
    expect(ds.fds.filter((f) => f.change === 'closed' && f.resource?.startsWith('socket:')).length).toBeGreaterThanOrEqual(3000);
    g.markEpoch();
    g.forget(g.epoch);
    expect(sockets(g.resources.keys()).sort()).toEqual(sockets(g.processes.get(t.session.rootPid)!.fds.values()).sort()); // the 5, and stdio (Node's pipes are socketpairs)
  });
});
