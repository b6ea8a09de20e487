// The node-to-node channel (src/transport/channel.ts) over real ZeroMQ
// sockets on loopback: versioned messages with raw payloads both ways, and
// what a receiver refuses (another version, a first part that does not
// decode, a message without a body), after which the channel still works.
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import * as zmq from 'zeromq';
import { understudy } from '../../src/gen/proto.js';
import { Channel, decodeMessage, encodeMessage, TRANSPORT_VERSION } from '../../src/transport/channel.js';
import { onCleanup, runCleanups } from '../helpers/cleanup.js';

afterEach(runCleanups);

async function pair(): Promise<{ a: Channel; b: Channel }> {
  const a = await Channel.bind('node-a', 'tcp://127.0.0.1:*');
  onCleanup(() => a.close());
  expect(a.endpoint).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
  const b = Channel.connect('node-b', a.endpoint);
  onCleanup(() => b.close());
  return { a, b };
}

/** A raw ZeroMQ peer of the channel at `endpoint`, to send what a Channel never would. */
function rawPeer(endpoint: string): zmq.Dealer {
  const s = new zmq.Dealer({ linger: 0 });
  onCleanup(() => s.close());
  s.connect(endpoint);
  return s;
}

describe('transport channel', () => {
  it('carries versioned messages with raw payloads both ways, numbered per sender', async () => {
    const { a, b } = await pair();
    const page = randomBytes(4096);
    const empty = new Uint8Array(0);
    expect(await b.send({ term: 3, hello: { endpoint: 'tcp://10.0.0.2:7000' } })).toBe(1);
    expect(await b.send({ term: 3, epochAck: { epoch: 41 } }, [page, empty])).toBe(2);
    const m1 = await a.receive({ timeoutMs: 5000 });
    expect(m1.message.version).toBe(TRANSPORT_VERSION);
    expect(m1.message.fromNode).toBe('node-b');
    expect(Number(m1.message.seq)).toBe(1);
    expect(Number(m1.message.term)).toBe(3);
    expect(m1.message.body).toBe('hello');
    expect(m1.message.hello?.endpoint).toBe('tcp://10.0.0.2:7000');
    expect(m1.payloads).toEqual([]);
    const m2 = await a.receive({ timeoutMs: 5000 });
    expect(Number(m2.message.seq)).toBe(2);
    expect(m2.message.body).toBe('epochAck');
    expect(Number(m2.message.epochAck?.epoch)).toBe(41);
    expect(m2.payloads.map((p) => p.length)).toEqual([4096, 0]);
    expect(m2.payloads[0]?.equals(page)).toBe(true);
    // and back
    await a.send({ term: 3, epochAck: { epoch: 42 } });
    const back = await b.receive({ timeoutMs: 5000 });
    expect(back.message.fromNode).toBe('node-a');
    expect(Number(back.message.epochAck?.epoch)).toBe(42);
  });

  it('refuses another version, naming both versions; the next message still arrives', async () => {
    const { a } = await pair();
    const raw = rawPeer(a.endpoint);
    await raw.send(encodeMessage({ version: TRANSPORT_VERSION + 1, fromNode: 'future', seq: 1, epochAck: { epoch: 1 } }));
    await raw.send(encodeMessage({ fromNode: 'raw', seq: 2, epochAck: { epoch: 7 } }));
    await expect(a.receive({ timeoutMs: 5000 })).rejects.toMatchObject({
      code: 'E_VERSION',
      message: expect.stringContaining(`message version ${TRANSPORT_VERSION + 1} is not supported (this build speaks version ${TRANSPORT_VERSION})`),
    });
    const ok = await a.receive({ timeoutMs: 5000 });
    expect(ok.message.fromNode).toBe('raw');
    expect(Number(ok.message.epochAck?.epoch)).toBe(7);
  });

  it('refuses a first part that does not decode, and a message with no body', async () => {
    const { a } = await pair();
    const raw = rawPeer(a.endpoint);
    // field 1 as a length-delimited field whose length runs past the end: not a NodeMessage
    await raw.send([Buffer.from([0x0a, 0x7f, 0x01])]);
    await expect(a.receive({ timeoutMs: 5000 })).rejects.toMatchObject({
      code: 'E_FRAME',
      message: expect.stringMatching(/^message from a peer of tcp:\/\/127\.0\.0\.1:\d+: its first part \(3 bytes\) is not a NodeMessage/),
    });
    await raw.send([Buffer.from(understudy.v1.NodeMessage.encode({ version: TRANSPORT_VERSION, seq: 1 }).finish())]);
    await expect(a.receive({ timeoutMs: 5000 })).rejects.toMatchObject({
      code: 'E_FRAME',
      message: expect.stringContaining('no body'),
    });
  });

  it('an empty first part is version 0, refused as such; a sender cannot send a message without a body', async () => {
    expect(() => decodeMessage([Buffer.alloc(0)], 'test')).toThrow(/message from test: message version 0 is not supported/);
    expect(() => decodeMessage([], 'test')).toThrow(/message from test: no parts/);
    const { b } = await pair();
    await expect(b.send({ term: 1 })).rejects.toMatchObject({ code: 'E_USAGE' });
  });

  it('a receive with a timeout rejects with E_TIMEOUT when nothing comes', async () => {
    const { a } = await pair();
    const t0 = Date.now();
    await expect(a.receive({ timeoutMs: 100 })).rejects.toMatchObject({
      code: 'E_TIMEOUT',
      message: expect.stringContaining('within 100 ms'),
    });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(90);
  });
});
