import { afterEach, describe, expect, it } from 'vitest';
import * as zmq from 'zeromq';
import { understudy } from '../../src/gen/proto.js';

// The transport is built on zeromq; this proves the binding loads and carries
// a protobuf message over a real socket on loopback, both ways.
describe('ZeroMQ', () => {
  const sockets: { close(): void }[] = [];
  afterEach(() => {
    for (const s of sockets.splice(0)) s.close();
  });

  it('round-trips a protobuf message over a real TCP socket on loopback', async () => {
    const rep = new zmq.Reply();
    const req = new zmq.Request();
    sockets.push(rep, req);
    await rep.bind('tcp://127.0.0.1:*');
    const endpoint = rep.lastEndpoint!;
    expect(endpoint).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
    req.connect(endpoint);

    const server = (async () => {
      const [frame] = await rep.receive();
      const asked = understudy.v1.ProbeResult.decode(frame!);
      await rep.send(understudy.v1.ProbeResult.encode({ ...asked, ok: !asked.ok, detail: `echo ${asked.id}` }).finish());
    })();
    await req.send(understudy.v1.ProbeResult.encode({ version: 1, id: 'ping', ok: false }).finish());
    const [reply] = await req.receive();
    await server;
    const got = understudy.v1.ProbeResult.decode(reply!);
    expect(got.ok).toBe(true);
    expect(got.detail).toBe('echo ping');
  });
});
